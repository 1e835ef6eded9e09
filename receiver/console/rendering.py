"""How the console's pages answer: templates rendered with the person and their CSRF
token, and the wrappers that admit a person (``access.admit``) and turn every refusal or
failure into a page (401 → sign-in, 403, 400 for a bad form, 413, 503 while Redis is away).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment
from markupsafe import escape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from receiver import ops
from receiver.console import views
from receiver.console.access import BodyTooLarge, admit, read_form
from receiver.console.auth import AuthFailure, Principal
from receiver.logs import get_logger
from receiver.redis_client import REDIS_ERRORS

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")
PageHandler = Callable[["AdminApp", Request, Principal], Awaitable[Response]]
ActionHandler = Callable[["AdminApp", Request, Principal, dict[str, str]], Awaitable[Response]]
# Pages showing something still moving reload themselves this often (console.js).
REFRESH_SECONDS = 2


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


def register_filters(environment: Environment) -> None:
    environment.filters["q"] = lambda value: quote(str(value), safe="")
    environment.filters["json"] = lambda value: orjson.dumps(
        value, option=orjson.OPT_INDENT_2
    ).decode()
    environment.filters["iso"] = ops.iso_ms
    environment.filters["clock"] = views.clock
    environment.filters["credits"] = lambda value: f"{value:g}"
    environment.filters["qs"] = lambda mapping: urlencode(mapping)
    # A form field that must post back exactly what was stored (an event id with a C1
    # control in it): escaped, but not made visible, which would change the value.
    environment.filters["field"] = lambda value: escape(str(value))


def render(
    console: AdminApp,
    request: Request,
    name: str,
    who: Principal | None,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    template = console.templates.get_template(name)
    html = template.render(
        who=who,
        path=request.url.path,
        csrf=who.csrf if who is not None else "",
        refresh=context.pop("refresh", None),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=headers)


def not_found(console: AdminApp, request: Request) -> Response:
    return render(console, request, "error.html", None, 404, title="Not found",
                  message="There is no page here.")  # fmt: skip


def _failure_page(console: AdminApp, request: Request, exc: AuthFailure) -> Response:
    if exc.status == 401 and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/sign-in?{urlencode({'next': target})}", status_code=303)
    messages = {
        401: "Sign in first.",
        403: "Your role does not allow this, or the form expired: reload the page and retry.",
        429: "Too many failed sign-ins: wait a minute, then try again.",
    }
    return render(
        console, request, "error.html", None, exc.status, exc.headers,
        title={401: "Sign in", 403: "Not allowed", 429: "Slow down"}.get(exc.status, "Error"),
        message=messages.get(exc.status, exc.code),
    )  # fmt: skip


async def guarded(
    console: AdminApp, request: Request, run: Callable[[], Awaitable[Response]]
) -> Response:
    try:
        return await run()
    except AuthFailure as exc:
        return _failure_page(console, request, exc)
    except ops.FilterError as exc:
        return render(console, request, "error.html", None, 400, title="Check the form",
                      message=str(exc))  # fmt: skip
    except BodyTooLarge:
        return render(console, request, "error.html", None, 413, title="Too large",
                      message="That form was too large.")  # fmt: skip
    except REDIS_ERRORS as exc:  # TimeoutError is an OSError: slow counts too
        log.warning("admin_page_storage_failed", path=request.url.path, cause=type(exc).__name__)
        return render(console, request, "error.html", None, 503, {"Retry-After": "5"},
                      title="Redis is not answering",
                      message="The event store is unavailable; try again shortly.")  # fmt: skip


def page(console: AdminApp, handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        async def run() -> Response:
            who = await admit(console, request, action=False)
            return await handler(console, request, who)

        return await guarded(console, request, run)

    return endpoint


def action(
    console: AdminApp, handler: ActionHandler, *, operator: bool = True
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        async def run() -> Response:
            form = await read_form(request)
            who = await admit(
                console, request, action=True, csrf=form.get("csrf", ""), operator=operator
            )
            return await handler(console, request, who, form)

        return await guarded(console, request, run)

    return endpoint

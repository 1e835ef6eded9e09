"""The console's pages: server-rendered HTML that reads without JavaScript.

Each page asks the ops layer (``receiver.ops``) what the API asks, through ``views`` and
``actions``; forms post to ``/actions/...`` with the session's CSRF token and are answered
with a redirect (or a confirmation page for bulk actions). Templates autoescape every value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from receiver import ops
from receiver.app import check_dependencies
from receiver.console import actions, views
from receiver.console.access import BodyTooLarge, admit, read_form
from receiver.console.auth import SESSION_COOKIE, AuthFailure, Principal, is_https
from receiver.logs import get_logger
from receiver.models import EventState
from receiver.redaction import redact_value
from receiver.redis_client import REDIS_ERRORS

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")
PageHandler = Callable[["AdminApp", Request, Principal], Awaitable[Response]]
ActionHandler = Callable[["AdminApp", Request, Principal, dict[str, str]], Awaitable[Response]]
# Pages showing something still moving reload themselves this often (console.js).
REFRESH_SECONDS = 2
FAILED_SCAN = 2_000


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


def register_filters(environment: Environment) -> None:
    environment.filters["q"] = lambda value: quote(str(value), safe="")
    environment.filters["json"] = lambda value: orjson.dumps(
        value, option=orjson.OPT_INDENT_2
    ).decode()
    environment.filters["iso"] = ops.iso_ms
    environment.filters["clock"] = clock
    environment.filters["credits"] = lambda value: f"{value:g}"
    environment.filters["qs"] = lambda mapping: urlencode(mapping)


def clock(ms: int) -> str:
    """A time as people say it: ``14:02 UTC`` today, ``2026-11-30 14:02 UTC`` before."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if moment.date() == datetime.now(UTC).date():
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


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


async def _guarded(
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

        return await _guarded(console, request, run)

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

        return await _guarded(console, request, run)

    return endpoint


def routes(console: AdminApp) -> list[Route]:
    return [
        Route("/sign-in", _sign_in_endpoint(console), methods=["GET", "POST"]),
        Route("/sign-out", action(console, sign_out, operator=False), methods=["POST"]),
        Route("/", page(console, overview), methods=["GET"]),
        Route("/events", page(console, events), methods=["GET"]),
        Route("/events/{event_id:path}", page(console, event), methods=["GET"]),
        Route("/failed", page(console, failed), methods=["GET"]),
        Route("/audit", page(console, audit), methods=["GET"]),
        Route("/credits", page(console, credits), methods=["GET"]),
        Route("/replays/{audit_id}", page(console, replay_progress), methods=["GET"]),
        Route("/actions/replay", action(console, replay_one), methods=["POST"]),
        Route("/actions/bulk-replay", action(console, bulk_replay), methods=["POST"]),
    ]


# -- sign-in ---------------------------------------------------------------------------


def _local_target(target: str) -> str:
    """Only a path on this site: ``next=//evil.example`` must not become a redirect away."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _sign_in_endpoint(console: AdminApp) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        async def run() -> Response:
            target = _local_target(request.query_params.get("next", "/"))
            if request.method == "GET":
                return render(console, request, "sign_in.html", None, next=target,
                              configured=console.users.configured)  # fmt: skip
            form = await read_form(request)
            target = _local_target(form.get("next", target))
            try:
                user = console.auth.check_token(request, form.get("token", "").strip(),
                                                purpose="sign_in")  # fmt: skip
            except AuthFailure as exc:
                return render(
                    console, request, "sign_in.html", None, exc.status, exc.headers,
                    next=target, configured=console.users.configured, failed=exc.code,
                )  # fmt: skip
            log.info("admin_signed_in", actor=user.name, role=user.role.value)
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                SESSION_COOKIE,
                await console.auth.session_cookie(user),
                max_age=int(console.settings.admin_session_seconds),
                httponly=True,
                samesite="strict",
                secure=is_https(request),
                path="/",
            )
            return response

        return await _guarded(console, request, run)

    return endpoint


async def sign_out(
    _console: AdminApp, _request: Request, who: Principal, _form: dict[str, str]
) -> Response:
    log.info("admin_signed_out", actor=who.name)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- pages -----------------------------------------------------------------------------


async def overview(console: AdminApp, request: Request, who: Principal) -> Response:
    runtime = console.runtime
    failed_checks = await check_dependencies(runtime)
    stats = await runtime.store.queue_stats()
    dead = await ops.list_events(
        runtime.store, ops.EventFilter(source=None, state=EventState.DEAD, limit=FAILED_SCAN)
    )
    return render(
        console, request, "overview.html", who,
        stats=stats, groups=views.group_failures(dead), refresh=5,
        health={"redis": "redis" not in failed_checks,
                **({"sink": "sink" not in failed_checks} if runtime.sink else {})},
    )  # fmt: skip


async def events(console: AdminApp, request: Request, who: Principal) -> Response:
    query = request.query_params
    limit = views.page_size(query)
    found = await ops.list_events(console.runtime.store, views.event_filter(query, limit=limit))
    return render(
        console, request, "events.html", who,
        events=[redact_value(ops.summary(e)) for e in found],
        query=views.filter_query(query), states=[s.value for s in EventState],
        reasons=list(views.REASON_WORDS),
    )  # fmt: skip


async def event(console: AdminApp, request: Request, who: Principal) -> Response:
    runtime = console.runtime
    source = views.source_param(request.query_params)
    detail = await ops.show_event(
        runtime.store, runtime.cipher, source, request.path_params["event_id"]
    )
    if detail is None:
        return render(console, request, "error.html", who, 404, title="No such event",
                      message="That event is unknown or has expired.")  # fmt: skip
    data = detail.to_json()
    moving = data["state"] == EventState.PENDING
    return render(
        console, request, "event.html", who,
        event=data, source=source, refresh=REFRESH_SECONDS if moving else None,
        cause=views.cause_words(data.get("reason_code") or "", views.sink_status(detail.event)),
    )  # fmt: skip


async def failed(console: AdminApp, request: Request, who: Principal) -> Response:
    source = views.source_param(request.query_params)
    dead = await ops.list_events(
        console.runtime.store,
        ops.EventFilter(source=source, state=EventState.DEAD, limit=FAILED_SCAN),
    )
    return render(
        console, request, "failed.html", who,
        groups=views.group_failures(dead), source=source, scanned=len(dead),
        more=len(dead) >= FAILED_SCAN,
    )  # fmt: skip


async def audit(console: AdminApp, request: Request, who: Principal) -> Response:
    limit = views.page_size(request.query_params)
    entries = await ops.list_audit(console.runtime.store, limit)
    return render(console, request, "audit.html", who,
                  entries=[redact_value(entry.to_json()) for entry in entries])  # fmt: skip


async def credits(console: AdminApp, request: Request, who: Principal) -> Response:
    runtime = console.runtime
    report = await ops.CreditLedger(runtime.store, runtime.cipher).report()
    return render(
        console, request, "credits.html", who,
        report=report, refresh=REFRESH_SECONDS if report.pending else None,
    )  # fmt: skip


async def replay_progress(console: AdminApp, request: Request, who: Principal) -> Response:
    audit_id = request.path_params["audit_id"]
    members = await actions.replay_members(console.runtime, audit_id)
    counts = await actions.outcomes(console.runtime, members)
    moving = counts.get(EventState.PENDING.value, 0) > 0
    return render(
        console, request, "replay.html", who,
        audit_id=audit_id, total=len(members), counts=counts,
        refresh=REFRESH_SECONDS if moving else None, known=bool(members),
    )  # fmt: skip


# -- actions ---------------------------------------------------------------------------


async def replay_one(
    console: AdminApp, _request: Request, who: Principal, form: dict[str, str]
) -> Response:
    source = form.get("source") or views.source_param({})
    event_id = form.get("event_id", "")
    selected = await actions.select(console.runtime, source, event_ids=[event_id], cap=1)
    if selected.members:
        await actions.replay(console.runtime, who, selected)
    link = f"/events/{quote(event_id, safe='')}?{urlencode({'source': source})}"
    return RedirectResponse(link, status_code=303)


async def bulk_replay(
    console: AdminApp, request: Request, who: Principal, form: dict[str, str]
) -> Response:
    """Step ``preview`` shows the exact count; ``run`` queues them if the count still holds."""
    event_filter = views.event_filter(form, limit=None)
    if not event_filter.selects:
        raise ops.FilterError("filter: narrow it (state, reason, type, ...)")
    runtime = console.runtime
    selected = await actions.select(
        runtime, event_filter.source or views.source_param({}), event_filter=event_filter,
        cap=views.MAX_BULK_EVENTS,
    )  # fmt: skip
    expected = form.get("expected", "")
    if form.get("step") != "run" or expected != str(len(selected.members)):
        return render(
            console, request, "confirm_replay.html", who,
            count=len(selected.members), more=selected.more, query=views.filter_query(form),
            changed=form.get("step") == "run",
            cause=views.cause_words(form.get("reason", ""), None),
        )  # fmt: skip
    answer = await actions.replay(runtime, who, selected)
    await actions.remember_replay(runtime, answer["audit_id"], selected.members)
    return RedirectResponse(f"/replays/{quote(answer['audit_id'], safe='')}", status_code=303)

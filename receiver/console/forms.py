"""What the console's forms do: sign in and out, and the operator actions (replay,
resolve, one or in bulk). Each action is one call of ``console.actions`` (the ops layer,
audited with the person's name); bulk ones show the exact count before they run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from receiver import ops
from receiver.console import actions, views
from receiver.console.access import read_form
from receiver.console.auth import SESSION_COOKIE, AuthFailure, Principal, is_https
from receiver.console.rendering import guarded, render
from receiver.logs import get_logger

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")


def _local_target(target: str) -> str:
    """Only a path on this site: ``next=//evil.example`` must not become a redirect away."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def sign_in_endpoint(console: AdminApp) -> Callable[[Request], Awaitable[Response]]:
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

        return await guarded(console, request, run)

    return endpoint


async def sign_out(
    _console: AdminApp, _request: Request, who: Principal, _form: dict[str, str]
) -> Response:
    log.info("admin_signed_out", actor=who.name)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _event_link(source: str, event_id: str) -> str:
    return f"/events/{quote(event_id, safe='')}?{urlencode({'source': source})}"


async def replay_one(
    console: AdminApp, _request: Request, who: Principal, form: dict[str, str]
) -> Response:
    source = form.get("source") or views.source_param({})
    event_id = form.get("event_id", "")
    if event_id:
        runtime = console.runtime
        planned = await actions.plan(runtime, actions.selection(source, event_ids=[event_id]))
        if planned.count:
            await actions.replay(runtime, who, planned)
    return RedirectResponse(_event_link(source, event_id), status_code=303)


async def resolve_one(
    console: AdminApp, _request: Request, who: Principal, form: dict[str, str]
) -> Response:
    source = form.get("source") or views.source_param({})
    event_id = form.get("event_id", "")
    reason = views.resolve_reason(form.get("reason", ""))
    if event_id:
        chosen = actions.selection(source, event_ids=[event_id])
        await actions.resolve(console.runtime, who, chosen, reason)
    return RedirectResponse(_event_link(source, event_id), status_code=303)


def _bulk_filter(form: dict[str, str]) -> ops.EventFilter:
    event_filter = views.event_filter(form, limit=None)
    if not event_filter.selects:
        raise ops.FilterError("filter: narrow it (state, reason, type, ...)")
    return event_filter


async def bulk_replay(
    console: AdminApp, request: Request, who: Principal, form: dict[str, str]
) -> Response:
    """Step ``preview`` shows the exact count; ``run`` queues them if the count still
    holds, then the replay's page follows them to their outcomes."""
    event_filter = _bulk_filter(form)
    runtime = console.runtime
    seen = await actions.preview(runtime, event_filter)
    if form.get("step") != "run" or form.get("expected", "") != str(seen.count):
        return render(
            console, request, "confirm.html", who, verb="replay", preview=seen,
            query=views.filter_query(form), changed=form.get("step") == "run",
            cause=views.cause_words(form.get("reason", "")),
        )  # fmt: skip
    source = event_filter.source or views.source_param({})
    planned = await actions.plan(runtime, actions.selection(source, event_filter=event_filter))
    result = await actions.replay(runtime, who, planned)
    return RedirectResponse(f"/replays/{quote(result.audit_id, safe='')}", status_code=303)


async def bulk_resolve(
    console: AdminApp, request: Request, who: Principal, form: dict[str, str]
) -> Response:
    """Like a bulk replay: the exact count first, then every one resolved with the reason."""
    event_filter = actions.dead_only(_bulk_filter(form))
    reason = views.resolve_reason(form.get("why", ""))
    runtime = console.runtime
    seen = await actions.preview(runtime, event_filter)
    if form.get("step") != "run" or form.get("expected", "") != str(seen.count):
        return render(
            console, request, "confirm.html", who, verb="resolve", preview=seen,
            query=views.filter_query(form), changed=form.get("step") == "run",
            cause=views.cause_words(form.get("reason", "")), why=reason,
        )  # fmt: skip
    source = event_filter.source or views.source_param({})
    result = await actions.resolve(
        runtime, who, actions.selection(source, event_filter=event_filter), reason
    )
    return render(console, request, "resolved.html", who, result=result.to_json(),
                  reason=reason)  # fmt: skip

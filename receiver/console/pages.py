"""The console's pages: server-rendered HTML that reads without JavaScript.

Each page asks the ops layer (``receiver.ops``) what the API asks, through ``views`` and
``actions``; forms post to ``/actions/...`` with the session's CSRF token and are answered
with a redirect (or a confirmation page for bulk actions). Templates autoescape every value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson
from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from receiver import ops
from receiver.console import actions, views
from receiver.console.access import BodyTooLarge, admit, read_form
from receiver.console.auth import SESSION_COOKIE, AuthFailure, Principal, is_https
from receiver.errors import RecordNotReadable
from receiver.logs import get_logger
from receiver.models import EventState
from receiver.redaction import redact_text, redact_value
from receiver.redis_client import REDIS_ERRORS
from receiver.store import now_ms

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")
PageHandler = Callable[["AdminApp", Request, Principal], Awaitable[Response]]
ActionHandler = Callable[["AdminApp", Request, Principal, dict[str, str]], Awaitable[Response]]
# Pages showing something still moving reload themselves this often (console.js).
REFRESH_SECONDS = 2
OVERVIEW_REFRESH_SECONDS = 5


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
        Route("/deliveries", page(console, deliveries), methods=["GET"]),
        Route("/deliveries/rejected/{rejection_id}", page(console, rejection), methods=["GET"]),
        Route("/records", page(console, records), methods=["GET"]),
        Route("/audit", page(console, audit), methods=["GET"]),
        Route("/credits", page(console, credits), methods=["GET"]),
        Route("/replays/{audit_id}", page(console, replay_progress), methods=["GET"]),
        Route("/actions/replay", action(console, replay_one), methods=["POST"]),
        Route("/actions/resolve", action(console, resolve_one), methods=["POST"]),
        Route("/actions/bulk-replay", action(console, bulk_replay), methods=["POST"]),
        Route("/actions/bulk-resolve", action(console, bulk_resolve), methods=["POST"]),
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
    """Deliveries per minute, the queue, dead letters by reason code, workers, signing
    keys and the sink's health: all from counters and heartbeats in Redis (bounded)."""
    runtime = console.runtime
    current = await ops.status(runtime.store, runtime.settings)
    traffic = await ops.deliveries_per_minute(runtime.store)
    health, health_words = views.sink_health(current)
    data = current.to_json()
    return render(
        console, request, "overview.html", who, refresh=OVERVIEW_REFRESH_SECONDS,
        current=data, traffic=traffic, health=health, health_words=health_words,
        reasons=[
            (code, views.cause_words(code), count)
            for code, count in sorted(data["dead_by_reason"].items(), key=lambda i: -i[1])
        ],
        rejected_codes=sorted({code for minute in traffic for code in minute.rejected}),
    )  # fmt: skip


async def events(console: AdminApp, request: Request, who: Principal) -> Response:
    query = request.query_params
    limit = views.page_size(query)
    cursor = query.get("cursor") or None
    found = await ops.list_events(
        console.runtime.store, views.event_filter(query, limit=limit), cursor=cursor,
        scan_budget=ops.CONSOLE_SCAN_BUDGET,
    )  # fmt: skip
    return render(
        console, request, "events.html", who,
        events=[ops.summary_json(e) for e in found], total=found.total,
        next_cursor=found.next_cursor, scanned_out=found.scanned_out, first=cursor is None,
        query=views.filter_query(query), states=[s.value for s in EventState],
        reasons=list(views.REASON_WORDS), poll_source=views.POLL_SOURCE,
        budget=ops.CONSOLE_SCAN_BUDGET,
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
    history = data["history"]
    status = views.sink_status(history, detail.event.last_error)
    polled = source == views.POLL_SOURCE or any(
        entry.get("by") == "reconcile" for entry in history[:1]
    )
    return render(
        console, request, "event.html", who,
        event=data, source=source, refresh=REFRESH_SECONDS if moving else None,
        cause=views.cause_words(data.get("reason_code") or "", [status] if status else []),
        polled=polled,
    )  # fmt: skip


async def failed(console: AdminApp, request: Request, who: Principal) -> Response:
    """Dead letters grouped by reason code, in words; bulk replay and resolve per group."""
    runtime = console.runtime
    source = views.source_param(request.query_params)
    dead = await ops.list_events(
        runtime.store,
        ops.EventFilter(source=source, state=EventState.DEAD, limit=views.FAILED_SCAN),
        scan_budget=ops.CONSOLE_SCAN_BUDGET,
    )
    last_lines = await runtime.store.last_history([event.member for event in dead])
    return render(
        console, request, "failed.html", who,
        groups=views.group_failures(dead, last_lines), source=source, scanned=len(dead),
        more=dead.next_cursor is not None, total=dead.total,
    )  # fmt: skip


async def deliveries(console: AdminApp, request: Request, who: Principal) -> Response:
    """Rejected deliveries, newest first, with reason, skew, header names and client."""
    query = request.query_params
    since = query.get("since", "")
    found = await ops.list_rejected(
        console.runtime.store,
        since_ms=ops.parse_time_bound(since, now_ms(), "since") if since else None,
        code=query.get("code") or None,
        limit=views.page_size(query),
        before=query.get("before") or None,
    )
    kept = {name: query[name] for name in ("code", "since", "limit") if query.get(name)}
    return render(
        console, request, "deliveries.html", who,
        deliveries=[delivery.to_json() for delivery in found.deliveries],
        next_cursor=found.next_cursor, query=kept,
    )  # fmt: skip


async def rejection(console: AdminApp, request: Request, who: Principal) -> Response:
    """One rejected delivery explained, as ``receiver verify --rejected ID`` does."""
    found = await ops.get_rejected(console.runtime.store, request.path_params["rejection_id"])
    if found is None:
        return render(console, request, "error.html", who, 404, title="No such delivery",
                      message="That rejected delivery is unknown or was trimmed "
                              "(the log keeps 10,000 entries and 7 days).")  # fmt: skip
    config = console.settings.sources.get(found.source)
    tolerance = config.tolerance_seconds if config is not None else None
    return render(
        console, request, "rejection.html", who,
        delivery=found.to_json(), skew=views.skew_words(found.skew_seconds, tolerance),
        hint=views.REJECTION_HINTS.get(found.code, ""), tolerance=tolerance,
    )  # fmt: skip


async def records(console: AdminApp, request: Request, who: Principal) -> Response:
    """Look up a task id: the record as the sink holds it, in words, and its events."""
    key = request.query_params.get("key", "").strip()
    if not key:
        return render(console, request, "records.html", who, key="", view=None)
    source = request.query_params.get("source") or None
    try:
        view = await console.show_record(key, source=source)
    except RecordNotReadable as exc:
        return render(console, request, "records.html", who, key=key, view=None,
                      unreadable=redact_text(str(exc)))  # fmt: skip
    data = view.to_json()
    return render(
        console, request, "records.html", who, key=key, view=data,
        words=views.record_words(view.record), record_state=_record_state(view.record),
    )  # fmt: skip


def _record_state(record: dict[str, Any] | None) -> str:
    status = str((record or {}).get("status") or "")
    return {"succeeded": "applied", "failed": "dead"}.get(status, "pending" if status else "")


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
    """A bulk replay's events followed to their outcomes (applied, stale, dead)."""
    audit_id = request.path_params["audit_id"]
    total, outcomes = await actions.progress(console.runtime, audit_id)
    moving = outcomes is not None and outcomes.pending > 0
    return render(
        console, request, "replay.html", who,
        audit_id=audit_id, total=total,
        counts=outcomes.counts() if outcomes is not None else {},
        refresh=REFRESH_SECONDS if moving else None, known=outcomes is not None,
    )  # fmt: skip


# -- actions ---------------------------------------------------------------------------


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

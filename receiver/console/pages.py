"""The console's pages: server-rendered HTML that reads without JavaScript.

Each page asks the ops layer (``receiver.ops``) what the API asks, through ``views`` and
``actions``; forms post to ``/actions/...`` (``forms``) with the session's CSRF token.
Templates autoescape every value (``console.app.templates``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver import ops
from receiver.console import actions, forms, views
from receiver.console.auth import Principal
from receiver.console.rendering import REFRESH_SECONDS, action, page, render
from receiver.errors import RecordNotReadable
from receiver.models import EventState
from receiver.redaction import redact_text, redact_value
from receiver.settings import POLL_SOURCE
from receiver.store import now_ms

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

OVERVIEW_REFRESH_SECONDS = 5


def routes(console: AdminApp) -> list[Route]:
    return [
        Route("/sign-in", forms.sign_in_endpoint(console), methods=["GET", "POST"]),
        Route("/sign-out", action(console, forms.sign_out, operator=False), methods=["POST"]),
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
        Route("/actions/replay", action(console, forms.replay_one), methods=["POST"]),
        Route("/actions/resolve", action(console, forms.resolve_one), methods=["POST"]),
        Route("/actions/bulk-replay", action(console, forms.bulk_replay), methods=["POST"]),
        Route("/actions/bulk-resolve", action(console, forms.bulk_resolve), methods=["POST"]),
    ]


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
        reasons=list(views.REASON_WORDS), poll_source=POLL_SOURCE,
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
    polled = source == POLL_SOURCE or any(entry.get("by") == "reconcile" for entry in history[:1])
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

"""The JSON API under ``/api/v1/`` (SPEC §10): the console's data and actions for scripts.

Routes are one table (``API``): adding one (``POST /api/v1/tasks`` for reconciliation) is
one entry and its handler. Errors are ``{"error": code}`` (SPEC §3), plus ``detail`` where
a parameter is wrong. Every answer is redacted like the logs (the ops layer's
``to_json()`` / ``redact_value``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from receiver import ops
from receiver.console import actions, views
from receiver.console.access import BodyTooLarge, admit, read_body
from receiver.console.auth import AuthFailure, Principal
from receiver.errors import RecordNotReadable
from receiver.logs import get_logger
from receiver.redaction import redact_text, redact_value
from receiver.redis_client import REDIS_ERRORS
from receiver.store import now_ms

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")
_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
ApiHandler = Callable[["AdminApp", Request, Principal], Awaitable[Response]]


class ApiError(Exception):
    """An API answer other than 2xx, raised by a handler."""

    def __init__(self, status: int, code: str, detail: str | None = None) -> None:
        super().__init__(code)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    handler: ApiHandler

    @property
    def action(self) -> bool:
        return self.method == "POST"


def error(status: int, code: str, detail: str | None = None, **headers: str) -> JSONResponse:
    body: dict[str, Any] = {"error": code}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers or None)


def _wrap(console: AdminApp, route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            if route.action:
                # Read the (bounded) body before any refusal: answering a request whose
                # body is still arriving makes the server close the connection, and a
                # keep-alive client's next request on it would meet a reset.
                request.state.body = await read_body(request)
            who = await admit(console, request, action=route.action)
            return await route.handler(console, request, who)
        except AuthFailure as exc:
            return error(exc.status, exc.code, **exc.headers)
        except ApiError as exc:
            return error(exc.status, exc.code, exc.detail)
        except ops.FilterError as exc:
            return error(400, "invalid_parameter", str(exc))
        except BodyTooLarge:
            return error(413, "payload_too_large")
        except REDIS_ERRORS as exc:  # TimeoutError is an OSError: slow counts too
            log.warning("admin_api_storage_failed", path=request.url.path, cause=type(exc).__name__)
            return error(503, "storage_unavailable", **{"Retry-After": "5"})

    return endpoint


def routes(console: AdminApp) -> list[Route]:
    return [Route(route.path, _wrap(console, route), methods=[route.method]) for route in API]


async def json_body(request: Request) -> dict[str, Any]:
    """The JSON object in a POST body (an empty body is ``{}``); 415/400 otherwise."""
    body: bytes = request.state.body
    if not body.strip():
        return {}
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "expected a JSON object")
    return document


def _answer(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(redact_value(data), status_code=status)


# -- reading ---------------------------------------------------------------------------


async def list_events(console: AdminApp, request: Request, _who: Principal) -> Response:
    """A page of events, newest first; ``cursor`` (the last answer's ``next_cursor``)
    continues with older ones. Each call examines at most ``CONSOLE_SCAN_BUDGET`` index
    members: a narrow filter over a large store may answer a short page with a cursor."""
    query = request.query_params
    limit = views.page_size(query)
    page = await ops.list_events(
        console.runtime.store,
        views.event_filter(query, limit=limit),
        cursor=query.get("cursor") or None,
        scan_budget=ops.CONSOLE_SCAN_BUDGET,
    )
    return JSONResponse(page.to_json())  # summaries redacted by the ops layer


async def show_event(console: AdminApp, request: Request, _who: Principal) -> Response:
    runtime = console.runtime
    source = views.source_param(request.query_params)
    detail = await ops.show_event(
        runtime.store, runtime.cipher, source, request.path_params["event_id"]
    )
    if detail is None:
        raise ApiError(404, "unknown_event")
    return _answer(detail.to_json())


async def list_audit(console: AdminApp, request: Request, _who: Principal) -> Response:
    query = request.query_params
    limit = views.page_size(query)
    entries = await ops.list_audit(console.runtime.store, limit, before=_stream_id(query))
    return _answer(
        {
            "entries": [entry.to_json() for entry in entries],
            "next_cursor": entries[-1].entry_id if len(entries) == limit else None,
        }
    )


async def status(console: AdminApp, _request: Request, _who: Principal) -> Response:
    """``receiver status`` as JSON, plus deliveries per minute and the sink's health."""
    runtime = console.runtime
    current = await ops.status(runtime.store, runtime.settings)
    traffic = await ops.deliveries_per_minute(runtime.store)
    health, words = views.sink_health(current)
    data = current.to_json()  # redacted there; its code-keyed counts must stay readable
    data["sink"] = {"health": health, "detail": words}
    data["deliveries_per_minute"] = [minute.to_json() for minute in traffic]
    return JSONResponse(data)


async def rejected(console: AdminApp, request: Request, _who: Principal) -> Response:
    """Rejected deliveries newest first; ``since``, ``code`` (or a status), ``limit``,
    ``before`` (the last answer's ``next_cursor``)."""
    query = request.query_params
    since = query.get("since", "")
    page = await ops.list_rejected(
        console.runtime.store,
        since_ms=ops.parse_time_bound(since, now_ms(), "since") if since else None,
        code=query.get("code") or None,
        limit=views.page_size(query),
        before=query.get("before") or None,
    )
    return JSONResponse(page.to_json())  # redacted by the ops layer


async def record(console: AdminApp, request: Request, _who: Principal) -> Response:
    """The record as the sink holds it, in words, with the events that shaped it."""
    source = request.query_params.get("source") or None
    key = request.path_params["record_key"]
    try:
        view = await console.show_record(key, source=source)
    except RecordNotReadable as exc:
        raise ApiError(409, "record_not_readable", redact_text(str(exc))) from None
    return JSONResponse({**view.to_json(), "words": views.record_words(view.record)})


async def track_tasks(console: AdminApp, request: Request, who: Principal) -> Response:
    """``{"task_ids": [...]}``: watch tasks a product just submitted, so they are checked
    with Rivya's status API even if no webhook comes (issue 16). Idempotent, and not
    audited: products call it for every generation, and it only adds a watch."""
    body = await json_body(request)
    task_ids = body.get("task_ids")
    if not isinstance(task_ids, list):
        raise ApiError(400, "invalid_parameter", "task_ids: a list of task ids")
    runtime = console.runtime
    result = await ops.track_tasks(
        runtime.store, task_ids, after_seconds=runtime.settings.reconcile_after_seconds
    )
    log.info("tasks_tracked", actor=who.name, tracked=len(result.task_ids),
             newly_watched=result.newly_watched)  # fmt: skip
    return _answer(result.to_json(), 202)


async def credits(console: AdminApp, _request: Request, _who: Principal) -> Response:
    runtime = console.runtime
    report = await ops.CreditLedger(runtime.store, runtime.cipher).report()
    return _answer(report.to_json())


# -- actions ---------------------------------------------------------------------------


async def replay_event(console: AdminApp, request: Request, who: Principal) -> Response:
    await json_body(request)
    source = views.source_param(request.query_params)
    chosen = actions.selection(source, event_ids=[request.path_params["event_id"]])
    planned = await actions.plan(console.runtime, chosen)
    if planned.count == 0:  # nothing to replay: no audit entry either
        raise ApiError(404, "unknown_event")
    result = await actions.replay(console.runtime, who, planned)
    return _answer(actions.replay_answer(planned, result, dry_run=False), 202)


async def resolve_event(console: AdminApp, request: Request, who: Principal) -> Response:
    """``{"reason": "..."}``: close one dead event; 409 ``not_dead`` if it is not dead."""
    body = await json_body(request)
    reason = body.get("reason")
    if not isinstance(reason, str):
        raise ApiError(400, "invalid_parameter", "reason: say why the event needs no replay")
    reason = views.resolve_reason(reason)  # a blank one is refused before any audit
    source = views.source_param(request.query_params)
    chosen = actions.selection(source, event_ids=[request.path_params["event_id"]])
    result = await actions.resolve(console.runtime, who, chosen, reason)
    if result.missing:
        raise ApiError(404, "unknown_event")
    if result.not_dead:
        raise ApiError(409, "not_dead", "only dead events can be resolved")
    return _answer(result.to_json())


async def bulk_replay(console: AdminApp, request: Request, who: Principal) -> Response:
    """``{"filter": {state, type, record, reason, since, until}, "dry_run": bool,
    "wait": seconds}`` or ``{"event_ids": [...]}``; at most ``views.MAX_BULK_EVENTS``
    per call (``more`` says the filter matched more); ``wait`` (up to 60 s) follows the
    events and answers their outcomes."""
    body = await json_body(request)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "invalid_parameter", "dry_run: true or false")
    wait = body.get("wait")
    if wait is not None and (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not 0 < wait <= actions.MAX_WAIT_SECONDS
    ):
        raise ApiError(400, "invalid_parameter", "wait: seconds, more than 0 and at most 60")
    source = str(body.get("source") or views.source_param(request.query_params))
    raw_filter, event_ids = body.get("filter"), body.get("event_ids")
    if (raw_filter is None) == (event_ids is None):
        raise ApiError(400, "invalid_parameter", "give either filter or event_ids")
    more = False
    if event_ids is not None:
        if (
            not isinstance(event_ids, list)
            or not event_ids
            or not all(isinstance(i, str) for i in event_ids)
        ):
            raise ApiError(400, "invalid_parameter", "event_ids: a list of strings")
        more = len(set(event_ids)) > views.MAX_BULK_EVENTS
        chosen = actions.selection(source, event_ids=event_ids)
    else:
        if not isinstance(raw_filter, dict) or not all(
            isinstance(value, str) for value in raw_filter.values()
        ):
            raise ApiError(400, "invalid_parameter", "filter: an object of strings")
        event_filter = views.event_filter({**raw_filter, "source": source}, limit=None)
        if not event_filter.selects:
            raise ApiError(400, "invalid_parameter", "filter: narrow it (state, type, ...)")
        more = (await actions.preview(console.runtime, event_filter)).more
        chosen = actions.selection(source, event_filter=event_filter)
    planned = await actions.plan(console.runtime, chosen)
    result = await actions.replay(console.runtime, who, planned, dry_run=dry_run, wait_seconds=wait)
    answer = actions.replay_answer(planned, result, dry_run=dry_run, more=more)
    return _answer(answer, 200 if dry_run else 202)


def _stream_id(query: Any) -> str | None:
    before = query.get("before") or None
    if before is not None and not _STREAM_ID.fullmatch(before):
        raise ops.FilterError("before: not a cursor from this receiver")
    return before


API: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/events", list_events),
    ApiRoute("POST", "/events/{event_id:path}/replay", replay_event),
    ApiRoute("POST", "/events/{event_id:path}/resolve", resolve_event),
    ApiRoute("GET", "/events/{event_id:path}", show_event),
    ApiRoute("POST", "/replays", bulk_replay),
    ApiRoute("GET", "/deliveries/rejected", rejected),
    ApiRoute("GET", "/records/{record_key:path}", record),
    ApiRoute("GET", "/status", status),
    ApiRoute("GET", "/credits", credits),
    ApiRoute("GET", "/audit", list_audit),
    ApiRoute("POST", "/tasks", track_tasks),
)

"""The JSON API under ``/api/v1/`` (SPEC §10): the console's data and actions for scripts.

Routes are one table (``API``): adding one (``POST /api/v1/tasks`` for reconciliation) is
one entry and its handler. Errors are ``{"error": code}`` (SPEC §3), plus ``detail`` where
a parameter is wrong. Every answer is redacted like the logs (the ops layer's
``to_json()`` / ``redact_value``).
"""

from __future__ import annotations

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
from receiver.logs import get_logger
from receiver.redaction import redact_value
from receiver.redis_client import REDIS_ERRORS

if TYPE_CHECKING:
    from receiver.console.app import AdminApp

log = get_logger("receiver.console")
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
    body = await read_body(request)
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
    query = request.query_params
    limit = views.page_size(query)
    found = await ops.list_events(console.runtime.store, views.event_filter(query, limit=limit))
    return _answer({"events": [ops.summary(event) for event in found], "next_cursor": None})


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
    limit = views.page_size(request.query_params)
    entries = await ops.list_audit(console.runtime.store, limit)
    return _answer({"entries": [entry.to_json() for entry in entries]})


async def status(console: AdminApp, _request: Request, _who: Principal) -> Response:
    store = console.runtime.store
    stats = await store.queue_stats()
    watch = await ops.watch_status(store)
    return _answer({"queue": stats, "reconcile": watch.to_json()})


# -- actions ---------------------------------------------------------------------------


async def replay_event(console: AdminApp, request: Request, who: Principal) -> Response:
    await json_body(request)
    source = views.source_param(request.query_params)
    selected = await actions.select(
        console.runtime, source, event_ids=[request.path_params["event_id"]], cap=1
    )
    if not selected.members:
        raise ApiError(404, "unknown_event")
    return _answer(await actions.replay(console.runtime, who, selected), 202)


async def bulk_replay(console: AdminApp, request: Request, who: Principal) -> Response:
    """``{"filter": {state, type, record, reason, since, until}, "dry_run": bool}`` or
    ``{"event_ids": [...]}``; at most ``views.MAX_BULK_EVENTS`` per call."""
    body = await json_body(request)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ApiError(400, "invalid_parameter", "dry_run: true or false")
    source = str(body.get("source") or views.source_param(request.query_params))
    raw_filter, event_ids = body.get("filter"), body.get("event_ids")
    if (raw_filter is None) == (event_ids is None):
        raise ApiError(400, "invalid_parameter", "give either filter or event_ids")
    if event_ids is not None:
        if not isinstance(event_ids, list) or not all(isinstance(i, str) for i in event_ids):
            raise ApiError(400, "invalid_parameter", "event_ids: a list of strings")
        selected = await actions.select(
            console.runtime, source, event_ids=event_ids, cap=views.MAX_BULK_EVENTS
        )
    else:
        if not isinstance(raw_filter, dict) or not all(
            isinstance(value, str) for value in raw_filter.values()
        ):
            raise ApiError(400, "invalid_parameter", "filter: an object of strings")
        event_filter = views.event_filter({**raw_filter, "source": source}, limit=None)
        if not event_filter.selects:
            raise ApiError(400, "invalid_parameter", "filter: narrow it (state, type, ...)")
        selected = await actions.select(
            console.runtime, source, event_filter=event_filter, cap=views.MAX_BULK_EVENTS
        )
    answer = await actions.replay(console.runtime, who, selected, dry_run=dry_run)
    return _answer(answer, 200 if dry_run else 202)


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


async def not_yet(_console: AdminApp, _request: Request, _who: Principal) -> Response:
    raise ApiError(501, "not_implemented")


API: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/events", list_events),
    ApiRoute("POST", "/events/{event_id:path}/replay", replay_event),
    ApiRoute("POST", "/events/{event_id:path}/resolve", not_yet),
    ApiRoute("GET", "/events/{event_id:path}", show_event),
    ApiRoute("POST", "/replays", bulk_replay),
    ApiRoute("GET", "/deliveries/rejected", not_yet),
    ApiRoute("GET", "/records/{record_key:path}", not_yet),
    ApiRoute("GET", "/status", status),
    ApiRoute("GET", "/credits", credits),
    ApiRoute("GET", "/audit", list_audit),
    ApiRoute("POST", "/tasks", track_tasks),
)

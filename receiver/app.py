"""The HTTP application: a lean ASGI path for webhooks, Starlette for everything else.

``POST /webhooks/{source}`` is served by ``WebhookEndpoint`` directly on ASGI: it reads
the body once, enforcing the size limit while streaming, and answers with its own JSON
errors (SPEC §3, §9). Health, readiness and metrics are ordinary Starlette routes, and
Starlette's lifespan owns the runtime (Redis, store, sink, worker).

``/healthz`` is liveness: it fails only for what a restart of the process cures (the
in-process worker died, the embedded Redis could not be brought back). ``/readyz`` says
whether Redis accepts writes (``receiver.readiness``), never whether the sink answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import prometheus_client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from receiver import metrics
from receiver.errors import (
    DeliveryRejected,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    StorageUnavailable,
    UnknownSource,
    UnsupportedMediaType,
)
from receiver.http_protocol import READ_DEADLINE_PASSED, Refusal
from receiver.ingest import build_event
from receiver.logs import get_logger
from receiver.models import EventState
from receiver.reconcile.reconciler import Reconciler
from receiver.reconcile.status import refresh_gauges
from receiver.redis_client import REDIS_ERRORS
from receiver.rejections import RejectionRecorder
from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.store import AcceptResult, now_ms
from receiver.store.workers import is_live
from receiver.worker import Worker

WEBHOOK_PREFIX = "/webhooks/"
MAX_LOGGED_SOURCE = 64
# On shutdown, the in-process reconciler's requests in flight get this long to settle.
RECONCILER_GRACE_SECONDS = 5.0
log = get_logger("receiver.http")


class ClientDisconnected(Exception):
    """The sender went away before the body was complete; there is no one to answer."""


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _declares_more_than(declared: str, limit: int) -> bool:
    """Whether a ``Content-Length`` passes ``limit``. The parser has checked its syntax, but
    leading zeros keep it valid at any length, and ``int()`` refuses 4,300 digits or more."""
    digits = declared.lstrip("0")
    if not (digits.isascii() and digits.isdigit()):
        return False  # zero, or not decimal: the limit while streaming still holds
    return len(digits) > len(str(limit)) or int(digits) > limit


def _declared_size(declared: str | None) -> int:
    """A ``Content-Length`` as a number for the rejection log: 0 when absent or not
    decimal, capped so 5,001 digits never reach ``int()``."""
    digits = (declared or "").lstrip("0")
    if not (digits.isascii() and digits.isdigit()):
        return 0
    return int(digits) if len(digits) <= 18 else 10**18


async def _read_body(receive: Receive, limit: int, scope: Scope) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes ``limit`` (no further reads),
    or RequestTimeout once the protocol marks the read deadline passed (http_protocol.py)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        if READ_DEADLINE_PASSED in scope:
            raise RequestTimeout


async def _send_json(
    send: Send,
    status: int,
    payload: dict[str, Any],
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = orjson.dumps(payload)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class WebhookEndpoint:
    """``POST /webhooks/{source}``: verify, store durably, answer (SPEC §3)."""

    def __init__(self, app: ReceiverApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        received_ms = now_ms()
        source = scope["path"][len(WEBHOOK_PREFIX) :]
        # The path is the sender's text: bounded before it reaches a log line.
        context: dict[str, Any] = {"source": source[:MAX_LOGGED_SOURCE]}
        status, payload = 500, {"error": "internal_error"}
        extra: Sequence[tuple[bytes, bytes]] = ()
        outcome = "error"
        # What a rejection's log entry is made of, filled by ``_handle`` only on rejection.
        evidence: dict[str, Any] = {}
        rejected: DeliveryRejected | None = None
        try:
            status, payload, outcome = await self._handle(
                scope, receive, source, received_ms, context, evidence
            )
        except DeliveryRejected as exc:
            status, payload, outcome = exc.status, exc.payload(), "rejected"
            context["error"] = exc.code
            rejected = exc
            if isinstance(exc, StorageUnavailable):
                outcome = "unavailable"
                rejected = None  # Redis is down: there is nowhere to record it
                extra = ((b"retry-after", str(exc.retry_after_seconds).encode()),)
            elif isinstance(exc, MethodNotAllowed):
                extra = ((b"allow", b"POST"),)
            elif isinstance(exc, (PayloadTooLarge, RequestTimeout)):
                # The rest of the body is never read, so the connection cannot carry another
                # request: say so, and uvicorn closes it after this answer.
                extra = ((b"connection", b"close"),)
                if isinstance(exc, RequestTimeout):
                    metrics.child(metrics.HTTP_REJECTIONS, exc.code).inc()
            elif exc.status == 401 or exc.code == "missing_signature_header":
                metrics.VERIFICATION_FAILURES.labels(exc.code).inc()
        except ClientDisconnected:
            outcome = "disconnected"
        except Exception:
            # A bug, not the sender's fault: logged (redacted) with its traceback, answered 500.
            log.exception("webhook_failed", **context)
        if outcome != "disconnected":
            await _send_json(send, status, payload, extra)
        recorder = self._app.recorder
        if rejected is not None and recorder is not None:
            # After the answer: the sender never waits for the diagnosis (issue 14, item 3).
            recorder.note(scope=scope, source=source, status=status, code=rejected.code, **evidence)
        duration = time.perf_counter() - started
        metrics.child(
            metrics.REQUESTS, source if source in self._app.settings.sources else "unknown", outcome
        ).inc()
        metrics.REQUEST_DURATION.observe(duration)
        level = "warning" if outcome in ("unavailable", "error") else "info"
        getattr(log, level)(
            "webhook",
            outcome=outcome,
            status=status,
            duration_ms=round(duration * 1000, 3),
            **context,
        )

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        source: str,
        received_ms: int,
        context: dict[str, Any],
        evidence: dict[str, Any],
    ) -> tuple[int, dict[str, Any], str]:
        runtime = self._app.runtime
        verifier = runtime.verifiers.get(source)
        if verifier is None:
            raise UnknownSource if "/" not in source else NotFound
        if scope["method"] != "POST":
            raise MethodNotAllowed
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        limit = self._app.settings.max_body_bytes
        declared = headers.get("content-length")
        body: bytes | None = None
        try:
            if declared is not None and _declares_more_than(declared, limit):
                raise PayloadTooLarge
            body = await _read_body(receive, limit, scope)
            if not _is_json(headers.get("content-type", "")):
                raise UnsupportedMediaType
            event = build_event(source, verifier, runtime.cipher, headers, body, received_ms)
        except DeliveryRejected:
            evidence.update(
                verifier=verifier,
                headers=headers,
                body=body,
                body_bytes=_declared_size(declared),
            )
            raise
        metrics.VERIFICATIONS.inc(source, event.signing_key)
        context.update(event_id=event.event_id, type=event.event_type, record_key=event.record_key)
        try:
            result = await runtime.store.accept(event)
        except REDIS_ERRORS as exc:
            context["cause"] = type(exc).__name__
            raise StorageUnavailable from exc
        if result is AcceptResult.NEW:
            if event.state is EventState.DEAD:
                context["reason"] = event.last_error
                return 202, {"status": "accepted", "event_id": event.event_id}, "dead"
            return 202, {"status": "accepted", "event_id": event.event_id}, "accepted"
        metrics.child(metrics.DUPLICATES, source).inc()
        if result is AcceptResult.CONFLICT:
            metrics.CONFLICTS.labels(source).inc()
            log.warning(
                "event_id_conflict",
                source=source,
                event_id=event.event_id,
                detail="same event id, different body: the first copy stands",
            )
            return 200, {"status": "duplicate", "event_id": event.event_id}, "conflict"
        return 200, {"status": "duplicate", "event_id": event.event_id}, "duplicate"


class ReceiverApp:
    """The ASGI app: webhook path first, Starlette for the rest and for the lifespan."""

    def __init__(
        self, settings: Settings, *, run_worker: bool = True, runtime: Runtime | None = None
    ) -> None:
        self.settings = settings
        self.run_worker = run_worker
        # ``serve`` opens the runtime before the server starts, so a start-up failure is one
        # clean line instead of a lifespan traceback; tests let the lifespan open it.
        self._runtime: Runtime | None = runtime
        self.worker: Worker | None = None
        self.recorder: RejectionRecorder | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self.reconciler: Reconciler | None = None
        self._reconciler_task: asyncio.Task[None] | None = None
        self._webhook = WebhookEndpoint(self)
        self._starlette = Starlette(
            routes=[
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
                # ``/metrics``, the console and its API are on the admin listener only
                # (SPEC §10, receiver/console/): here they answer 404 like any other path.
            ],
            exception_handlers={HTTPException: self._http_error},  # type: ignore[dict-item]
            lifespan=self._lifespan,
        )

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the app's lifespan has not started")
        return self._runtime

    @property
    def draining(self) -> bool:
        return self._runtime is not None and self._runtime.draining

    def start_draining(self) -> None:
        """Readiness turns 503 so load balancers stop sending; requests still get served."""
        if self._runtime is not None:
            self._runtime.draining = True

    def note_refusal(self, refusal: Refusal) -> None:
        """A request the HTTP protocol refused itself (431, 408, 503, 400), for the
        rejected-deliveries log beside the app's own rejections (http_protocol.py)."""
        if self.recorder is None:
            return
        path = refusal.path
        source = path[len(WEBHOOK_PREFIX) :] if path.startswith(WEBHOOK_PREFIX) else ""
        scope = {
            "client": refusal.client,
            "headers": [(name.encode("latin-1"), b"") for name in refusal.header_names],
        }
        self.recorder.note(scope=scope, source=source, status=refusal.status, code=refusal.code)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOK_PREFIX):
            await self._webhook(scope, receive, send)
        else:
            await self._starlette(scope, receive, send)

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The runtime's life (Redis, store, sink, worker), for a caller that runs several
        servers on one loop around one runtime (``serve`` with its admin listener)."""
        return self._lifespan(self._starlette)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        if self._runtime is None:
            self._runtime = await Runtime.open(self.settings, with_sink=True, adopt_orphan=True)
        self.recorder = RejectionRecorder(self._runtime.store.rejections)
        if self.run_worker:
            assert self._runtime.sink is not None
            self.worker = worker = Worker(self._runtime, self._runtime.sink)
            self._worker_task = asyncio.create_task(worker.run(), name="worker")
            task = self._worker_task
            self._runtime.worker_alive = lambda: not task.done()
            # The sink's health is the worker's view (its circuit), never a ping per request.
            self._runtime.sink_failing = lambda: worker.circuit.is_open
        if self.settings.rivya_api_key is not None:
            # Issue 16: with the API key, this process also reconciles watched tasks.
            self.reconciler = Reconciler(self._runtime)
            self._reconciler_task = asyncio.create_task(self.reconciler.run(), name="reconciler")
        log.info(
            "started",
            worker=self.run_worker,
            embedded_redis=self.settings.embedded_redis,
            sources=sorted(self.settings.sources),
        )
        try:
            yield
        finally:
            # uvicorn has stopped accepting and waited for in-flight requests; now the
            # worker finishes or releases its events, then the sink, Redis and the
            # embedded server close, in that order (PITFALLS: Processes).
            self._runtime.draining = True
            if self.reconciler is not None and self._reconciler_task is not None:
                grace = min(RECONCILER_GRACE_SECONDS, self.settings.shutdown_timeout_seconds)
                await self.reconciler.stop(grace)
                await self._reconciler_task
            if self.worker is not None and self._worker_task is not None:
                await self.worker.stop(self.settings.shutdown_timeout_seconds)
                await self._worker_task
            with contextlib.suppress(*REDIS_ERRORS):
                await self.recorder.aclose()
            await self._runtime.aclose()
            log.info("stopped")

    async def _http_error(self, _request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code}, status_code=exc.status_code, headers=exc.headers)

    async def healthz(self, _request: Request) -> Response:
        return liveness_response(self._runtime)

    async def readyz(self, _request: Request) -> Response:
        """Ready when Redis accepts a write; the sink is not asked (SPEC §3)."""
        if self.draining:
            metrics.READY.set(0)
            return JSONResponse({"error": "shutting_down"}, status_code=503)
        result = await self.runtime.readiness.check()
        metrics.READY.set(1 if result.ready else 0)
        return JSONResponse(result.payload(), status_code=200 if result.ready else 503)


def liveness_response(runtime: Runtime | None) -> Response:
    """``/healthz`` of the public and the admin listener: 503 only when a restart of the
    process is the cure (``Runtime.liveness_failure``)."""
    failure = runtime.liveness_failure() if runtime is not None else None
    if failure is not None:
        return JSONResponse({"error": failure}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics_response(runtime: Runtime) -> Response:
    """Prometheus text: process counters plus Redis-backed gauges read at scrape time.

    Served by the admin listener (SPEC §10), from ``serve`` or ``console``. Readiness is the
    last probe's result: a scrape never probes Redis or the sink."""
    last = runtime.readiness.last
    metrics.READY.set(1 if last is not None and last.ready and not runtime.draining else 0)
    with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
        stats = await asyncio.wait_for(
            runtime.store.queue_stats(), runtime.settings.redis_timeout_seconds
        )
        metrics.QUEUE_BACKLOG.set(stats["backlog"])
        metrics.QUEUE_PENDING.set(stats["pending"])
        metrics.QUEUE_RETRYING.set(stats["retrying"])
        metrics.DEAD_LETTERS.set(stats["dead"])
        workers = await asyncio.wait_for(
            runtime.store.workers.known(), runtime.settings.redis_timeout_seconds
        )
        metrics.WORKERS_LIVE.set(sum(1 for info in workers if is_live(info)))
    with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
        await asyncio.wait_for(
            refresh_gauges(runtime.store), runtime.settings.redis_timeout_seconds
        )
    body = prometheus_client.generate_latest() + prometheus_client.generate_latest(
        metrics.SERVICE_REGISTRY
    )
    return Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)


async def check_dependencies(runtime: Runtime) -> list[str]:
    """What keeps this process from its work, for the detailed views (admin ``/readyz``,
    the console): ``redis`` when it refuses the readiness write (a result at most 1 s old),
    ``sink`` while the in-process worker's circuit is open. Nothing here calls the sink:
    a ping per request was a HEAD per probe to an HTTP sink (issue 13)."""
    failed: list[str] = []
    if not (await runtime.readiness.check()).ready:
        failed.append("redis")
    if runtime.sink_failing is not None and runtime.sink_failing():
        failed.append("sink")
    return failed


def create_app(
    settings: Settings, *, run_worker: bool = True, runtime: Runtime | None = None
) -> ReceiverApp:
    """The ASGI application for ``settings``."""
    return ReceiverApp(settings, run_worker=run_worker, runtime=runtime)

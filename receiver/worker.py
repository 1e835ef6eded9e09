"""The worker: take events off the queue, apply them through the sink, record outcomes.

Each event is applied and then finished (state + acknowledgement in one script). A worker
that dies between the two leaves the entry pending; another worker reclaims it after the
visibility timeout and applies it again, which the sink's ordering guard makes harmless
(PITFALLS: Processing). Transient failures wait in a retry set with exponential backoff
and jitter; permanent ones and exhausted retries go to ``dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from datetime import UTC, datetime

from redis.exceptions import RedisClusterException, RedisError

from receiver import metrics
from receiver.bodies import BodyDecryptError
from receiver.errors import PermanentSinkError, TransientSinkError
from receiver.keys import source_of
from receiver.logs import get_logger, redact_text
from receiver.models import ApplyOutcome, EventState
from receiver.rivya import UnmappableEvent, map_event, parse_body
from receiver.runtime import Runtime
from receiver.sinks.base import Sink
from receiver.store import QueueEntry, StoredEvent, now_ms

log = get_logger("receiver.worker")
READ_BLOCK_MS = 500
MAINTENANCE_INTERVAL_SECONDS = 0.5
MAX_ERROR_LENGTH = 500


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**(attempt-1)``."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"


class Worker:
    """Consumes the queue of one store and applies events through one sink."""

    def __init__(self, runtime: Runtime, sink: Sink, *, name: str | None = None) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.sink = sink
        self.settings = runtime.settings
        self.name = name or consumer_name()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(self.settings.worker_concurrency)
        self._tasks: dict[asyncio.Task[None], QueueEntry] = {}
        self._reading_stopped = asyncio.Event()

    async def run(self) -> None:
        """Read and process until ``stop()``; Redis outages are waited out, not fatal."""
        maintenance = asyncio.create_task(self._maintain(), name="worker-maintenance")
        log.info("worker_started", consumer=self.name, concurrency=self.settings.worker_concurrency)
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                free = 1
                while free < self.settings.worker_concurrency and not self._slots.locked():
                    await self._slots.acquire()
                    free += 1
                try:
                    entries = await self.store.read(self.name, free, READ_BLOCK_MS)
                except (RedisError, RedisClusterException, OSError) as exc:
                    entries = []
                    log.warning("queue_read_failed", error=type(exc).__name__)
                    await asyncio.sleep(1)
                for entry in entries:
                    await self._spawn_or_release(entry)
                for _ in range(free - len(entries)):
                    self._slots.release()
        finally:
            self._reading_stopped.set()
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance

    async def _spawn_or_release(self, entry: QueueEntry) -> None:
        """Process an entry we hold a slot for; after ``stop()`` hand it back instead."""
        if not self._stopping.is_set():
            self._spawn(entry)
            return
        self._slots.release()
        await self._release(entry)

    async def _release(self, entry: QueueEntry) -> None:
        try:
            await self.store.release(entry)
            log.info("event_released", event_id=entry.member, reason="shutdown")
        except (RedisError, RedisClusterException, OSError):
            pass  # still pending: reclaimed after the visibility timeout

    def _spawn(self, entry: QueueEntry) -> None:
        task = asyncio.create_task(self._process_entry(entry))
        self._tasks[task] = entry
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._slots.release()

    async def stop(self, grace_seconds: float) -> None:
        """Stop reading; let events in hand finish within ``grace_seconds``, hand back the rest.

        Order matters: first the reader stops (entries it still receives are handed back),
        so the set of events in hand can no longer grow; then those finish or are
        cancelled and released, so another worker takes them at once.
        """
        deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reading_stopped.wait(), grace_seconds)
        if self._tasks:
            remaining = max(0.0, deadline - time.monotonic())
            _, unfinished = await asyncio.wait(list(self._tasks), timeout=remaining)
            for task in unfinished:
                entry = self._tasks.get(task)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if entry is not None:
                    await self._release(entry)
        log.info("worker_stopped", consumer=self.name)

    async def _maintain(self) -> None:
        """Promote due retries and reclaim entries of dead consumers, periodically."""
        visibility_ms = int(self.settings.visibility_timeout_seconds * 1000)
        last_reclaim = 0.0
        while not self._stopping.is_set():
            try:
                await self.store.promote_due()
                if time.monotonic() - last_reclaim >= min(
                    self.settings.visibility_timeout_seconds / 2, 15
                ):
                    last_reclaim = time.monotonic()
                    for entry in await self.store.reclaim(self.name, visibility_ms, 100):
                        if entry.deliveries > self.settings.max_attempts:
                            await self._abandon(entry)
                            continue
                        log.info("event_reclaimed", member=entry.member)
                        await self._slots.acquire()
                        await self._spawn_or_release(entry)
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("maintenance_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), MAINTENANCE_INTERVAL_SECONDS)

    async def _abandon(self, entry: QueueEntry) -> None:
        """Dead-letter an entry that workers took and never finished, time after time.

        Most likely it kills or hangs its worker (a poison event); reclaiming it forever
        would take a worker down again every visibility timeout. It stays replayable.
        """
        error = f"abandoned: taken {entry.deliveries} times and never finished (crash or hang)"
        await self.store.finish(entry, entry.member, EventState.DEAD, entry.deliveries, error)
        metrics.EVENTS_PROCESSED.labels(source_of(entry.member), "dead").inc()
        log.error("event_abandoned", member=entry.member, deliveries=entry.deliveries)

    async def _process_entry(self, entry: QueueEntry) -> None:
        try:
            event = await self.store.load(entry.member)
            if event is None:  # expired by retention: nothing to apply
                await self.store.finish(entry, entry.member, EventState.DEAD, 0, "expired")
                return
            await self.process(entry, event)
        except (RedisError, OSError) as exc:
            # The entry stays pending and is reclaimed after the visibility timeout.
            log.warning(
                "event_processing_interrupted", member=entry.member, error=type(exc).__name__
            )

    async def process(self, entry: QueueEntry | None, event: StoredEvent) -> EventState:
        """Apply one stored event and record its outcome; returns the new state."""
        started = time.perf_counter()
        attempt = event.attempts + 1
        state, error = await self._apply(event, attempt, entry)
        if state is None:  # scheduled for a retry
            return EventState.PENDING
        await self.store.finish(entry, event.member, state, attempt, error)
        duration = time.perf_counter() - started
        metrics.child(metrics.EVENTS_PROCESSED, event.source, state.value).inc()
        metrics.EVENT_LATENCY.observe(max(0.0, (now_ms() - event.received_ms) / 1000))
        log.info(
            "event_processed",
            source=event.source,
            event_id=event.event_id,
            type=event.event_type,
            record_key=event.record_key,
            outcome=state.value,
            attempts=attempt,
            duration_ms=round(duration * 1000, 3),
            **({"error": error} if error else {}),
        )
        return state

    async def _apply(
        self, event: StoredEvent, attempt: int, entry: QueueEntry | None
    ) -> tuple[EventState | None, str]:
        """Map and apply; a None state means a retry was scheduled."""
        try:
            body = self.runtime.cipher.open(event.body, event.encrypted)
            document = parse_body(body)
            received = datetime.fromtimestamp(event.received_ms / 1000, UTC)
            mapped = map_event(document, event.event_id, received)
        except UnmappableEvent as exc:
            return EventState.DEAD, f"unmappable: {exc.reason}"
        except BodyDecryptError as exc:
            return EventState.DEAD, str(exc)
        # The record was made just now, so its applied_at is the time of this attempt.
        record = mapped.record
        apply_started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no extra task per event.
            async with asyncio.timeout(self.settings.sink_timeout_seconds + 1):
                outcome = await self.sink.apply(record)
        except PermanentSinkError as exc:
            return EventState.DEAD, _error_text("permanent", exc)
        except (TransientSinkError, TimeoutError) as exc:
            return await self._retry_or_give_up(
                event, attempt, entry, _error_text("transient", exc)
            )
        except Exception as exc:
            # An unexpected sink bug: logged with its (redacted) traceback and retried like a
            # transient failure, so a fix and a restart can still apply the event.
            log.exception("sink_failed", event_id=event.event_id, record_key=event.record_key)
            return await self._retry_or_give_up(
                event, attempt, entry, _error_text("unexpected", exc)
            )
        finally:
            metrics.APPLY_DURATION.observe(time.perf_counter() - apply_started)
        return (EventState.APPLIED if outcome is ApplyOutcome.APPLIED else EventState.STALE), ""

    async def _retry_or_give_up(
        self, event: StoredEvent, attempt: int, entry: QueueEntry | None, error: str
    ) -> tuple[EventState | None, str]:
        if attempt >= self.settings.max_attempts or entry is None:
            return EventState.DEAD, f"gave up after {attempt} attempts: {error}"
        delay = backoff_delay(
            attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds
        )
        await self.store.schedule_retry(entry, attempt, error, delay)
        metrics.APPLY_RETRIES.inc()
        log.warning(
            "event_retry_scheduled",
            event_id=event.event_id,
            attempts=attempt,
            retry_in_s=round(delay, 3),
            error=error,
        )
        return None, error


def _error_text(kind: str, exc: BaseException) -> str:
    """A short, redacted description of a failure, safe to store and print."""
    message = str(exc) or type(exc).__name__
    return redact_text(f"{kind}: {type(exc).__name__}: {message}")[:MAX_ERROR_LENGTH]

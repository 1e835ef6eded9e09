"""The worker: take events off the queue, apply them through the sink, record outcomes.

Entries are read and handled in batches: loaded in one round trip, mapped one by one,
applied through the sink as one batch (one transaction for the SQL sinks), then finished
(states + acknowledgements in one script). A worker that dies between applying and
finishing leaves the entries pending; another worker reclaims them after the
visibility timeout and applies it again, which the sink's ordering guard makes harmless
(PITFALLS: Processing). Transient failures wait in a retry set with exponential backoff
and jitter; permanent ones and exhausted retries go to ``dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time
from datetime import UTC, datetime

from receiver import metrics
from receiver.bodies import BodyDecryptError
from receiver.errors import PermanentSinkError, TransientSinkError
from receiver.keys import source_of
from receiver.logs import get_logger
from receiver.models import ApplyOutcome, EventState, ReasonCode, Record
from receiver.redaction import redact_text
from receiver.redis_client import REDIS_ERRORS
from receiver.rivya import UnmappableEvent, map_event, parse_body
from receiver.runtime import Runtime
from receiver.sinks.base import Sink, apply_all
from receiver.store import EventOutcome, QueueEntry, StoredEvent, now_ms

log = get_logger("receiver.worker")
READ_BLOCK_MS = 500
# After a read that did not fill a batch, wait this long before the next one, so that at a
# modest rate events are applied several at a time (one round trip, transaction and fsync
# for all) instead of one by one. It adds at most this much to receive->applied.
BATCH_LINGER_SECONDS = 0.01
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
        self._tasks: dict[asyncio.Task[None], list[QueueEntry]] = {}
        # Entries processed as one batch at most: half the slots, so that while one batch
        # waits for its sink and Redis, the next is already read and prepared.
        self._batch_limit = max(1, self.settings.worker_concurrency // 2)
        self._reading_stopped = asyncio.Event()

    async def run(self) -> None:
        """Read and process until ``stop()``; Redis outages are waited out, not fatal."""
        maintenance = asyncio.create_task(self._maintain(), name="worker-maintenance")
        log.info("worker_started", consumer=self.name, concurrency=self.settings.worker_concurrency)
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()
                free = 1
                while free < self._batch_limit and not self._slots.locked():
                    await self._slots.acquire()
                    free += 1
                try:
                    entries = await self.store.read(self.name, free, READ_BLOCK_MS)
                except REDIS_ERRORS as exc:
                    entries = []
                    log.warning("queue_read_failed", error=type(exc).__name__)
                    await asyncio.sleep(1)
                for _ in range(free - len(entries)):
                    self._slots.release()
                if entries:
                    await self._spawn_or_release(entries)
                    if len(entries) < self._batch_limit:
                        await asyncio.sleep(BATCH_LINGER_SECONDS)
        finally:
            self._reading_stopped.set()
            maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await maintenance

    async def _spawn_or_release(self, entries: list[QueueEntry]) -> None:
        """Process entries we hold slots for; after ``stop()`` hand them back instead."""
        if not self._stopping.is_set():
            self._spawn(entries)
            return
        for entry in entries:
            self._slots.release()
            await self._release(entry)

    async def _release(self, entry: QueueEntry) -> None:
        try:
            await self.store.release(entry)
            log.info("event_released", event_id=entry.member, reason="shutdown")
        except REDIS_ERRORS:
            pass  # still pending: reclaimed after the visibility timeout

    def _spawn(self, entries: list[QueueEntry]) -> None:
        # The task's list is the batch's unfinished entries: stop() hands those back.
        unfinished = list(entries)
        task = asyncio.create_task(self._process_batch(unfinished))
        self._tasks[task] = unfinished
        task.add_done_callback(functools.partial(self._done, len(entries)))

    def _done(self, slots: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        for _ in range(slots):
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
                entries = self._tasks.get(task, [])
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                for entry in entries:
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
                        await self._spawn_or_release([entry])
            except REDIS_ERRORS as exc:
                log.warning("maintenance_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), MAINTENANCE_INTERVAL_SECONDS)

    async def _abandon(self, entry: QueueEntry) -> None:
        """Dead-letter an entry that workers took and never finished, time after time.

        Most likely it kills or hangs its worker (a poison event); reclaiming it forever
        would take a worker down again every visibility timeout. It stays replayable.
        """
        error = f"abandoned: taken {entry.deliveries} times and never finished (crash or hang)"
        await self.store.finish(
            entry,
            entry.member,
            EventState.DEAD,
            entry.deliveries,
            error,
            reason_code=ReasonCode.POISON,
        )
        metrics.EVENTS_PROCESSED.labels(source_of(entry.member), "dead").inc()
        log.error("event_abandoned", member=entry.member, deliveries=entry.deliveries)

    async def _process_batch(self, entries: list[QueueEntry]) -> None:
        """Load, apply and finish a batch of entries, then empty ``entries``: until then
        ``stop()`` hands them back if it has to cancel this task."""
        try:
            events = await self.store.load_many([entry.member for entry in entries])
            await self.process(list(zip(entries, events, strict=True)))
            entries.clear()  # all recorded (or left pending on purpose): nothing to hand back
        except REDIS_ERRORS as exc:
            # The entries stay pending and are reclaimed after the visibility timeout.
            for entry in entries:
                log.warning(
                    "event_processing_interrupted", member=entry.member, error=type(exc).__name__
                )

    async def process(self, batch: list[tuple[QueueEntry, StoredEvent | None]]) -> None:
        """Apply a batch of stored events and record their outcomes.

        Mapping failures are decided per event; the sink gets the rest as one batch; the
        outcomes are recorded by one script. An event whose processing raises something
        unexpected is left pending (and dead-lettered after ``max_attempts`` reclaims).
        """
        started = time.perf_counter()
        outcomes: list[EventOutcome] = []
        to_apply: list[tuple[QueueEntry, StoredEvent, Record]] = []
        for entry, event in batch:
            if event is None:  # expired by retention: nothing to apply
                outcomes.append(
                    EventOutcome(
                        entry, entry.member, EventState.DEAD, 0, "expired", "worker",
                        ReasonCode.EXPIRED,
                    )
                )  # fmt: skip
                continue
            try:
                to_apply.append((entry, event, self._record_of(event)))
                continue
            except UnmappableEvent as exc:
                error, code = exc.last_error, exc.code
            except BodyDecryptError as exc:
                error, code = str(exc), ReasonCode.UNDECRYPTABLE
            except Exception:
                log.exception("event_unprocessable", member=entry.member)
                continue
            attempt = event.attempts + 1
            outcomes.append(
                EventOutcome(entry, event.member, EventState.DEAD, attempt, error, "worker", code)
            )
        if to_apply:
            outcomes += await self._apply_batch(to_apply)
        # Events scheduled for a retry were acknowledged with it; the rest are decided.
        decided = [outcome for outcome in outcomes if outcome.state is not EventState.PENDING]
        if decided:
            await self.store.finish_many(decided)
        events = {entry.member: event for entry, event in batch}
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        for outcome in decided:
            self._report(outcome, events[outcome.member], duration_ms)

    def _record_of(self, event: StoredEvent) -> Record:
        body = self.runtime.cipher.open(event.body, event.encrypted)
        received = datetime.fromtimestamp(event.received_ms / 1000, UTC)
        # The record is made just now, so its applied_at is the time of this attempt (the
        # stores keep it; the HTTP sink leaves it out, so its body is the same every time).
        return map_event(parse_body(body), event.event_id, received).record

    async def _apply_batch(
        self, batch: list[tuple[QueueEntry, StoredEvent, Record]]
    ) -> list[EventOutcome]:
        """Apply the records through the sink; transient failures are scheduled for a retry
        (their outcome's state stays ``pending``)."""
        apply_started = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no extra task.
            async with asyncio.timeout(self.settings.sink_timeout_seconds + 1):
                results = await apply_all(self.sink, [record for _, _, record in batch])
        except TimeoutError as exc:
            results = [exc] * len(batch)
        finally:
            metrics.APPLY_DURATION.observe(time.perf_counter() - apply_started)
        outcomes: list[EventOutcome] = []
        retries = []
        for (entry, event, _), result in zip(batch, results, strict=True):
            attempt = event.attempts + 1
            if isinstance(result, ApplyOutcome):
                state = EventState.APPLIED if result is ApplyOutcome.APPLIED else EventState.STALE
                outcomes.append(EventOutcome(entry, event.member, state, attempt))
                continue
            if isinstance(result, PermanentSinkError):
                error = _error_text("permanent", result)
                outcomes.append(
                    EventOutcome(
                        entry, event.member, EventState.DEAD, attempt, error, "worker",
                        ReasonCode.SINK_REJECTED,
                    )
                )  # fmt: skip
                continue
            if isinstance(result, TransientSinkError | TimeoutError):
                error = _error_text("transient", result)
            else:
                # An unexpected sink bug: logged with its (redacted) traceback and retried like
                # a transient failure, so a fix and a restart can still apply the event.
                log.error(
                    "sink_failed",
                    event_id=event.event_id,
                    record_key=event.record_key,
                    exc_info=result,
                )
                error = _error_text("unexpected", result)
            if attempt >= self.settings.max_attempts:
                error = f"gave up after {attempt} attempts: {error}"
                outcomes.append(
                    EventOutcome(
                        entry, event.member, EventState.DEAD, attempt, error, "worker",
                        ReasonCode.RETRIES_EXHAUSTED,
                    )
                )  # fmt: skip
                continue
            outcomes.append(EventOutcome(entry, event.member, EventState.PENDING, attempt, error))
            retries.append(self._schedule_retry(entry, event, attempt, error))
        if retries:
            await asyncio.gather(*retries)
        return outcomes

    def _report(self, outcome: EventOutcome, event: StoredEvent | None, duration_ms: float) -> None:
        """The metrics and the log line of one recorded outcome (SPEC §8)."""
        state = outcome.state
        source = event.source if event is not None else source_of(outcome.member)
        metrics.child(metrics.EVENTS_PROCESSED, source, state.value).inc()
        if event is None:
            return
        metrics.EVENT_LATENCY.observe(max(0.0, (now_ms() - event.received_ms) / 1000))
        log.info(
            "event_processed",
            source=source,
            event_id=event.event_id,
            type=event.event_type,
            record_key=event.record_key,
            outcome=state.value,
            attempts=outcome.attempts,
            duration_ms=duration_ms,
            **({"reason_code": outcome.reason_code} if outcome.reason_code else {}),
            **({"error": outcome.last_error} if outcome.last_error else {}),
        )

    async def _schedule_retry(
        self, entry: QueueEntry, event: StoredEvent, attempt: int, error: str
    ) -> None:
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


def _error_text(kind: str, exc: BaseException) -> str:
    """A short, redacted description of a failure, safe to store and print."""
    message = str(exc) or type(exc).__name__
    return redact_text(f"{kind}: {type(exc).__name__}: {message}")[:MAX_ERROR_LENGTH]

"""Apply one batch of queued events through the sink and record each event's outcome.

A batch is mapped event by event, applied through the sink in one call (one transaction
for the SQL sinks), and its outcomes are recorded by one script. Transient failures are
scheduled for a retry within the time budget (``retries.RetryPolicy``); permanent ones,
and events whose budget is spent, go to ``dead`` with their reason code. An entry whose
stored event vanished is told apart as expired or lost (``lua/vanished.lua``).

The worker (``worker.py``) owns the queue, the slots and the circuit breaker; it learns
through ``on_sink_result`` whether the sink answered each batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from receiver import metrics
from receiver.bodies import BodyDecryptError
from receiver.errors import PermanentSinkError, TransientSinkError
from receiver.keys import MEMBER_SEPARATOR, source_of
from receiver.logs import get_logger
from receiver.models import TERMINAL_RANK, ApplyOutcome, EventState, ReasonCode, Record, SinkResult
from receiver.redaction import redact_text
from receiver.retries import RetryPolicy
from receiver.rivya import UnmappableEvent, map_event, parse_body
from receiver.runtime import Runtime
from receiver.settings import POLL_SOURCE
from receiver.sinks.base import Sink, apply_all
from receiver.store import Attempt, EventOutcome, QueueEntry, StoredEvent, Vanished, now_ms
from receiver.store.watch import follow

log = get_logger("receiver.worker")
MAX_ERROR_LENGTH = 500
LOST_ERROR = (
    "lost: the stored event vanished from Redis before its retention ended "
    "(evicted by a maxmemory policy, or lost in a Redis crash)"
)

# Told whether the sink answered a batch (any record applied, stale or refused for good),
# and whether that batch was the circuit's probe.
SinkAnswered = Callable[[bool, bool], None]


class BatchApplier:
    """Map, apply and record batches of queue entries for one sink."""

    def __init__(
        self, runtime: Runtime, sink: Sink, policy: RetryPolicy, on_sink_result: SinkAnswered
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.sink = sink
        self.policy = policy
        self._sink_timeout = runtime.settings.sink_timeout_seconds
        self._on_sink_result = on_sink_result

    async def process(
        self, batch: list[tuple[QueueEntry, StoredEvent | None]], *, probe: bool = False
    ) -> list[QueueEntry]:
        """Apply a batch of stored events and record their outcomes.

        Mapping failures are decided per event; the sink gets the rest as one batch; the
        outcomes are recorded by one script. An event whose processing raises something
        unexpected is left pending (and dead-lettered as poison after repeated reclaims).
        A ``probe`` batch (the circuit breaker's) schedules no retry: an entry the sink
        failed is returned, still held and with its attempts unchanged.
        """
        started = time.perf_counter()
        outcomes: list[EventOutcome] = []
        to_apply: list[tuple[QueueEntry, StoredEvent, Record]] = []
        for entry, event in batch:
            if event is None or event.is_tombstone:
                await self._vanished(entry)
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
        held: list[QueueEntry] = []
        if to_apply:
            applied, held = await self._apply_batch(to_apply, probe=probe)
            outcomes += applied
        # Events scheduled for a retry were acknowledged with it; the rest are decided.
        decided = [outcome for outcome in outcomes if outcome.state is not EventState.PENDING]
        await self._record(decided, to_apply)
        events = {entry.member: event for entry, event in batch}
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        for outcome in decided:
            self._report(outcome, events[outcome.member], duration_ms)
        return held

    async def _record(
        self,
        decided: list[EventOutcome],
        applied: list[tuple[QueueEntry, StoredEvent, Record]],
    ) -> None:
        """Keep the reconciliation watch list in step (issue 16), then finish the decided
        outcomes: at most one script call per watch shard per batch.

        The watch is written first, not alongside: once ``finish_many`` removes an event
        from the queue nothing will apply it again, so a watch write that failed after it
        would leave a non-terminal record unwatched for good. Written first, a failure
        leaves the events pending and the reclaim applies them (and writes the watch)
        again; the ordering guard makes that second apply harmless. It costs one round
        trip per batch, off the ingest path."""
        states = {outcome.member: outcome.state for outcome in decided}
        results = [
            (record, states[event.member], event.received_ms)
            for _, event, record in applied
            if event.member in states
        ]
        changes = follow(results, self.runtime.settings.reconcile_after_seconds)
        if changes:
            await self.store.watch.apply(changes)
        if decided:
            await self.store.finish_many(decided)
        for _, event, record in applied:
            # A polled event that changed a record to its terminal state: the webhook for
            # it never came (Rivya sends none for queued/processing, so those do not count).
            if (
                event.source == POLL_SOURCE
                and states.get(event.member) is EventState.APPLIED
                and record.status_rank == TERMINAL_RANK
            ):
                metrics.RECONCILE_RECORDS_FIXED.inc()

    def _record_of(self, event: StoredEvent) -> Record:
        body = self.runtime.cipher.open(event.body, event.encrypted)
        received = datetime.fromtimestamp(event.received_ms / 1000, UTC)
        # The record is made just now, so its applied_at is the time of this attempt (the
        # stores keep it; the HTTP sink leaves it out, so its body is the same every time).
        return map_event(parse_body(body), event.event_id, received).record

    async def _apply_batch(
        self, batch: list[tuple[QueueEntry, StoredEvent, Record]], *, probe: bool
    ) -> tuple[list[EventOutcome], list[QueueEntry]]:
        """Apply the records through the sink: the outcomes, and (for a probe) the entries
        still held. Transient failures are scheduled for a retry (their outcome's state
        stays ``pending``), or are dead once their budget is spent."""
        apply_started = time.perf_counter()
        results: list[ApplyOutcome | SinkResult | Exception]
        try:
            # asyncio.timeout, not wait_for: no extra task.
            async with asyncio.timeout(self._sink_timeout + 1):
                results = await apply_all(self.sink, [record for _, _, record in batch])
        except TimeoutError as exc:
            results = [exc] * len(batch)
        finally:
            elapsed = time.perf_counter() - apply_started
            metrics.APPLY_DURATION.observe(elapsed)
        # The records of a batch are applied together: each attempt took the batch's time.
        duration_ms = round(elapsed * 1000, 3)
        answered = any(
            isinstance(r, ApplyOutcome | SinkResult | PermanentSinkError) for r in results
        )
        self._on_sink_result(answered, probe)
        now = now_ms()
        outcomes: list[EventOutcome] = []
        held: list[QueueEntry] = []
        retries = []
        for (entry, event, _), result in zip(batch, results, strict=True):
            attempt = event.attempts + 1
            tried = attempt_of(result, duration_ms)
            if isinstance(result, ApplyOutcome | SinkResult):
                applied = (
                    result if isinstance(result, ApplyOutcome) else result.outcome
                ) is ApplyOutcome.APPLIED
                state = EventState.APPLIED if applied else EventState.STALE
                outcomes.append(EventOutcome(entry, event.member, state, attempt, attempt=tried))
                continue
            if isinstance(result, PermanentSinkError):
                error = _error_text("permanent", result)
                outcomes.append(
                    EventOutcome(
                        entry, event.member, EventState.DEAD, attempt, error, "worker",
                        ReasonCode.SINK_REJECTED, tried,
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
            if probe:
                held.append(entry)  # the sink failed, not this event: no attempt is spent
                continue
            first_failed = event.first_failed_ms or now
            delay = self.policy.next_delay(attempt, first_failed, now)
            if delay is None:
                error = f"{self.policy.describe_give_up(attempt, first_failed, now)}: {error}"
                outcomes.append(
                    EventOutcome(
                        entry, event.member, EventState.DEAD, attempt, error, "worker",
                        ReasonCode.RETRIES_EXHAUSTED, tried,
                    )
                )  # fmt: skip
                continue
            outcomes.append(EventOutcome(entry, event.member, EventState.PENDING, attempt, error))
            retries.append(
                self._schedule_retry(entry, event, attempt, error, delay, first_failed, tried)
            )
        if retries:
            await asyncio.gather(*retries)
        return outcomes, held

    async def _vanished(self, entry: QueueEntry) -> None:
        """An entry whose stored event is gone: expired, or lost (logged, counted, and kept
        as a tombstone so ops can list it); acknowledged either way."""
        history = EventOutcome(
            entry, entry.member, EventState.DEAD, 0, LOST_ERROR, "worker", ReasonCode.LOST
        ).history_line()
        found = await self.store.vanished(entry, last_error=LOST_ERROR, history=history)
        if found is Vanished.PRESENT:
            return
        source, _, event_id = entry.member.partition(MEMBER_SEPARATOR)
        metrics.child(metrics.EVENTS_PROCESSED, source, EventState.DEAD.value).inc()
        if found is Vanished.LOST:
            metrics.child(metrics.EVENTS_LOST, source).inc()
            log.error(
                "event_lost",
                source=source,
                event_id=event_id,
                outcome=EventState.DEAD.value,
                reason_code=ReasonCode.LOST.value,
                error=LOST_ERROR,
            )
            return
        log.warning(
            "event_expired",
            source=source,
            event_id=event_id,
            outcome=EventState.DEAD.value,
            reason_code=ReasonCode.EXPIRED.value,
        )

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
        self,
        entry: QueueEntry,
        event: StoredEvent,
        attempt: int,
        error: str,
        delay: float,
        first_failed_ms: int,
        tried: Attempt,
    ) -> None:
        await self.store.schedule_retry(entry, attempt, error, delay, first_failed_ms, tried)
        metrics.APPLY_RETRIES.inc()
        log.warning(
            "event_retry_scheduled",
            event_id=event.event_id,
            attempts=attempt,
            retry_in_s=round(delay, 3),
            error=error,
        )


def attempt_of(result: ApplyOutcome | SinkResult | BaseException, duration_ms: float) -> Attempt:
    """One sink call as the event's history keeps it: the outcome in one word, and what
    the sink told about it (an HTTP answer's status and body start, a stale record's
    held state)."""
    if isinstance(result, ApplyOutcome):
        return Attempt(duration_ms, result.value)
    if isinstance(result, SinkResult):
        return Attempt(duration_ms, result.outcome.value, result.status, result.answer, result.held)
    if isinstance(result, PermanentSinkError):
        return Attempt(duration_ms, "rejected", result.status, result.answer)
    if isinstance(result, TransientSinkError):
        return Attempt(duration_ms, "failed", result.status, result.answer)
    if isinstance(result, TimeoutError):
        return Attempt(duration_ms, "timeout")
    return Attempt(duration_ms, "error")


def _error_text(kind: str, exc: BaseException) -> str:
    """A short, redacted description of a failure, safe to store and print."""
    message = str(exc) or type(exc).__name__
    return redact_text(f"{kind}: {type(exc).__name__}: {message}")[:MAX_ERROR_LENGTH]

"""The worker: take events off the queue, apply them through the sink, record outcomes.

Entries are read in batches and each batch is handled by ``applier.BatchApplier`` in its
own task, up to ``RECEIVER_WORKER_CONCURRENCY`` entries at once. What the worker adds
around that, so every fault ends with it healthy again (issue 13):

- **Redis failures** are waited out: any failed call marks the worker as recovering; once
  Redis answers, in-flight batches end and the worker takes back every entry still
  pending under its own name (``EventStore.held_by``), at once rather than after the
  visibility timeout. Re-applying is harmless: the sink's guard makes a redelivery a no-op.
- **A sink that fails for everything** opens the circuit (``circuit.SinkCircuit``): no
  new entries are read, so waiting events keep their attempts; one held event probes the
  sink with backoff, and the first answer closes the circuit.
- **Dead consumers.** An entry a worker died holding is reclaimed by another after the
  visibility timeout; one handed out too often without finishing (a poison event that
  crashes or hangs its worker) goes to ``dead``. Consumers gone for a day that hold
  nothing are removed from the group.

Each worker also registers itself in Redis from its housekeeping (a heartbeat every
``keys.HEARTBEAT_SECONDS``: consumer, host, pid, start), so ``receiver status`` and
``replay`` can tell whether anything consumes the queue (issue 14).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import socket
import time

from receiver import metrics
from receiver.applier import BatchApplier
from receiver.circuit import SinkCircuit, Transition
from receiver.keys import HEARTBEAT_SECONDS, source_of
from receiver.logs import get_logger
from receiver.models import EventState, ReasonCode
from receiver.redis_client import REDIS_ERRORS
from receiver.retries import RetryPolicy
from receiver.runtime import Runtime
from receiver.sinks.base import Sink
from receiver.store import QueueEntry, now_ms

log = get_logger("receiver.worker")
READ_BLOCK_MS = 500
# After a read that did not fill a batch, wait this long before the next one, so that at a
# modest rate events are applied several at a time (one round trip, transaction and fsync
# for all) instead of one by one. It adds at most this much to receive->applied.
BATCH_LINGER_SECONDS = 0.01
MAINTENANCE_INTERVAL_SECONDS = 0.5
# While Redis is away, how often (at most) the worker asks whether it is back.
RECOVERY_POLL_MIN_SECONDS = 0.05
RECOVERY_POLL_MAX_SECONDS = 1.0
# A recovery this soon after the last one means something keeps failing, not a blip: the
# worker then backs off between recoveries instead of spinning.
RECOVERY_REPEAT_SECONDS = 5.0
# Without RECEIVER_MAX_ATTEMPTS, an entry handed out more often than this without ever
# finishing is a poison event.
DEFAULT_ABANDON_AFTER = 8
# Consumers idle this long that hold nothing are gone (a crashed or replaced process).
CONSUMER_MAX_IDLE_SECONDS = 86400.0
CONSUMER_SWEEP_SECONDS = 600.0
CONSUMER_SWEEP_LIMIT = 100
# Readiness: Redis counts as reachable if housekeeping reached it this recently.
REDIS_FRESH_SECONDS = 10.0
# Liveness: housekeeping ticks every half second; a minute without a tick is a stuck loop.
HEARTBEAT_STALE_SECONDS = 60.0
# How often housekeeping drops watch entries older than the retention (issue 16).
WATCH_TRIM_INTERVAL_SECONDS = 60.0


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"


class Worker:
    """Consumes the queue of one store and applies events through one sink."""

    def __init__(
        self,
        runtime: Runtime,
        sink: Sink,
        *,
        name: str | None = None,
        consumer_max_idle_seconds: float = CONSUMER_MAX_IDLE_SECONDS,
        consumer_sweep_seconds: float = CONSUMER_SWEEP_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.sink = sink
        self.settings = settings = runtime.settings
        self.name = name or consumer_name()
        self.circuit = SinkCircuit(
            settings.circuit_failures, settings.retry_base_seconds, settings.retry_max_seconds
        )
        self.applier = BatchApplier(
            runtime, sink, RetryPolicy.from_settings(settings), self._sink_result
        )
        self._abandon_after = settings.max_attempts or DEFAULT_ABANDON_AFTER
        self._consumer_max_idle = consumer_max_idle_seconds
        self._consumer_sweep = consumer_sweep_seconds
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._tasks: dict[asyncio.Task[None], list[QueueEntry]] = {}
        # Entries processed as one batch at most: half the slots, so that while one batch
        # waits for its sink and Redis, the next is already read and prepared.
        self._batch_limit = max(1, settings.worker_concurrency // 2)
        self._reading_stopped = asyncio.Event()
        # Set by any failed Redis call: take back what this consumer holds once it answers.
        self._recovering = False
        self._recovery_delay = RECOVERY_POLL_MIN_SECONDS
        self._recovered_at = -RECOVERY_REPEAT_SECONDS
        # The event the open circuit probes the sink with, held between probes.
        self._probe_entry: QueueEntry | None = None
        self._running = False
        self._heartbeat = time.monotonic()
        self._redis_answered_at: float | None = None
        self._redis_failing = False
        self._started_ms = now_ms()

    # -- health, for the worker's own /healthz and /readyz -----------------------------------

    def alive(self) -> bool:
        """The loop runs and its housekeeping ticked within the last minute."""
        return self._running and time.monotonic() - self._heartbeat < HEARTBEAT_STALE_SECONDS

    def not_ready(self) -> list[str]:
        """What keeps this worker from applying events: ``redis``, ``sink`` (circuit open)."""
        failed: list[str] = []
        answered = self._redis_answered_at
        if (
            self._redis_failing
            or answered is None
            or time.monotonic() - answered > REDIS_FRESH_SECONDS
        ):
            failed.append("redis")
        if self.circuit.is_open:
            failed.append("sink")
        return failed

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Read and process until ``stop()``; Redis and sink outages are waited out."""
        self._running = True
        metrics.SINK_CIRCUIT_OPEN.set(0)
        maintenance = asyncio.create_task(self._maintain(), name="worker-maintenance")
        first_ping = asyncio.create_task(self._first_sink_ping(), name="worker-sink-ping")
        log.info("worker_started", consumer=self.name, concurrency=self.settings.worker_concurrency)
        try:
            while not self._stopping.is_set():
                if self._recovering:
                    await self._take_back_held()
                elif self.circuit.is_open:
                    await self._probe()
                else:
                    await self._read_batch()
        finally:
            self._running = False
            self._reading_stopped.set()
            for task in (maintenance, first_ping):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Stopped on purpose: no longer listed, rather than shown as a stale worker.
            with contextlib.suppress(*REDIS_ERRORS):
                await self.store.workers.leave(self.name)

    async def _read_batch(self) -> None:
        await self._slots.acquire()
        free = 1
        while free < self._batch_limit and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        try:
            entries = await self.store.read(self.name, free, READ_BLOCK_MS)
        except REDIS_ERRORS as exc:
            entries = []
            self._redis_failed("queue_read_failed", exc)
        for _ in range(free - len(entries)):
            self._slots.release()
        if entries:
            await self._spawn_or_release(entries)
            if len(entries) < self._batch_limit:
                await asyncio.sleep(BATCH_LINGER_SECONDS)

    async def _spawn_or_release(self, entries: list[QueueEntry]) -> None:
        """Process entries we hold slots for; after ``stop()``, or when the circuit opened
        while they were being read, hand them back untouched instead."""
        if not self._stopping.is_set() and not self.circuit.is_open:
            self._spawn(entries)
            return
        reason = "shutdown" if self._stopping.is_set() else "circuit_open"
        for entry in entries:
            self._slots.release()
            await self._release(entry, reason)

    async def _release(self, entry: QueueEntry, reason: str) -> None:
        try:
            await self.store.release(entry)
            log.info("event_released", event_id=entry.member, reason=reason)
        except REDIS_ERRORS:
            pass  # still pending: reclaimed after the visibility timeout

    def _spawn(self, entries: list[QueueEntry], *, probe: bool = False) -> asyncio.Task[None]:
        # The task's list is the batch's unfinished entries: stop() hands those back.
        unfinished = list(entries)
        task = asyncio.create_task(self._process_batch(unfinished, probe=probe))
        self._tasks[task] = unfinished
        task.add_done_callback(functools.partial(self._done, len(entries)))
        return task

    def _done(self, slots: int, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        for _ in range(slots):
            self._slots.release()
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug, not an outage; its entries are still pending under this consumer.
            log.error("batch_failed", exc_info=error)
            self._recovering = True

    async def _process_batch(self, entries: list[QueueEntry], *, probe: bool = False) -> None:
        """Load, apply and finish a batch of entries, then empty ``entries``: until then
        ``stop()`` hands them back if it has to cancel this task."""
        try:
            events = await self.store.load_many([entry.member for entry in entries])
            held = await self.applier.process(list(zip(entries, events, strict=True)), probe=probe)
            entries.clear()  # all recorded (or left pending on purpose): nothing to hand back
            if held:
                self._probe_entry = held[0]
        except REDIS_ERRORS as exc:
            # Still pending under this consumer: taken back as soon as Redis answers.
            self._redis_failed(
                "event_processing_interrupted", exc, members=[entry.member for entry in entries]
            )

    # -- Redis outages ------------------------------------------------------------------------

    def _redis_failed(self, what: str, exc: BaseException, **context: object) -> None:
        self._recovering = True
        self._redis_failing = True
        log.warning(what, error=type(exc).__name__, **context)

    def _redis_answered(self) -> None:
        self._redis_answered_at = time.monotonic()
        self._redis_failing = False

    async def _take_back_held(self) -> None:
        """Once Redis answers again, process every entry still pending under this consumer.

        In-flight batches end first (they fail fast against a dead Redis, or finish), so
        none of their entries is taken twice. ``prepare()`` again: a Redis that came back
        without its data has lost the scripts and the consumer group too. An entry taken
        back too often without finishing is poison, as on a reclaim.
        """
        if time.monotonic() - self._recovered_at < RECOVERY_REPEAT_SECONDS:
            await self._pause(self._recovery_delay)
            self._recovery_delay = min(self._recovery_delay * 2, RECOVERY_POLL_MAX_SECONDS)
        try:
            await self.store.client.ping()
            await self.store.prepare()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            held = await self.store.held_by(self.name)
        except REDIS_ERRORS as exc:
            self._redis_failing = True
            log.debug("redis_still_unavailable", error=type(exc).__name__)
            await self._pause(self._recovery_delay)
            self._recovery_delay = min(self._recovery_delay * 2, RECOVERY_POLL_MAX_SECONDS)
            return
        if time.monotonic() - self._recovered_at >= RECOVERY_REPEAT_SECONDS:
            self._recovery_delay = RECOVERY_POLL_MIN_SECONDS
        self._recovered_at = time.monotonic()
        self._recovering = False
        probe = self._probe_entry
        entries = [entry for entry in held if probe is None or entry.entry_id != probe.entry_id]
        log.info("redis_recovered", held_events=len(entries))
        try:
            for entry in [entry for entry in entries if entry.deliveries > self._abandon_after]:
                await self._abandon(entry)
        except REDIS_ERRORS as exc:
            self._redis_failed("maintenance_failed", exc)
            return
        entries = [entry for entry in entries if entry.deliveries <= self._abandon_after]
        for start in range(0, len(entries), self._batch_limit):
            chunk = entries[start : start + self._batch_limit]
            for _ in chunk:
                await self._slots.acquire()
            await self._spawn_or_release(chunk)

    # -- the circuit breaker ---------------------------------------------------------------

    def _sink_result(self, answered: bool, probe: bool) -> None:
        """Whether the sink answered a batch: its metric, and the circuit's state."""
        metrics.SINK_UP.set(1 if answered else 0)
        if probe and not answered:
            self.circuit.probe_failed()
            log.warning(
                "sink_probe_failed",
                probe="apply",
                failed_probes=self.circuit.failed_probes,
                next_probe_in_s=round(self.circuit.seconds_until_probe(), 3),
            )
            return
        open_for = self.circuit.open_for()
        self._circuit_changed(self.circuit.record(answered), open_for)

    def _circuit_changed(self, transition: Transition | None, open_for: float) -> None:
        if transition is Transition.OPENED:
            metrics.SINK_CIRCUIT_OPEN.set(1)
            log.error(
                "sink_circuit_opened",
                failed_batches=self.circuit.failures_to_open,
                probe_in_s=round(self.circuit.seconds_until_probe(), 3),
                detail="the sink failed every record of consecutive batches; no new events "
                "are taken off the queue until a probe gets an answer",
            )
        elif transition is Transition.CLOSED:
            metrics.SINK_CIRCUIT_OPEN.set(0)
            log.info("sink_circuit_closed", open_for_s=round(open_for, 3))

    async def _probe(self) -> None:
        """While the circuit is open: when a probe is due, apply one held event (taken off
        the queue once, kept between probes); with no event waiting, ask the sink's ping."""
        await self.circuit.wait_for_probe(self._stopping)
        if self._stopping.is_set() or not self.circuit.is_open:
            return
        if self._probe_entry is None:
            try:
                found = await self.store.read(self.name, 1, READ_BLOCK_MS)
            except REDIS_ERRORS as exc:
                self._redis_failed("queue_read_failed", exc)
                return
            self._probe_entry = found[0] if found else None
        if self._probe_entry is None:
            await self._ping_probe()
            return
        entry, self._probe_entry = self._probe_entry, None  # the task holds it now
        await self._slots.acquire()
        await asyncio.wait([self._spawn([entry], probe=True)])

    async def _ping_probe(self) -> None:
        open_for = self.circuit.open_for()
        try:
            async with asyncio.timeout(self.settings.sink_timeout_seconds + 1):
                await self.sink.ping()
        except Exception as exc:  # any failure of a (third-party) sink's ping: still down
            self.circuit.probe_failed()
            log.warning(
                "sink_probe_failed",
                probe="ping",
                error=type(exc).__name__,
                next_probe_in_s=round(self.circuit.seconds_until_probe(), 3),
            )
            return
        metrics.SINK_UP.set(1)
        self._circuit_changed(self.circuit.close_on_probation(), open_for)

    async def _first_sink_ping(self) -> None:
        """Give ``receiver_sink_up`` a value before the first batch (the ping's word only)."""
        try:
            async with asyncio.timeout(self.settings.sink_timeout_seconds + 1):
                await self.sink.ping()
        except Exception:  # any failure of a (third-party) sink's ping: not up
            metrics.SINK_UP.set(0)
            return
        metrics.SINK_UP.set(1)

    # -- shutdown --------------------------------------------------------------------------

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
                    await self._release(entry, "shutdown")
        if self._probe_entry is not None:
            entry, self._probe_entry = self._probe_entry, None
            await self._release(entry, "shutdown")
        log.info("worker_stopped", consumer=self.name)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on ``stop()``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- housekeeping ------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Promote due retries, reclaim entries of dead consumers, keep the probe event
        held, remove consumers long gone; periodically."""
        visibility_ms = int(self.settings.visibility_timeout_seconds * 1000)
        reclaim_every = min(self.settings.visibility_timeout_seconds / 2, 15)
        last_reclaim = last_trim = 0.0
        last_sweep = time.monotonic() - self._consumer_sweep  # the first tick sweeps
        last_registered = -HEARTBEAT_SECONDS
        while not self._stopping.is_set():
            self._heartbeat = time.monotonic()
            try:
                await self.store.promote_due()
                self._redis_answered()
                now = time.monotonic()
                if now - last_registered >= HEARTBEAT_SECONDS:
                    last_registered = now
                    await self._register()
                if now - last_reclaim >= reclaim_every:
                    last_reclaim = now
                    if self._probe_entry is not None:
                        await self.store.touch(self._probe_entry, self.name)
                    # Not while the circuit is open (taking entries would spend their
                    # attempts) or while recovering (the entries might be our own).
                    if not self.circuit.is_open and not self._recovering:
                        await self._reclaim(visibility_ms)
                if now - last_sweep >= self._consumer_sweep:
                    last_sweep = now
                    await self._remove_gone_consumers()
                if now - last_trim >= WATCH_TRIM_INTERVAL_SECONDS:
                    last_trim = now
                    # Bounded without a reconciler too: no watch outlives the retention.
                    await self.store.watch.trim(now_ms() - self.store.retention_ms)
            except REDIS_ERRORS as exc:
                self._redis_failed("maintenance_failed", exc)
            await self._pause(MAINTENANCE_INTERVAL_SECONDS)

    async def _register(self) -> None:
        """The worker's heartbeat in Redis (``receiver status``, the replay warning)."""
        await self.store.workers.beat(
            self.name,
            {
                "consumer": self.name,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "started_ms": str(self._started_ms),
                "concurrency": str(self.settings.worker_concurrency),
                "in_flight": str(sum(len(entries) for entries in self._tasks.values())),
                # The sink's health as this worker sees it (its circuit), so the console
                # and ``status`` can show it from Redis without probing the sink.
                "sink_circuit": "open" if self.circuit.is_open else "closed",
            },
        )

    async def _reclaim(self, visibility_ms: int) -> None:
        for entry in await self.store.reclaim(self.name, visibility_ms, 100):
            if entry.deliveries > self._abandon_after:
                await self._abandon(entry)
                continue
            log.info("event_reclaimed", member=entry.member)
            await self._slots.acquire()
            await self._spawn_or_release([entry])

    async def _remove_gone_consumers(self) -> None:
        removed = await self.store.remove_idle_consumers(
            self.name, int(self._consumer_max_idle * 1000), CONSUMER_SWEEP_LIMIT
        )
        if removed:
            log.info("consumers_removed", consumers=removed, idle_s=self._consumer_max_idle)

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

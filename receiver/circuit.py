"""A circuit breaker for the worker's sink: stop taking events while it fails for everything.

Without it, a sink outage makes every queued event burn its own attempts against a sink
that is plainly down (issue 13). After ``failures_to_open`` consecutive batches in which
the sink answered nothing (every record a transient error or a timeout), the circuit
opens: the worker stops reading the queue, so waiting events are not even read and keep
their attempts. It probes with capped exponential backoff and closes at the first answer.

The probe is a real apply of one held event, because only a write is truthful: an HTTP
downstream can answer ``HEAD`` while its ``POST`` fails, SQLite reads on a full disk,
PostgreSQL answers ``SELECT 1`` on a read-only standby, Redis ``PING`` while it refuses
writes (OOM). Only when no event waits at all is the sink's ``ping()`` asked; it closes the
circuit on probation, so the first batch that fails entirely opens it again.

This class is the state alone (no I/O, the clock injected); the worker applies, logs and
exports the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum

from receiver.retries import backoff_delay


class Transition(StrEnum):
    """A change of the circuit's state, for the worker to log and export."""

    OPENED = "opened"
    CLOSED = "closed"


class SinkCircuit:
    """Counts batches the sink failed entirely; open after ``failures_to_open`` in a row."""

    def __init__(
        self,
        failures_to_open: int,
        probe_base_seconds: float,
        probe_max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures_to_open = failures_to_open
        self._probe_base = probe_base_seconds
        self._probe_max = probe_max_seconds
        self._clock = clock
        self._failures = 0  # consecutive batches without any answer
        self._failed_probes = 0
        self._opened_at: float | None = None
        self._next_probe_at = 0.0
        self._closed = asyncio.Event()
        self._closed.set()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def failed_probes(self) -> int:
        return self._failed_probes

    def open_for(self) -> float:
        """Seconds since the circuit opened (0 while closed)."""
        return 0.0 if self._opened_at is None else self._clock() - self._opened_at

    def seconds_until_probe(self) -> float:
        return max(0.0, self._next_probe_at - self._clock()) if self.is_open else 0.0

    def record(self, answered: bool) -> Transition | None:
        """The result of one batch (or probe): did the sink answer for any record?"""
        if answered:
            self._failures = 0
            return self._close() if self.is_open else None
        if self.is_open:
            return None  # a batch still in flight when it opened: nothing new
        self._failures += 1
        if self._failures < self.failures_to_open:
            return None
        self._opened_at = self._clock()
        self._failed_probes = 0
        self._closed.clear()
        self._schedule_probe()
        return Transition.OPENED

    def probe_failed(self) -> None:
        """A probe got no answer either: wait longer before the next one."""
        self._failed_probes += 1
        self._schedule_probe()

    def close_on_probation(self) -> Transition | None:
        """The sink's ping answered while no event waits: close, but one more batch that
        fails entirely opens the circuit again (a ping can answer while writes fail)."""
        transition = self._close() if self.is_open else None
        self._failures = self.failures_to_open - 1
        return transition

    async def wait_for_probe(self, stopping: asyncio.Event) -> None:
        """Return when a probe is due, the circuit closed (another batch got an answer),
        or ``stopping`` is set."""
        delay = self.seconds_until_probe()
        if delay <= 0 or not self.is_open:
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in (stopping, self._closed)]
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    def _close(self) -> Transition:
        self._opened_at = None
        self._failed_probes = 0
        self._closed.set()
        return Transition.CLOSED

    def _schedule_probe(self) -> None:
        delay = backoff_delay(self._failed_probes + 1, self._probe_base, self._probe_max)
        self._next_probe_at = self._clock() + delay

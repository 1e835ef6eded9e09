"""Readiness that tells the truth: can this process store an event right now?

``serve`` is ready when Redis accepts a write, so a Redis out of memory or a read-only
replica counts as not ready, not only one that is down. The sink is not asked: events wait
in Redis while it is out, and taking ingest out of the load balancer then would refuse
exactly the events Redis could hold (SPEC §3, PITFALLS: Recovery).

Probes are cheap and bounded however often readiness is asked: one probe is in flight at
a time, on a connection of its own (not the request pool, which 300 concurrent probes once
drained), and an answer comes from a result at most ``MAX_AGE_SECONDS`` old. ``/readyz``
and, later, the admin listener's detailed readiness (SPEC §10) share this class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.keys import PROBE_TTL_MS, all_shards
from receiver.redis_client import REDIS_ERRORS

MAX_AGE_SECONDS = 1.0
PROBE_CONNECTIONS = 2


@dataclass(frozen=True, slots=True)
class ReadinessResult:
    """One probe's outcome; ``reason`` says why Redis is not writable (empty when ready)."""

    ready: bool
    failed: tuple[str, ...] = ()
    reason: str = ""
    checked_at: float = field(default=0.0, compare=False)

    def payload(self) -> dict[str, Any]:
        if self.ready:
            return {"status": "ready"}
        return {"error": "not_ready", "failed": list(self.failed), "reason": self.reason}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, ReadOnlyError):
        return "read_only"
    if isinstance(exc, RedisTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, RedisConnectionError | OSError):
        return "unreachable"
    return "error"


class Readiness:
    """Write probes of one Redis through ``client`` (which this object owns and closes)."""

    def __init__(
        self,
        client: Any,
        *,
        shards: int,
        timeout_seconds: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._keys = [shard.probe for shard in all_shards(shards)]
        self._timeout = timeout_seconds
        # Seconds on a monotonic clock; the running loop's by default. A test seam: tests
        # pass their own clock to step past MAX_AGE_SECONDS without sleeping.
        self._clock = clock
        self._last: ReadinessResult | None = None
        self._inflight: asyncio.Future[ReadinessResult] | None = None

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def last(self) -> ReadinessResult | None:
        """The latest result, without probing (``/metrics`` reads this)."""
        return self._last

    async def check(self) -> ReadinessResult:
        """A result at most ``MAX_AGE_SECONDS`` old: the last one, or the probe in flight."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and self._now() - last.checked_at <= MAX_AGE_SECONDS:
            return last
        if self._inflight is None:
            self._inflight = loop.create_task(self._probe(self._now()))
            self._inflight.add_done_callback(self._probe_done)
        # Shielded: a caller that goes away must not cancel the probe the others wait for.
        return await asyncio.shield(self._inflight)

    def _probe_done(self, _future: asyncio.Future[ReadinessResult]) -> None:
        self._inflight = None

    async def _probe(self, started: float) -> ReadinessResult:
        try:
            async with asyncio.timeout(self._timeout):
                for key in self._keys:
                    await self._client.set(key, b"1", px=PROBE_TTL_MS)
        except REDIS_ERRORS as exc:  # asyncio.timeout raises TimeoutError, an OSError
            result = ReadinessResult(False, ("redis",), _reason(exc), started)
        else:
            result = ReadinessResult(True, checked_at=started)
        self._last = result
        return result

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
        await self._client.aclose()

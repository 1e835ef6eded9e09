"""The reconcilers' shared gate in Redis: a global rate limit, pauses, the refused-key flag.

Every reconciler process asks the gate for a slot before each request (``take``), so
together they never exceed ``RECEIVER_RECONCILE_RATE``: slots are ``1/rate`` apart on
Redis's clock (``lua/reconcile_limit.lua``), so requests are evenly spaced whichever
process sends them, and no second ever holds more than the rate (plus one). A token
bucket or a sliding log would let a burst through each time the budget refills. A 429
pauses everyone for its ``Retry-After``; a refused key (401/403) pauses everyone and then
lets one probe through per recheck period, so a revoked key costs Rivya one request a
minute, not a stream of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from receiver.batching import AutoPipeline, Script
from receiver.keys import (
    RECONCILE_NEXT_SLOT,
    RECONCILE_PAUSE,
    RECONCILE_REFUSED,
    RECONCILE_REFUSED_TTL_MS,
)

# While the key is refused, one request checks it this often (and one error line is logged
# per process at most this often).
REFUSED_RECHECK_SECONDS = 60.0
# Slots are handed out at most this far ahead (a reconciler sleeps until each one), and
# at least one interval ahead, but never further than a lease comfortably covers.
MIN_HORIZON_MS = 200.0
MAX_HORIZON_MS = 2000.0


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``take`` got: when each allowed request may start, else how long to wait."""

    offsets: tuple[float, ...]  # seconds from now, one per request allowed
    wait_seconds: float
    refused: bool  # the key was refused lately (a probe, if anything, was let through)


@dataclass(frozen=True, slots=True)
class GateState:
    paused_ms: int  # how long the pause still lasts (0: none)
    pause_reason: str  # "rate_limited" | "refused" | ""
    refused_status: int | None  # 401/403 while the key is refused


def horizon_ms(interval_ms: float) -> float:
    return max(MIN_HORIZON_MS, min(interval_ms, MAX_HORIZON_MS))


class PollGate:
    """The gate's scripts and reads, sharing the event store's pipeline."""

    def __init__(self, pipeline: AutoPipeline, load_lua: Callable[[str], str]) -> None:
        self._pipeline = pipeline
        self._limit = Script(pipeline, load_lua("reconcile_limit"))
        self._pause = Script(pipeline, load_lua("reconcile_pause"))

    async def prepare(self) -> None:
        await self._limit.load()
        await self._pause.load()

    async def take(self, want: int, rate: float) -> Grant:
        """Slots for up to ``want`` requests under the shared rate limit and pauses."""
        interval = 1000.0 / rate
        reply = await self._limit(
            (RECONCILE_NEXT_SLOT, RECONCILE_PAUSE, RECONCILE_REFUSED),
            (
                f"{interval:.3f}",
                f"{horizon_ms(interval):.3f}",
                int(REFUSED_RECHECK_SECONDS * 1000),
                max(1, want),
            ),
        )
        refused, wait_ms, *offsets = reply
        return Grant(
            tuple(float(_text(offset)) / 1000 for offset in offsets),
            int(wait_ms) / 1000,
            bool(int(refused)),
        )

    async def paused(self) -> bool:
        """Whether everyone is paused right now (checked again just before a request whose
        slot was handed out earlier: a 429 or a refusal may have come in meanwhile)."""
        return int(await self._pipeline.execute("PTTL", RECONCILE_PAUSE)) > 0

    async def pause(self, seconds: float) -> None:
        """Everyone waits ``seconds`` (a 429's Retry-After); a longer pause stands."""
        await self._pause(
            (RECONCILE_PAUSE, RECONCILE_REFUSED),
            ("rate_limited", max(1, int(seconds * 1000)), "", RECONCILE_REFUSED_TTL_MS),
        )

    async def refused(self, status: int) -> None:
        """The key was refused: pause everyone until the next recheck, remember why."""
        await self._pause(
            (RECONCILE_PAUSE, RECONCILE_REFUSED),
            ("refused", int(REFUSED_RECHECK_SECONDS * 1000), status, RECONCILE_REFUSED_TTL_MS),
        )

    async def accepted(self) -> None:
        """An answer that was not a refusal: the key works (again); its pause ends now."""
        await self._pause((RECONCILE_PAUSE, RECONCILE_REFUSED), ("accepted", 0, "", 0))

    async def state(self) -> GateState:
        pttl, reason, refused = await asyncio.gather(
            self._pipeline.execute("PTTL", RECONCILE_PAUSE),
            self._pipeline.execute("GET", RECONCILE_PAUSE),
            self._pipeline.execute("GET", RECONCILE_REFUSED),
        )
        return GateState(
            paused_ms=max(0, int(pttl)),
            pause_reason=_text(reason) if reason else "",
            refused_status=int(refused) if refused else None,
        )


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

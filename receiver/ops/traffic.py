"""Deliveries per minute (issue 15, Overview): accepted, duplicate, rejected by code.

Read from counters Redis already keeps, never from the events themselves: the index counts
the new events of each minute (ZCOUNT), the accept script's per-key counters count every
verified delivery (duplicates too), and the rejection log counts rejections by code
(sampled-out ones too). A duplicate is a verified delivery that stored nothing new, so
``duplicate = verified - accepted``; events that did not come as a signed delivery (polled
by reconciliation) make that a lower bound. Bounded: a few commands per minute shown.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from receiver.keys import MINUTE_MS
from receiver.ops.events import iso_ms
from receiver.store import EventStore, now_ms

DEFAULT_MINUTES = 10
MAX_MINUTES = 60


@dataclass(frozen=True, slots=True)
class MinuteTraffic:
    """One minute's deliveries."""

    minute_ms: int
    accepted: int
    duplicate: int
    rejected: dict[str, int]

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "minute": iso_ms(self.minute_ms),
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
        }


async def deliveries_per_minute(
    store: EventStore, minutes: int = DEFAULT_MINUTES
) -> list[MinuteTraffic]:
    """The last ``minutes`` minutes (the current one last), newest last."""
    minutes = max(1, min(minutes, MAX_MINUTES))
    first = now_ms() // MINUTE_MS - minutes + 1
    accepted, verified, rejected = await asyncio.gather(
        store.received_per_minute(first, minutes),
        store.verified_per_minute(first, minutes),
        store.rejections.counts_by_minute(first, minutes),
    )
    return [
        MinuteTraffic(
            minute_ms=(first + i) * MINUTE_MS,
            accepted=accepted[i],
            duplicate=max(0, verified[i] - accepted[i]),
            rejected=rejected[i],
        )
        for i in range(minutes)
    ]

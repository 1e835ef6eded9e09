"""The rejected-delivery log in Redis: one capped stream and per-minute counts by code.

Written a batch at a time by ``receiver.rejections.RejectionRecorder`` (one script call,
bounded in count and age, see ``lua/reject.lua``); read newest first by the ops layer.
Only what the recorder hands over is stored, and it never holds a body, a signature or
any header value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from receiver.batching import AutoPipeline, Script
from receiver.keys import (
    COUNTER_TTL_MS,
    MINUTE_MS,
    REJECTED_LOG,
    REJECTED_MAX_AGE_MS,
    REJECTED_MAX_ENTRIES,
    rejected_counts,
)
from receiver.store import replies
from receiver.store.values import now_ms

# The fields of one entry, in the order the recorder passes them.
REJECTION_FIELDS = (
    "at_ms",
    "source",
    "status",
    "code",
    "client",
    "headers",
    "event_id",
    "skew",
    "body_bytes",
    "keys_tried",
    "scheme",
    "reason",
)


class RejectionLog:
    """Writes batches of rejections and reads them back."""

    def __init__(self, pipeline: AutoPipeline, script: Script) -> None:
        self._pipeline = pipeline
        self._script = script

    async def prepare(self) -> None:
        await self._script.load()

    async def write(self, entries: Sequence[Mapping[str, str]], counts: Mapping[str, int]) -> int:
        """Append ``entries`` (values for ``REJECTION_FIELDS``) and add ``counts`` (code →
        how many rejections, recorded or not) to this minute's counters."""
        now = now_ms()
        args: list[Any] = [
            str(REJECTED_MAX_ENTRIES),
            str(max(0, now - REJECTED_MAX_AGE_MS)),
            str(COUNTER_TTL_MS),
            str(len(entries)),
            str(len(REJECTION_FIELDS)),
        ]
        for entry in entries:
            for name in REJECTION_FIELDS:
                args += (name, entry.get(name, ""))
        for code, count in counts.items():
            args += (code, str(count))
        result = await self._script((REJECTED_LOG, rejected_counts(now // MINUTE_MS)), args)
        return int(result)

    async def newest(
        self, *, before: str | None, since_ms: int | None, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` entries newest first, older than stream id ``before`` (exclusive)
        and not older than ``since_ms``."""
        upper = f"({before}" if before else "+"
        lower = f"{since_ms}-0" if since_ms is not None else "-"
        reply = await self._pipeline.execute(
            "XREVRANGE", REJECTED_LOG, upper, lower, "COUNT", count
        )
        return replies.stream_entries(reply)

    async def get(self, entry_id: str) -> dict[str, str] | None:
        reply = await self._pipeline.execute("XRANGE", REJECTED_LOG, entry_id, entry_id)
        found = replies.stream_entries(reply)
        return found[0][1] if found else None

    async def counts_by_minute(self, first_minute: int, minutes: int) -> list[dict[str, int]]:
        """Rejections by code in each minute from ``first_minute`` (epoch ms // 60,000)."""
        found = await asyncio.gather(
            *(
                self._pipeline.execute("HGETALL", rejected_counts(minute))
                for minute in range(first_minute, first_minute + minutes)
            )
        )
        return [
            {code: int(count) for code, count in replies.text_dict(reply).items()}
            for reply in found
        ]

    async def counts(self, minutes: int) -> dict[str, int]:
        """Rejections by code over the last ``minutes`` (sampled-out ones included)."""
        now_minute = now_ms() // MINUTE_MS
        found = await asyncio.gather(
            *(
                self._pipeline.execute("HGETALL", rejected_counts(minute))
                for minute in range(now_minute - minutes + 1, now_minute + 1)
            )
        )
        totals: dict[str, int] = {}
        for reply in found:
            for code, count in replies.text_dict(reply).items():
                totals[code] = totals.get(code, 0) + int(count)
        return totals

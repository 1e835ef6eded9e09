"""The credit ledger's sums in Redis (``receiver/ops/credits.py`` computes them): per
shard, the last index entry counted; per day, each task's latest state and the per-model
sums; the days kept. Batches commit through one compare-and-set script on the cursor, so
two processes catching up at once count each batch once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import orjson

from receiver.batching import AutoPipeline, Script
from receiver.keys import CREDITS_DAYS, credits_cursor, credits_day, credits_tasks
from receiver.store import replies


class CreditSums:
    """Reads and commits of the ledger's keys (all under the ``{credits}`` hash tag)."""

    def __init__(self, pipeline: AutoPipeline, commit: Script) -> None:
        self._pipeline = pipeline
        self._commit = commit

    async def prepare(self) -> None:
        await self._commit.load()

    async def cursor(self, shard: int) -> str:
        """Where counting of ``shard`` stopped: ``"<score>:<member>"``, or '' at first."""
        raw = await self._pipeline.execute("GET", credits_cursor(shard))
        return replies.text(raw) if raw else ""

    async def task_states(self, day: str, tasks: Sequence[str]) -> list[bytes | None]:
        """What each task of ``day`` counted for so far (None: not counted yet)."""
        if not tasks:
            return []
        reply = await self._pipeline.execute("HMGET", credits_tasks(day), *tasks)
        return [bytes(raw) if raw is not None else None for raw in reply]

    async def commit(
        self,
        shard: int,
        seen_cursor: str,
        new_cursor: str,
        days: Mapping[str, tuple[int, Mapping[str, bytes], Mapping[str, float]]],
    ) -> bool:
        """Write a batch (per day: expiry, task states, sum deltas) if the cursor still
        reads ``seen_cursor``; False when another process counted it first."""
        keys = [credits_cursor(shard), CREDITS_DAYS]
        payload = []
        for day, (expires, tasks, sums) in days.items():
            keys += (credits_tasks(day), credits_day(day))
            payload.append(
                {
                    "name": day,
                    "expires": str(expires),
                    "tasks": {task: state.decode() for task, state in tasks.items()},
                    "sums": {name: repr(value) for name, value in sums.items() if value},
                }
            )
        result = await self._commit(keys, (seen_cursor, new_cursor, orjson.dumps(payload)))
        return int(result) == 1

    async def forget_days_before(self, unix_seconds: int) -> None:
        await self._pipeline.execute("ZREMRANGEBYSCORE", CREDITS_DAYS, "-inf", unix_seconds)

    async def days(self, limit: int) -> list[str]:
        """The days kept, latest expiry first (the most recent days), at most ``limit``."""
        reply = await self._pipeline.execute("ZREVRANGE", CREDITS_DAYS, 0, limit - 1)
        return [replies.text(day) for day in reply or []]

    async def sums(self, days: Sequence[str]) -> list[dict[str, str]]:
        """Each day's sums hash (``model\\x1fmetric`` → value), one round trip."""
        found = await asyncio.gather(
            *(self._pipeline.execute("HGETALL", credits_day(day)) for day in days)
        )
        return [replies.text_dict(reply) for reply in found]

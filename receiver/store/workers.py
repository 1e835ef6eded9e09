"""Worker heartbeats in Redis: who is consuming, since when, and when it was last heard of.

Each worker beats from its maintenance loop (``lua/heartbeat.lua``); ``status`` and the
replay warning read them back. A worker that stops cleanly leaves; one that is killed goes
stale and is forgotten after ``WORKER_FORGET_MS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from receiver.batching import AutoPipeline, Script
from receiver.keys import WORKER_FORGET_MS, WORKER_STALE_SECONDS, WORKERS_INDEX, worker_info
from receiver.store import replies
from receiver.store.values import now_ms


def is_live(fields: Mapping[str, str], now: int | None = None) -> bool:
    """Whether a worker's last beat (``beat_ms``) is recent enough to count it as live."""
    beat = int(fields.get("beat_ms", "0") or 0)
    return (now if now is not None else now_ms()) - beat <= WORKER_STALE_SECONDS * 1000


class WorkerRegistry:
    """Heartbeats of the workers consuming this store's queue."""

    def __init__(self, pipeline: AutoPipeline, script: Script) -> None:
        self._pipeline = pipeline
        self._script = script

    async def prepare(self) -> None:
        await self._script.load()

    async def beat(self, consumer: str, fields: Mapping[str, str]) -> None:
        now = str(now_ms())
        args: list[Any] = [consumer, now, str(WORKER_FORGET_MS), "beat_ms", now]
        for name, value in fields.items():
            args += (name, value)
        await self._script((WORKERS_INDEX, worker_info(consumer)), args)

    async def leave(self, consumer: str) -> None:
        """A worker that stops cleanly is no longer listed (it is not a stale one)."""
        await asyncio.gather(
            self._pipeline.execute("ZREM", WORKERS_INDEX, consumer),
            self._pipeline.execute("DEL", worker_info(consumer)),
        )

    async def known(self) -> list[dict[str, str]]:
        """Every worker heard of within the forget period, newest beat first."""
        since = now_ms() - WORKER_FORGET_MS
        reply = await self._pipeline.execute(
            "ZREVRANGEBYSCORE", WORKERS_INDEX, "+inf", since, "WITHSCORES", "LIMIT", 0, 1000
        )
        consumers = replies.scored(reply)
        infos = await asyncio.gather(
            *(self._pipeline.execute("HGETALL", worker_info(name)) for name, _ in consumers)
        )
        found = []
        for (name, beat_ms), info in zip(consumers, infos, strict=True):
            fields = replies.text_dict(info)
            fields.setdefault("consumer", name)
            fields.setdefault("beat_ms", str(beat_ms))
            found.append(fields)
        return found

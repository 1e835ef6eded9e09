"""Replay: put stored events back on the queue, paced, through the ordering guard (SPEC §7).

Selecting the events is ``events``' job and recording the replay is ``audit``'s; this
module requeues them, or for a dry run tells which are still stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from receiver.ops.events import Progress
from receiver.store import EventStore


@dataclass(slots=True)
class ReplayResult:
    """How a replay went; ``missing`` names events no longer stored."""

    total: int
    queued: int = 0
    missing: list[str] = field(default_factory=list)
    completed: bool = False


async def existing(store: EventStore, members: Sequence[str]) -> list[bool]:
    """Whether each member is still stored with a body to replay (one pipelined round
    trip): a lost event's tombstone has none, and requeue refuses it too."""
    if not members:
        return []
    pipe = store.client.pipeline(transaction=False)
    for member in members:
        pipe.hexists(store.keys(member).event(member), "body")
    return [bool(found) for found in await pipe.execute()]


async def replay(
    store: EventStore,
    members: Sequence[str],
    *,
    by: str,
    rate: float | None = None,
    progress: Progress | None = None,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Requeue each member through the ordering guard, at most ``rate`` per second.

    Pass ``result`` to keep the counts of an interrupted replay (for its audit entry).
    """
    result = result if result is not None else ReplayResult(total=len(members))
    started = time.monotonic()
    for done, member in enumerate(members):
        if rate is not None:
            # Pace against the start, not the previous event, so slow calls do not add up.
            delay = started + done / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if await store.requeue(member, by=by):
            result.queued += 1
        else:
            result.missing.append(member)
        if progress is not None:
            progress(done + 1, len(members))
    result.completed = True
    return result

"""The watch list: tasks in a non-terminal state that a reconciler checks with Rivya's API.

Issue 16: a record we know about always reaches its terminal state, even when its webhook
never comes. The worker keeps the list in step with what it applies (``follow``: one
script call per watch shard per batch, never anything on the ingest path), the product
registers what it just submitted (``track``), and reconcilers ``claim`` due tasks under a
lease, ``renew`` it while their requests run and ``release`` them when done. Scripts in
``lua/watch*.lua``; key names in ``keys.WatchKeys``. All times in ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from receiver.batching import AutoPipeline, Script
from receiver.keys import WATCH_LEASE_MS, WatchKeys, all_watch_shards, watch_keys_for
from receiver.models import TERMINAL_RANK, EventState, Record
from receiver.store import replies

# Tasks one claim or trim call takes at most (a batch the reconciler can start at once).
MAX_CLAIM = 200
TRIM_LIMIT = 500


class WatchOp(StrEnum):
    """What the worker (or ``track``) asks of one task's watch entry (see ``lua/watch.lua``)."""

    WATCH = "w"  # a non-terminal state was applied: next check at due, backoff reset
    TRACK = "t"  # the product submitted it: watch unless already watched
    UNWATCH = "u"  # a terminal state is recorded: nothing left to check


@dataclass(frozen=True, slots=True)
class WatchChange:
    task_id: str
    op: WatchOp
    due_ms: int = 0


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task a reconciler holds: poll it, then ``release`` it, showing ``claim``."""

    task_id: str
    since_ms: int  # first watched
    checks: int  # polls since the last progress (the backoff's exponent)
    errors: int  # transient failures in a row (5xx, timeouts)
    claim: str  # which claim holds it (the lease end at claim time); renew/release show it


@dataclass(frozen=True, slots=True)
class Release:
    """How a reconciler hands a task back: dropped from the watch, or due again at ``due_ms``."""

    task: ClaimedTask
    drop: bool
    due_ms: int = 0
    checks: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class WatchStats:
    watched: int
    due_now: int
    oldest_since_ms: int | None
    next_due_ms: int | None


def follow(
    results: Iterable[tuple[Record, EventState, int]], after_seconds: float
) -> list[WatchChange]:
    """The watch changes a worker's batch makes: ``(record, outcome, received_ms)`` each.

    An applied non-terminal state watches its task (next check ``after_seconds`` after the
    event); a terminal state, applied or stale (the record is terminal already), ends the
    watch. A dead event tracks its task (watched unless it is already): its record did not
    take the state, and a dead letter nobody replays is one of the ways a record gets
    stuck (issue 16), so the reconciler polls it and feeds the answer through the sink
    again. Stale non-terminal events change nothing.
    """
    changes: list[WatchChange] = []
    after_ms = int(after_seconds * 1000)
    for record, state, received_ms in results:
        terminal = record.status_rank == TERMINAL_RANK
        due_ms = received_ms + after_ms
        if state is EventState.DEAD:
            changes.append(WatchChange(record.record_key, WatchOp.TRACK, due_ms))
        elif terminal and state in (EventState.APPLIED, EventState.STALE):
            changes.append(WatchChange(record.record_key, WatchOp.UNWATCH))
        elif not terminal and state is EventState.APPLIED:
            changes.append(WatchChange(record.record_key, WatchOp.WATCH, due_ms))
    return changes


def _since_ms(score: str, claim: str) -> int:
    """A task's first-watched time from its sorted-set score. Scores are floats to Redis:
    one written by hand or by another tool may have a fraction or an exponent, and one odd
    entry must not fail the claim of every task claimed with it. A score that is no finite
    time counts as watched since the claim (``claim`` is the lease end, a little ahead:
    the task's max age starts over)."""
    try:
        return int(float(score))
    except (ValueError, OverflowError):
        return int(claim)


class WatchList:
    """Every watch-list query and script, sharing the event store's pipeline."""

    def __init__(
        self,
        pipeline: AutoPipeline,
        load_lua: Callable[[str], str],
        *,
        shards: int,
        lease_ms: int = WATCH_LEASE_MS,
    ) -> None:
        self._pipeline = pipeline
        self.shards = shards
        self.lease_ms = lease_ms
        self._scripts = {
            name: Script(pipeline, load_lua(name))
            for name in ("watch", "watch_claim", "watch_renew", "watch_release", "watch_trim")
        }

    async def prepare(self) -> None:
        for script in self._scripts.values():
            await script.load()

    def shard_of(self, task_id: str) -> WatchKeys:
        return watch_keys_for(task_id, self.shards)

    def all_shards(self) -> list[WatchKeys]:
        return all_watch_shards(self.shards)

    async def apply(self, changes: Iterable[WatchChange]) -> int:
        """Record watch changes: one script call per watch shard. Returns how many tasks
        were newly watched. Later changes of one task in ``changes`` win."""
        by_shard: dict[WatchKeys, dict[str, WatchChange]] = {}
        for change in changes:
            by_shard.setdefault(self.shard_of(change.task_id), {})[change.task_id] = change
        calls = []
        for shard, latest in by_shard.items():
            args: list[Any] = []
            for change in latest.values():
                args += (change.op.value, change.task_id, str(change.due_ms))
            calls.append(self._scripts["watch"](shard.all, args))
        if not calls:
            return 0
        return sum(int(added) for added in await asyncio.gather(*calls))

    async def claim(self, limit: int) -> list[ClaimedTask]:
        """Due tasks, each now held under a lease of ``lease_ms`` (at most ``limit``)."""
        taken: list[ClaimedTask] = []
        for shard in self.all_shards():
            if len(taken) >= limit:
                break
            want = min(MAX_CLAIM, limit - len(taken))
            reply = await self._scripts["watch_claim"](shard.all, (want, self.lease_ms))
            values = [replies.text(value) for value in reply or []]
            for n in range(0, len(values), 5):
                task_id, since, checks, errors, claim = values[n : n + 5]
                taken.append(
                    ClaimedTask(task_id, _since_ms(since, claim), int(checks), int(errors), claim)
                )
        return taken

    async def renew(self, tasks: Sequence[ClaimedTask]) -> list[bool]:
        """Extend the leases still held: False where another claim or an unwatch won."""
        by_shard: dict[WatchKeys, list[ClaimedTask]] = {}
        for task in tasks:
            by_shard.setdefault(self.shard_of(task.task_id), []).append(task)
        renewed: dict[str, bool] = {}
        for shard, group in by_shard.items():
            args: list[Any] = [self.lease_ms]
            for task in group:
                args += (task.task_id, task.claim)
            reply = await self._scripts["watch_renew"](shard.all, args)
            for task, held in zip(group, reply, strict=True):
                renewed[task.task_id] = bool(int(held))
        return [renewed[task.task_id] for task in tasks]

    async def release(self, releases: Sequence[Release]) -> int:
        """Hand tasks back (dropped or rescheduled); returns how many were still ours."""
        by_shard: dict[WatchKeys, list[Release]] = {}
        for release in releases:
            by_shard.setdefault(self.shard_of(release.task.task_id), []).append(release)
        calls = []
        for shard, group in by_shard.items():
            args: list[Any] = []
            for item in group:
                args += (
                    item.task.task_id,
                    item.task.claim,
                    "d" if item.drop else "r",
                    str(item.due_ms),
                    f"{item.checks} {item.errors}",
                )
            calls.append(self._scripts["watch_release"](shard.all, args))
        return sum(int(n) for n in await asyncio.gather(*calls))

    async def trim(self, horizon_ms: int) -> int:
        """Forget tasks first watched before ``horizon_ms`` (housekeeping, by retention)."""
        dropped = 0
        for shard in self.all_shards():
            dropped += int(await self._scripts["watch_trim"](shard.all, (horizon_ms, TRIM_LIMIT)))
        return dropped

    async def stats(self, now_ms: int) -> WatchStats:
        """How many tasks are watched, how many are due, the oldest and the next due."""
        answers = await asyncio.gather(
            *(
                self._pipeline.execute(*command)
                for shard in self.all_shards()
                for command in (
                    ("ZCARD", shard.due),
                    ("ZCOUNT", shard.due, "-inf", now_ms),
                    ("ZRANGE", shard.since, 0, 0, "WITHSCORES"),
                    ("ZRANGE", shard.due, 0, 0, "WITHSCORES"),
                )
            )
        )
        watched = due_now = 0
        oldest: list[int] = []
        upcoming: list[int] = []
        for n in range(0, len(answers), 4):
            count, due, first, soonest = answers[n : n + 4]
            watched += int(count)
            due_now += int(due)
            oldest += [score for _, score in replies.scored(first)]
            upcoming += [score for _, score in replies.scored(soonest)]
        return WatchStats(
            watched=watched,
            due_now=due_now,
            oldest_since_ms=min(oldest) if oldest else None,
            next_due_ms=min(upcoming) if upcoming else None,
        )

    async def due_at(self, task_id: str) -> int | None:
        """When ``task_id`` is next due (ms; a lease end while held), None if not watched."""
        score = await self._pipeline.execute("ZSCORE", self.shard_of(task_id).due, task_id)
        return None if score is None else int(float(replies.text(score)))

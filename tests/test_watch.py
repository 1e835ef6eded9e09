"""The watch list's scripts on a real Redis: follow, track, claim under a lease, renew,
release, trim, and the shared gate's rate limit and pauses (issue 16)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from receiver.keys import RECONCILE_PAUSE, watch_keys_for
from receiver.models import EventState, Record, parse_time
from receiver.store import EventStore, now_ms
from receiver.store.watch import Release, WatchChange, WatchOp, follow


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> AsyncIterator[EventStore]:
    events = EventStore(redis_client, retention_seconds=3600, shards=3)
    await events.prepare()
    yield events
    await events.aclose()


def record(task_id: str, status: str) -> Record:
    return Record(task_id, status, parse_time("2026-05-10T00:00:00Z"), "evt")


class TestFollow:
    def test_applied_states_watch_and_terminal_ones_unwatch(self) -> None:
        """Applied non-terminal: watch at event + after; terminal applied or stale: unwatch;
        dead events (terminal or not) track their task; stale non-terminal: nothing."""
        changes = follow(
            [
                (record("t1", "queued"), EventState.APPLIED, 1_000),
                (record("t2", "processing"), EventState.STALE, 1_000),
                (record("t3", "succeeded"), EventState.APPLIED, 1_000),
                (record("t4", "failed"), EventState.STALE, 1_000),
                (record("t5", "processing"), EventState.DEAD, 1_000),
                (record("t6", "succeeded"), EventState.DEAD, 2_000),
            ],
            after_seconds=0.5,
        )
        assert [
            WatchChange("t1", WatchOp.WATCH, 1_500),
            WatchChange("t3", WatchOp.UNWATCH),
            WatchChange("t4", WatchOp.UNWATCH),
            WatchChange("t5", WatchOp.TRACK, 1_500),
            WatchChange("t6", WatchOp.TRACK, 2_500),
        ] == changes


class TestWatchList:
    async def test_watch_then_claim_when_due(self, store: EventStore) -> None:
        """A watched task is claimed only once due, and then holds a lease (not due again)."""
        now = now_ms()
        await store.watch.apply(
            [
                WatchChange("due", WatchOp.WATCH, now - 1),
                WatchChange("later", WatchOp.WATCH, now + 60_000),
            ]
        )
        claimed = await store.watch.claim(10)
        assert ["due"] == [task.task_id for task in claimed]
        lease_end = await store.watch.due_at("due")
        assert lease_end is not None
        assert lease_end >= now + store.watch.lease_ms - 50
        assert [] == await store.watch.claim(10), "a held task is not due"
        assert 2 == (await store.watch.stats(now_ms())).watched

    async def test_track_keeps_an_existing_schedule(self, store: EventStore) -> None:
        """Tracking a watched task changes nothing; a new one is watched from now."""
        now = now_ms()
        await store.watch.apply([WatchChange("t", WatchOp.WATCH, now + 90_000)])
        added = await store.watch.apply(
            [
                WatchChange("t", WatchOp.TRACK, now + 1_000),
                WatchChange("u", WatchOp.TRACK, now + 1_000),
            ]
        )
        assert 1 == added
        assert now + 90_000 == await store.watch.due_at("t")
        assert now + 1_000 == await store.watch.due_at("u")

    async def test_release_reschedules_or_drops(self, store: EventStore) -> None:
        """A holder reschedules (counts kept) or drops; a stale holder changes nothing."""
        now = now_ms()
        await store.watch.apply([WatchChange(t, WatchOp.WATCH, now - 1) for t in ("a", "b", "c")])
        a, b, c = sorted(await store.watch.claim(10), key=lambda task: task.task_id)
        released = await store.watch.release(
            [
                Release(a, drop=False, due_ms=now + 5_000, checks=3, errors=1),
                Release(b, drop=True),
                Release(dataclasses.replace(c, claim="123"), drop=True),
            ]
        )
        assert 2 == released
        assert now + 5_000 == await store.watch.due_at("a")
        assert await store.watch.due_at("b") is None
        assert await store.watch.due_at("c") is not None, "a wrong lease cannot drop it"
        await store.watch.apply([WatchChange("a", WatchOp.WATCH, now - 1)])
        [again] = await store.watch.claim(10)
        assert (0, 0) == (again.checks, again.errors), "new progress resets the backoff"

    async def test_progress_during_a_lease_waits_for_its_release(self, store: EventStore) -> None:
        """The worker never cuts a lease short; its due time wins when the holder releases."""
        now = now_ms()
        await store.watch.apply([WatchChange("t", WatchOp.WATCH, now - 1)])
        [held] = await store.watch.claim(1)
        await store.watch.apply([WatchChange("t", WatchOp.WATCH, now - 1)])
        assert [] == await store.watch.claim(1), "still held"
        await store.watch.release([Release(held, drop=False, due_ms=now + 3_600_000, checks=5)])
        assert now - 1 == await store.watch.due_at("t")
        [again] = await store.watch.claim(1)
        assert 0 == again.checks

    async def test_unwatch_during_a_lease_wins(self, store: EventStore) -> None:
        """A terminal event while a task is held ends the watch; the release cannot revive it."""
        await store.watch.apply([WatchChange("t", WatchOp.WATCH, now_ms() - 1)])
        [held] = await store.watch.claim(1)
        await store.watch.apply([WatchChange("t", WatchOp.UNWATCH)])
        assert 0 == await store.watch.release([Release(held, drop=False, due_ms=now_ms())])
        assert await store.watch.due_at("t") is None

    async def test_a_lease_that_runs_out_makes_the_task_due_again(
        self, redis_client: aioredis.Redis
    ) -> None:
        """A holder that vanishes (killed) loses no watch: the task is due once its lease ends,
        and the vanished holder's late release is ignored."""
        store = EventStore(redis_client, retention_seconds=3600)
        store.watch.lease_ms = 300
        await store.prepare()
        try:
            await store.watch.apply([WatchChange("t", WatchOp.WATCH, now_ms() - 1)])
            [first] = await store.watch.claim(1)
            assert [] == await store.watch.claim(1)
            await asyncio.sleep(0.4)
            [second] = await store.watch.claim(1)
            assert second.claim != first.claim
            assert 0 == await store.watch.release([Release(first, drop=True)])
            assert [False] == await store.watch.renew([first])
            await asyncio.sleep(0.01)
            assert [True] == await store.watch.renew([second])
            assert (await store.watch.due_at("t") or 0) > int(second.claim), "renewed"
            assert 1 == await store.watch.release([Release(second, drop=True)]), "same claim"
        finally:
            await store.aclose()

    async def test_shards_by_task_id(self, store: EventStore) -> None:
        """Entries live in the shard of their task id, whatever else is in the batch."""
        tasks = [f"task_{n}" for n in range(30)]
        await store.watch.apply([WatchChange(t, WatchOp.WATCH, 1) for t in tasks])
        for task in tasks:
            shard = watch_keys_for(task, 3)
            assert await store.client.zscore(shard.due, task) == 1
        assert len({watch_keys_for(t, 3).shard for t in tasks}) == 3
        claimed = await store.watch.claim(100)
        assert sorted(tasks) == sorted(task.task_id for task in claimed)

    async def test_trim_forgets_tasks_older_than_the_horizon(self, store: EventStore) -> None:
        """Housekeeping drops tasks first watched before the horizon (the retention)."""
        await store.watch.apply([WatchChange("old", WatchOp.WATCH, 1)])
        await asyncio.sleep(0.01)
        horizon = now_ms()
        await store.watch.apply([WatchChange("new", WatchOp.WATCH, 1)])
        assert 1 == await store.watch.trim(horizon - 1)
        assert await store.watch.due_at("old") is None
        assert await store.watch.due_at("new") is not None
        stats = await store.watch.stats(now_ms())
        assert (1, 1) == (stats.watched, stats.due_now)


class TestGate:
    async def test_slots_are_one_interval_apart_within_the_horizon(self, store: EventStore) -> None:
        """At 10/s, slots are 100 ms apart and handed out at most 200 ms ahead; then the
        wait says when the next one comes."""
        first = await store.poll_gate.take(5, 10)
        assert 3 == len(first.offsets)
        gaps = [b - a for a, b in itertools.pairwise(first.offsets)]
        assert all(0.099 <= gap <= 0.101 for gap in gaps), gaps
        later = await store.poll_gate.take(5, 10)
        assert () == later.offsets
        assert 0 < later.wait_seconds <= 0.2
        await asyncio.sleep(later.wait_seconds + 0.01)
        [next_slot] = (await store.poll_gate.take(1, 10)).offsets
        assert next_slot >= 0.15, "the next slot follows the last one handed out"

    async def test_an_idle_gate_saves_no_burst(self, store: EventStore) -> None:
        """After a quiet spell the first slot is now, the next ones still an interval apart."""
        await store.poll_gate.take(1, 10)
        await asyncio.sleep(0.5)
        offsets = (await store.poll_gate.take(3, 10)).offsets
        assert offsets[0] < 0.01
        assert 3 == len(offsets)
        assert offsets[2] >= 0.199

    async def test_a_pause_stops_everyone(self, store: EventStore) -> None:
        """After a 429's pause no slot is given until it ends."""
        await store.poll_gate.pause(0.3)
        grant = await store.poll_gate.take(3, 100)
        assert () == grant.offsets
        assert 0 < grant.wait_seconds <= 0.3
        await asyncio.sleep(0.35)
        assert 3 == len((await store.poll_gate.take(3, 100)).offsets)

    async def test_a_refused_key_lets_one_probe_through_per_recheck(
        self, store: EventStore
    ) -> None:
        """While the key is refused, after each pause exactly one request may check it; an
        answer that is not a refusal ends the pause and the flag."""
        await store.poll_gate.refused(401)
        assert () == (await store.poll_gate.take(5, 100)).offsets
        state = await store.poll_gate.state()
        assert (401, "refused") == (state.refused_status, state.pause_reason)
        assert 59 < state.paused_ms / 1000 <= 60
        await store.client.delete(RECONCILE_PAUSE)  # as if the recheck time had come
        probe = await store.poll_gate.take(5, 100)
        assert (1, True) == (len(probe.offsets), probe.refused)
        assert () == (await store.poll_gate.take(5, 100)).offsets, "the probe re-armed the pause"
        await store.poll_gate.accepted()  # the probe's answer: the key works again
        grant = await store.poll_gate.take(5, 100)
        assert (5, False) == (len(grant.offsets), grant.refused)
        assert (0, None) == ((await store.poll_gate.state()).paused_ms, None)

    async def test_a_rate_limit_pause_outlives_an_accepted_key(self, store: EventStore) -> None:
        """Only a refused key's pause ends with an accepted answer, never a 429's."""
        await store.poll_gate.pause(5)
        await store.poll_gate.accepted()
        assert "rate_limited" == (await store.poll_gate.state()).pause_reason

    async def test_two_gates_share_one_limit(self, store: EventStore) -> None:
        """Two processes' gates hand out one sequence of slots, one interval apart."""
        other = EventStore(store.client, retention_seconds=3600)
        await other.prepare()
        try:
            a = (await store.poll_gate.take(1, 10)).offsets
            b = (await other.poll_gate.take(1, 10)).offsets
            assert 1 == len(a) == len(b)
            assert 0.05 <= b[0] - a[0] <= 0.101  # less the time between the two calls
        finally:
            await other.aclose()

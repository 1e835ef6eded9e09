"""The Redis event store: one command per new event, atomic scripts, retention."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from receiver.keys import CONSUMER_GROUP, all_shards, keys_for, member_of, shard_of
from receiver.models import EventState
from receiver.store import (
    AcceptResult,
    EventOutcome,
    EventStore,
    IncomingEvent,
    Vanished,
    now_ms,
)
from tests.factories import base_env, event_body, signed_headers
from tests.redis_proc import RedisProcess
from tests.servers import ServiceThread


def incoming(
    event_id: str, body: bytes = b"{}", state: EventState = EventState.PENDING
) -> IncomingEvent:
    return IncomingEvent(
        source="rivya",
        event_id=event_id,
        body=body,
        body_sha256=str(hash(body)),
        encrypted=False,
        received_ms=now_ms(),
        signed_ts=int(time.time()),
        event_type="generation.succeeded",
        record_key="task_1",
        state=state,
    )


def client_commands(port: int, action: Callable[[], None], *, whole: bool = False) -> list[str]:
    """Commands clients sent while ``action`` ran, read with MONITOR (script internals
    excluded): their names, or with ``whole`` the command lines."""
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis(port=port).monitor() as monitor:
            ready.set()
            while True:
                command = monitor.next_command()
                if command["command"] == "ECHO STOP-MONITOR":
                    return
                if command.get("client_type") != "lua":
                    text = command["command"]
                    seen.append(text if whole else text.split()[0].upper())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)
    action()
    redis.Redis(port=port).echo("STOP-MONITOR")
    thread.join(5)
    # Connection set-up (HELLO, CLIENT) and our own STOP-MONITOR echo are not per-event work.
    return [line for line in seen if line.split()[0].upper() not in ("ECHO", "HELLO", "CLIENT")]


def test_ingest_issues_one_redis_command_per_new_event(tmp_path: Path) -> None:
    """A new event costs exactly one Redis command (EVALSHA) on the ingest path."""
    from receiver.settings import Settings

    with RedisProcess(tmp_path / "redis") as server:
        settings = Settings.from_env(base_env(tmp_path, server.url, RECEIVER_SINK="log:"))
        with ServiceThread(settings) as service, httpx.Client(base_url=service.url) as client:

            def send_five() -> None:
                for n in range(5):
                    body = event_body()
                    headers = signed_headers(body, event_id=f"msg_{n}")
                    assert (
                        client.post("/webhooks/rivya", content=body, headers=headers).status_code
                        == 202
                    )

            commands = client_commands(server.port, send_five)
    assert commands == ["EVALSHA"] * 5


@pytest.mark.parametrize("status", ["queued", "processing", "failed"])
def test_watching_adds_nothing_to_ingest(tmp_path: Path, status: str) -> None:
    """Issue 16: a new non-terminal (watched) or terminal event still costs exactly one
    Redis command on the ingest path; the watch list is the worker's job."""
    from receiver.settings import Settings

    with RedisProcess(tmp_path / "redis") as server:
        settings = Settings.from_env(base_env(tmp_path, server.url, RECEIVER_SINK="log:"))
        with ServiceThread(settings) as service, httpx.Client(base_url=service.url) as client:

            def send_five() -> None:
                for n in range(5):
                    body = event_body(status=status)
                    headers = signed_headers(body, event_id=f"msg_{status}_{n}")
                    answer = client.post("/webhooks/rivya", content=body, headers=headers)
                    assert 202 == answer.status_code

            commands = client_commands(server.port, send_five)
    assert ["EVALSHA"] * 5 == commands


def test_the_worker_keeps_the_watch_with_one_script_call_per_batch(tmp_path: Path) -> None:
    """Applying a backlog of processing events watches every task with at most one watch
    script call per batch (one per finish call), written just before the batch's finish."""
    from receiver.batching import Script
    from receiver.settings import Settings
    from receiver.store import load_lua

    def sha(name: str) -> str:
        return Script(None, load_lua(name)).sha  # type: ignore[arg-type]

    tasks = [f"task_watch_{n}" for n in range(24)]
    with RedisProcess(tmp_path / "redis") as server:
        settings = Settings.from_env(base_env(tmp_path, server.url, RECEIVER_SINK="log:"))
        with ServiceThread(settings) as service, httpx.Client(base_url=service.url) as client:
            for task_id in tasks:
                body = event_body(task_id=task_id, status="processing")
                answer = client.post("/webhooks/rivya", content=body, headers=signed_headers(body))
                assert 202 == answer.status_code
        watched: list[int] = []
        lines = client_commands(
            server.port,
            lambda: watched.append(asyncio.run(_apply_backlog(settings, len(tasks)))),
            whole=True,
        )
    calls = Counter(line.split()[1] for line in lines if line.split()[0].upper() == "EVALSHA")
    assert [len(tasks)] == watched
    assert 1 <= calls[sha("watch")] <= calls[sha("finish")], calls
    assert calls[sha("finish")] < len(tasks), "batches, not one call per event"


async def _apply_backlog(settings: Any, expected: int) -> int:
    """Run a worker until ``expected`` tasks are watched; how many are."""
    from receiver.runtime import Runtime
    from receiver.worker import Worker

    runtime = await Runtime.open(settings, with_sink=True)
    try:
        assert runtime.sink is not None
        worker = Worker(runtime, runtime.sink)
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the worker moves the watch in another task
            watched = (await runtime.store.watch.stats(now_ms())).watched
            if watched >= expected:
                break
            await asyncio.sleep(0.05)  # polling: the watch moves in the worker's tasks
        await worker.stop(5)
        await task
        return (await runtime.store.watch.stats(now_ms())).watched
    finally:
        await runtime.aclose()


class TestAcceptScript:
    async def test_new_duplicate_conflict(self, redis_client: redis.Redis) -> None:
        """The script answers new, then duplicate for the same body, conflict for another."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        assert await store.accept(incoming("e1", b"a")) == AcceptResult.NEW
        assert await store.accept(incoming("e1", b"a")) == AcceptResult.DUPLICATE
        assert await store.accept(incoming("e1", b"b")) == AcceptResult.CONFLICT
        shard = all_shards(1)[0]
        assert await redis_client.xlen(shard.stream) == 1

    async def test_retention_expires_event_and_dedup(self, redis_client: redis.Redis) -> None:
        """After the retention period the event, its history and its dedup entry are gone."""
        store = EventStore(redis_client, retention_seconds=1)
        await store.prepare()
        await store.accept(incoming("e_exp"))
        await store.accept(incoming("e_gone"))
        member = member_of("rivya", "e_exp")
        shard = all_shards(1)[0]
        assert 0 < await redis_client.pttl(shard.event(member)) <= 1000
        assert 0 < await redis_client.pttl(shard.history(member)) <= 1000
        await asyncio.sleep(1.2)
        assert await redis_client.exists(shard.event(member), shard.history(member)) == 0
        assert await store.accept(incoming("e_exp")) == AcceptResult.NEW
        assert len(await redis_client.zrange(shard.index, 0, -1)) == 2
        # the worker's housekeeping trims index members past the retention window (e_gone)
        await store.promote_due()
        assert [member.encode()] == await redis_client.zrange(shard.index, 0, -1)

    async def test_requeue_resets_and_queues(self, redis_client: redis.Redis) -> None:
        """A replay puts a dead event back on the queue as pending with a fresh budget."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        await store.accept(incoming("e_dead", state=EventState.DEAD))
        shard = all_shards(1)[0]
        member = member_of("rivya", "e_dead")
        assert await redis_client.xlen(shard.stream) == 0
        assert await store.requeue(member, by="replay:test")
        stored = await store.load(member)
        assert stored is not None
        assert (stored.state, stored.attempts) == (EventState.PENDING, 0)
        assert (
            await redis_client.xlen(shard.stream),
            await redis_client.zscore(shard.dead, member),
        ) == (1, None)
        assert not await store.requeue(member_of("rivya", "never-stored"), by="replay:test")

    async def test_retry_then_promote(self, redis_client: redis.Redis) -> None:
        """A scheduled retry leaves the stream and comes back once due."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        await store.accept(incoming("e_retry"))
        [entry] = await store.read("c1", 10, 10)
        await store.schedule_retry(entry, 1, "transient: boom", 0.05)
        shard = all_shards(1)[0]
        pending = await redis_client.xpending(shard.stream, CONSUMER_GROUP)
        assert (await redis_client.xlen(shard.stream), pending["pending"]) == (0, 0)
        assert await store.promote_due() == 0
        await asyncio.sleep(0.06)
        assert await store.promote_due() == 1
        [again] = await store.read("c1", 10, 10)
        assert again.member == "rivya|e_retry"

    async def test_a_retry_keeps_its_first_failure_and_a_replay_clears_it(
        self, redis_client: redis.Redis
    ) -> None:
        """The retry budget's start survives later retries; a replay starts it afresh."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        await store.accept(incoming("e_budget"))
        member = member_of("rivya", "e_budget")
        [entry] = await store.read("c1", 10, 10)
        await store.schedule_retry(entry, 1, "transient: boom", 0.0, first_failed_ms=1234)
        stored = await store.load(member)
        assert stored is not None
        assert (1, 1234) == (stored.attempts, stored.first_failed_ms)
        assert await store.requeue(member, by="replay:test")
        replayed = await store.load(member)
        assert replayed is not None
        assert (0, 0) == (replayed.attempts, replayed.first_failed_ms)

    async def test_own_pending_entries_are_taken_back(self, redis_client: redis.Redis) -> None:
        """held_by returns every entry pending under one consumer (and only those), across
        pages; touch keeps one held without counting a delivery."""
        from receiver.store import events as store_module

        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        for n in range(store_module.HELD_PAGE + 5):
            await store.accept(incoming(f"e_held_{n}"))
        mine = await store.read("mine", store_module.HELD_PAGE + 3, 10)
        others = await store.read("other", 10, 10)
        held = await store.held_by("mine")
        assert [entry.entry_id for entry in mine] == [entry.entry_id for entry in held]
        assert {2} == {entry.deliveries for entry in held}  # read, then taken back
        assert 2 == len(others)
        shard = all_shards(1)[0]
        await store.touch(held[0], "mine")
        [pending] = await redis_client.xpending_range(
            shard.stream, CONSUMER_GROUP, min=held[0].entry_id, max=held[0].entry_id, count=1
        )
        # Handed out twice (read, then held_by), and touch did not count a third time.
        assert (b"mine", 2) == (pending["consumer"], pending["times_delivered"])
        assert pending["time_since_delivered"] < 1000

    async def test_a_lost_event_leaves_a_tombstone_that_cannot_be_replayed(
        self, redis_client: redis.Redis
    ) -> None:
        """vanished() tells a hash gone early (lost: a dead tombstone, listed with the dead)
        from one gone with its retention (expired: nothing left), acknowledging both."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        shard = all_shards(1)[0]
        for event_id in ("e_lost", "e_expired"):
            await store.accept(incoming(event_id))
            await redis_client.delete(shard.event(member_of("rivya", event_id)))
        await redis_client.zadd(shard.index, {"rivya|e_expired": now_ms() - 61_000})
        found = {
            entry.member: await store.vanished(entry, last_error="lost: gone", history=b"{}")
            for entry in await store.read("c1", 10, 10)
        }
        assert {"rivya|e_lost": Vanished.LOST, "rivya|e_expired": Vanished.EXPIRED} == found
        tombstone = await store.load("rivya|e_lost")
        assert tombstone is not None
        assert tombstone.is_tombstone
        assert (EventState.DEAD, "lost", "e_lost") == (
            tombstone.state,
            tombstone.reason_code,
            tombstone.event_id,
        )
        assert await redis_client.zscore(shard.dead, "rivya|e_lost") is not None
        assert not await redis_client.exists(shard.event("rivya|e_expired"))
        assert not await store.requeue("rivya|e_lost", by="replay:test")
        pending = await redis_client.xpending(shard.stream, CONSUMER_GROUP)
        assert (0, 0) == (await redis_client.xlen(shard.stream), pending["pending"])
        # The sender's retry of a lost event is stored anew.
        assert AcceptResult.NEW == await store.accept(incoming("e_lost"))

    async def test_the_receive_time_of_a_vanished_event_comes_from_the_index(
        self, redis_client: redis.Redis
    ) -> None:
        """A member trimmed from an index that still exists is past its retention (expired);
        only with the index itself gone does the entry id's time decide (here: lost)."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        shard = all_shards(1)[0]
        await store.accept(incoming("e_kept"))
        await store.accept(incoming("e_trimmed"))
        await redis_client.delete(shard.event("rivya|e_trimmed"))
        await redis_client.zrem(shard.index, "rivya|e_trimmed")
        [_, trimmed] = await store.read("c1", 10, 10)
        assert Vanished.EXPIRED == await store.vanished(trimmed, last_error="x", history=b"{}")
        await store.accept(incoming("e_evicted"))
        await redis_client.delete(shard.event("rivya|e_evicted"), shard.index)
        [evicted] = await store.read("c1", 10, 10)
        assert Vanished.LOST == await store.vanished(evicted, last_error="x", history=b"{}")

    async def test_finish_keeps_history_expiring_with_the_event(
        self, redis_client: redis.Redis
    ) -> None:
        """The history list expires with its event, also when finish had to create it."""
        store = EventStore(redis_client, retention_seconds=60)
        await store.prepare()
        shard = all_shards(1)[0]
        for event_id, drop_history in (("e_kept", False), ("e_lost", True)):
            await store.accept(incoming(event_id))
            member = member_of("rivya", event_id)
            if drop_history:
                await redis_client.delete(shard.history(member))
            [entry] = await store.read("c1", 10, 10)
            await store.finish(entry, member, EventState.APPLIED, 1)
            history_ttl = await redis_client.pttl(shard.history(member))
            assert 0 < history_ttl <= await redis_client.pttl(shard.event(member)) + 5
            assert (await store.history(member))[-1]["state"] == "applied"


async def test_a_batch_of_outcomes_is_one_script_call(tmp_path: Path) -> None:
    """finish_many records each event's outcome and acknowledges all with one EVALSHA."""
    from receiver.redis_client import create_client

    shard = all_shards(1)[0]
    with RedisProcess(tmp_path / "redis") as server, redis.Redis(port=server.port) as admin:
        client = create_client(server.url)
        store = EventStore(client, retention_seconds=60)
        try:
            await store.prepare()
            for n in range(6):
                await store.accept(incoming(f"e_{n}"))
            entries = await store.read("c1", 10, 10)
            admin.config_resetstat()
            outcomes = [(EventState.APPLIED, ""), (EventState.DEAD, "permanent: x")] * 3
            await store.finish_many(
                [
                    EventOutcome(entry, entry.member, state, 1, error)
                    for entry, (state, error) in zip(entries, outcomes, strict=True)
                ]
            )
            stats = admin.info("commandstats")
            histories = [(await store.history(entry.member))[-1] for entry in entries]
        finally:
            await store.aclose()
            await client.aclose()
        states = [admin.hget(shard.event(entry.member), "state") for entry in entries]
        dead = {member.decode() for member in admin.zrange(shard.dead, 0, -1)}
        pending = admin.xpending(shard.stream, CONSUMER_GROUP)["pending"]
        backlog = (admin.xlen(shard.stream), pending)
    assert 6 == len(entries)
    assert [b"applied", b"dead"] * 3 == states
    assert {entry.member for entry in entries[1::2]} == dead
    assert ["applied", "dead"] * 3 == [line["state"] for line in histories]
    assert (0, 0) == backlog
    assert (1, 1, 1) == tuple(
        stats[f"cmdstat_{name}"]["calls"] for name in ("evalsha", "xack", "xdel")
    )


async def test_worker_reads_cost_one_round_trip_when_idle(tmp_path: Path) -> None:
    """A backlog is read without blocking on the shared pipeline; an idle queue only blocks."""
    from receiver.redis_client import create_client

    with RedisProcess(tmp_path / "redis") as server, redis.Redis(port=server.port) as admin:

        def xreadgroup_calls() -> int:
            stats = admin.info("commandstats").get("cmdstat_xreadgroup", {"calls": 0})
            return int(stats["calls"])

        client = create_client(server.url)
        store = EventStore(client, retention_seconds=60)
        try:
            await store.prepare()
            await store.accept(incoming("e_1"))
            first = await store.read("c1", 10, 10)  # blocking read: finds the event
            await store.accept(incoming("e_2"))
            calls = xreadgroup_calls()
            second = await store.read("c1", 10, 10)  # backlog seen: the cheap read finds it
            after_backlog = xreadgroup_calls() - calls
            assert await store.read("c1", 10, 10) == []  # cheap read empty, then blocking
            calls = xreadgroup_calls()
            assert await store.read("c1", 10, 10) == []  # idle: the blocking read alone
            idle = xreadgroup_calls() - calls
        finally:
            await store.aclose()
            await client.aclose()
    assert ([e.member for e in first], [e.member for e in second]) == (
        ["rivya|e_1"],
        ["rivya|e_2"],
    )
    assert (after_backlog, idle) == (1, 1)


def test_keys_of_one_event_share_a_cluster_slot() -> None:
    """Every key the accept script touches carries the same hash tag."""
    for shards in (1, 16):
        member = member_of("rivya", "msg_123")
        keys = keys_for(member, shards)
        names = [
            keys.event(member),
            keys.history(member),
            keys.stream,
            keys.index,
            keys.dead,
            keys.retry,
        ]
        tags = {name[name.index("{") : name.index("}") + 1] for name in names}
        assert {f"{{q{shard_of(member, shards)}}}"} == tags

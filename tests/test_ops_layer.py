"""The ops data layer on a real Redis: pages, filters, resolve, replay outcomes, heartbeats,
the rejected-delivery log and key use (issue 14, items 3-9)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from receiver import ops
from receiver.keys import all_shards, keys_for, member_of
from receiver.models import EventState, ReasonCode
from receiver.rejections import RejectionRecorder
from receiver.store import EventStore, IncomingEvent, now_ms
from receiver.store import rejections as rejection_store
from receiver.store.workers import is_live
from tests.helpers import eventually_async


def incoming(
    event_id: str,
    *,
    received_ms: int | None = None,
    state: EventState = EventState.PENDING,
    record_key: str = "task_1",
    event_type: str = "generation.succeeded",
    reason_code: str = "",
    signing_key: str = "",
    body: bytes = b"{}",
) -> IncomingEvent:
    return IncomingEvent(
        source="rivya",
        event_id=event_id,
        body=body,
        body_sha256=str(hash(body)),
        encrypted=False,
        received_ms=received_ms if received_ms is not None else now_ms(),
        signed_ts=int(time.time()),
        event_type=event_type,
        record_key=record_key,
        state=state,
        last_error=f"{reason_code}: because" if reason_code else "",
        reason_code=reason_code,
        signing_key=signing_key,
    )


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> Any:
    """An event store with two shards on the flushed test database."""
    event_store = EventStore(redis_client, retention_seconds=3600, shards=2)
    await event_store.prepare()
    yield event_store
    await event_store.aclose()


async def dead(store: EventStore, event_id: str, code: str = ReasonCode.UNMAPPABLE) -> str:
    await store.accept(incoming(event_id, state=EventState.DEAD, reason_code=code))
    return member_of("rivya", event_id)


class TestPages:
    async def test_cursor_pages_cover_every_event_once_newest_first(
        self, store: EventStore
    ) -> None:
        """Following next_cursor visits every event exactly once, newest first, across
        shards and events received in the same millisecond."""
        base = now_ms() - 10_000
        ids = [f"evt_{n:02d}" for n in range(23)]
        for n, event_id in enumerate(ids):
            await store.accept(incoming(event_id, received_ms=base + n // 3))
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await ops.list_events(store, ops.EventFilter(limit=5), cursor=cursor)
            pages += 1
            if pages == 1:
                assert page.total == 23
            seen += [event.event_id for event in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)
        assert len(seen) == len(set(seen))
        times = [int(event_id[4:]) // 3 for event_id in seen]
        assert times == sorted(times, reverse=True)
        assert pages == 5

    async def test_error_filter_selects_dead_events_of_that_code(self, store: EventStore) -> None:
        """--error CODE matches dead events with that reason code and nothing else."""
        await dead(store, "evt_unmappable", ReasonCode.UNMAPPABLE)
        await dead(store, "evt_not_json", ReasonCode.NOT_JSON)
        await store.accept(incoming("evt_pending"))
        page = await ops.list_events(store, ops.EventFilter(reason_code="unmappable"))
        assert ["evt_unmappable"] == [event.event_id for event in page]

    async def test_unknown_error_code_is_a_filter_error(self) -> None:
        """An unknown reason code names the option and the known codes."""
        with pytest.raises(ops.FilterError, match="--error: unknown reason code"):
            ops.EventFilter(reason_code="nope")

    async def test_record_filter_reads_the_record_index_not_the_whole_index(
        self, store: EventStore, redis_client: aioredis.Redis
    ) -> None:
        """--record walks that record's own index: it still answers with the main index gone."""
        for n in range(3):
            await store.accept(incoming(f"evt_a{n}", record_key="task_a"))
        await store.accept(incoming("evt_b", record_key="task_b"))
        for shard in all_shards(2):
            await redis_client.delete(shard.index)
        page = await ops.list_events(store, ops.EventFilter(record_key="task_a"))
        assert {"evt_a0", "evt_a1", "evt_a2"} == {event.event_id for event in page}

    async def test_scan_budget_bounds_a_page(self, store: EventStore) -> None:
        """With a scan budget a page stops early and says so, with a cursor to go on."""
        for n in range(40):
            await store.accept(incoming(f"evt_{n}", event_type="generation.succeeded"))
        page = await ops.list_events(
            store, ops.EventFilter(event_type="generation.failed", limit=10), scan_budget=15
        )
        assert (len(page), page.scanned_out, page.next_cursor is not None) == (0, True, True)
        assert page.total is None

    async def test_a_foreign_cursor_is_refused(self, store: EventStore) -> None:
        """A cursor this receiver did not hand out is a CursorError, not a crash."""
        with pytest.raises(ops.CursorError):
            await ops.list_events(store, ops.EventFilter(), cursor="not-a-cursor!")


class TestResolve:
    async def test_resolve_closes_dead_events_audited_and_keeps_them(
        self, store: EventStore
    ) -> None:
        """A resolved event leaves the dead set and count, keeps its reason, is audited."""
        member = await dead(store, "evt_dead")
        assert (await store.queue_stats())["dead"] == 1
        result = await ops.resolve(
            store,
            ops.Selection("rivya", event_filter=ops.EventFilter(reason_code="unmappable")),
            reason="mapping will never match",
            actor="alice",
        )
        assert (result.matched, result.resolved) == (1, 1)
        stats = await store.queue_stats()
        assert (stats["dead"], stats["resolved"]) == (0, 1)
        event = await store.load(member)
        assert event is not None
        assert (event.state, event.resolved_reason, event.resolved_by) == (
            EventState.RESOLVED,
            "mapping will never match",
            "alice",
        )
        assert [] == list(await ops.list_events(store, ops.EventFilter(state=EventState.DEAD)))
        shown = await ops.list_events(store, ops.EventFilter(state=EventState.RESOLVED))
        assert ["evt_dead"] == [e.event_id for e in shown]
        history = await store.history(member)
        assert (history[-1]["state"], history[-1]["by"], history[-1]["reason"]) == (
            "resolved",
            "resolve:alice",
            "mapping will never match",
        )
        [entry] = await ops.list_audit(store, 1)
        assert (entry.action, entry.actor, entry.resolved, entry.reason) == (
            "resolve",
            "alice",
            1,
            "mapping will never match",
        )

    async def test_only_dead_events_change(self, store: EventStore) -> None:
        """Resolving a pending event by id leaves it alone and says so."""
        await store.accept(incoming("evt_pending"))
        result = await ops.resolve(
            store, ops.Selection("rivya", ("evt_pending", "evt_gone")), reason="x", actor="a"
        )
        assert (result.resolved, result.not_dead, result.missing) == (
            0,
            ("rivya|evt_pending",),
            ("rivya|evt_gone",),
        )
        assert (await store.load("rivya|evt_pending")).state is EventState.PENDING  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "reason", ["", "   ", "x" * 501, "bell\x07"], ids=["empty", "blank", "long", "control"]
    )
    async def test_reason_is_required_and_printable(self, store: EventStore, reason: str) -> None:
        """A resolve needs a short printable reason."""
        with pytest.raises(ops.FilterError, match="--reason"):
            await ops.resolve(store, ops.Selection("rivya", ("e",)), reason=reason, actor="a")

    async def test_replaying_a_resolved_event_by_id_opens_it_again(
        self, store: EventStore, redis_client: aioredis.Redis
    ) -> None:
        """A resolved event replayed by id is pending again and leaves the resolved set."""
        member = await dead(store, "evt_r")
        await ops.resolve(store, ops.Selection("rivya", ("evt_r",)), reason="x", actor="a")
        assert await store.requeue(member, by="replay:a")
        event = await store.load(member)
        assert event is not None
        assert (event.state, event.resolved_reason) == (EventState.PENDING, "")
        assert await redis_client.zscore(keys_for(member, 2).resolved, member) is None


class TestReplayOutcomes:
    async def test_plan_then_execute_counts_and_audits(self, store: EventStore) -> None:
        """A plan counts what would be queued; executing queues it and audits the numbers."""
        for event_id in ("evt_1", "evt_2"):
            await dead(store, event_id, ReasonCode.SINK_REJECTED)
        selection = ops.Selection("rivya", event_filter=ops.EventFilter(state=EventState.DEAD))
        plan = await ops.plan_replay(store, selection)
        assert (plan.count, len(plan.missing)) == (2, 0)
        result = await ops.execute_replay(store, plan, actor="bob")
        assert (result.queued, result.completed) == (2, True)
        [entry] = await ops.list_audit(store, 1)
        assert (entry.action, entry.actor, entry.queued, entry.completed) == (
            "replay",
            "bob",
            2,
            True,
        )

    async def test_wait_follows_events_to_their_outcomes(self, store: EventStore) -> None:
        """wait_for_outcomes counts applied, stale and dead as the worker decides them."""
        members = []
        for event_id in ("evt_a", "evt_s", "evt_d"):
            await store.accept(incoming(event_id))
            members.append(member_of("rivya", event_id))

        async def worker() -> None:
            await asyncio.sleep(0.3)
            for member, state in zip(
                members, (EventState.APPLIED, EventState.STALE, EventState.DEAD), strict=True
            ):
                await store.finish(None, member, state, 1)

        task = asyncio.create_task(worker())
        outcomes = await ops.wait_for_outcomes(store, members, 10, poll_seconds=0.05)
        await task
        assert (outcomes.applied, outcomes.stale, outcomes.dead, outcomes.pending) == (1, 1, 1, 0)
        assert not outcomes.timed_out

    async def test_wait_times_out_with_pending_events(self, store: EventStore) -> None:
        """Events still pending when the wait ends are counted as pending, timed out."""
        await store.accept(incoming("evt_p"))
        outcomes = await ops.wait_for_outcomes(store, ["rivya|evt_p"], 0.2, poll_seconds=0.05)
        assert (outcomes.pending, outcomes.timed_out) == (1, True)


class TestHeartbeats:
    async def test_worker_beats_while_running_and_leaves_when_stopped(
        self, store: EventStore, tmp_path: Any, redis_url: str
    ) -> None:
        """A running worker is listed live with its pid; a stopped one is no longer listed."""
        import os

        from receiver.runtime import Runtime
        from receiver.settings import Settings
        from receiver.worker import Worker

        settings = Settings.from_env(
            {
                "RECEIVER_REDIS_URL": redis_url,
                "RECEIVER_SINK": "log:",
                "RECEIVER_DATA_DIR": str(tmp_path),
            }
        )
        runtime = await Runtime.open(settings, with_sink=True)
        worker = Worker(runtime, runtime.sink)  # type: ignore[arg-type]
        task = asyncio.create_task(worker.run())
        try:

            async def listed() -> bool:
                return bool(await ops.live_workers(store))

            await eventually_async(listed, what="a live worker")
            [info] = await ops.live_workers(store)
            assert (info.consumer, info.pid, info.live) == (worker.name, os.getpid(), True)
        finally:
            await worker.stop(5)
            await task
            await runtime.aclose()
        assert await store.workers.known() == []

    def test_a_beat_older_than_the_stale_limit_is_not_live(self) -> None:
        """Live means a beat within WORKER_STALE_SECONDS."""
        assert is_live({"beat_ms": "1000"}, now=1000 + 9_000)
        assert not is_live({"beat_ms": "1000"}, now=1000 + 11_000)


class TestRejectionLog:
    async def test_log_is_bounded_in_count(
        self, store: EventStore, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past its cap the log keeps the newest entries (within one stream node)."""
        monkeypatch.setattr(rejection_store, "REJECTED_MAX_ENTRIES", 50)
        for batch in range(10):
            entries = [
                {"code": "invalid_signature", "event_id": f"e{batch}_{n}"} for n in range(30)
            ]
            await store.rejections.write(entries, {"invalid_signature": 30})
        length = await redis_client.xlen(rejection_store.REJECTED_LOG)
        assert 50 <= length <= 150
        page = await ops.list_rejected(store, limit=1)
        assert page.deliveries[0].event_id == "e9_29"
        assert (await ops.rejected_counts(store))["invalid_signature"] == 300

    async def test_log_is_bounded_in_age(
        self, store: EventStore, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Entries older than the age limit are dropped when the next batch is written."""
        monkeypatch.setattr(rejection_store, "REJECTED_MAX_AGE_MS", 300)
        await store.rejections.write([{"code": "old"}], {"old": 1})
        await asyncio.sleep(0.5)
        await store.rejections.write([{"code": "new"}], {"new": 1})
        page = await ops.list_rejected(store)
        assert ["new"] == [delivery.code for delivery in page.deliveries]

    async def test_recorder_samples_a_flood_and_counts_all(self, store: EventStore) -> None:
        """Beyond its burst the recorder only counts: every rejection is counted by code."""
        recorder = RejectionRecorder(store.rejections, rate=0.0, burst=5)
        scope = {"client": ("203.0.113.9", 5555), "headers": [(b"Webhook-Signature", b"v1,SECRET")]}
        for _ in range(50):
            recorder.note(scope=scope, source="rivya", status=401, code="invalid_signature")
        await recorder.aclose()
        page = await ops.list_rejected(store, limit=100)
        assert len(page.deliveries) == 5
        assert (await ops.rejected_counts(store)) == {"invalid_signature": 50}
        first = page.deliveries[0]
        assert (first.client, first.headers) == ("203.0.113.9", ("webhook-signature",))
        assert "SECRET" not in str(first.to_json())

    async def test_code_filter_and_paging(self, store: EventStore) -> None:
        """--code selects one code (or status); the cursor continues to older entries."""
        await store.rejections.write(
            [
                {"code": "invalid_signature", "status": "401"},
                {"code": "payload_too_large", "status": "413"},
            ]
            * 3,
            {},
        )
        first = await ops.list_rejected(store, code="401", limit=2)
        assert [d.code for d in first.deliveries] == ["invalid_signature"] * 2
        rest = await ops.list_rejected(store, code="401", limit=5, before=first.next_cursor)
        assert [d.code for d in rest.deliveries] == ["invalid_signature"]
        assert await ops.get_rejected(store, first.deliveries[0].id) == first.deliveries[0]
        with pytest.raises(ops.FilterError):
            await ops.get_rejected(store, "1; DROP")


class TestKeyUse:
    async def test_every_verified_delivery_counts_for_its_key(self, store: EventStore) -> None:
        """The accept script counts deliveries per key fingerprint, duplicates included."""
        await store.accept(incoming("evt_1", signing_key="fp_old00000"))
        await store.accept(incoming("evt_1", signing_key="fp_old00000"))  # a redelivery
        await store.accept(incoming("evt_2", signing_key="fp_new11111"))
        usage = await store.key_use(60)
        assert {key: count for key, (count, _) in usage.items()} == {
            ("rivya", "fp_old00000"): 2,
            ("rivya", "fp_new11111"): 1,
        }
        event = await store.load("rivya|evt_2")
        assert event is not None
        assert event.signing_key == "fp_new11111"

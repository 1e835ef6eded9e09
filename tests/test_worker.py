"""The worker: apply, retry with backoff, dead letters, reclaim, release (SPEC §4)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import prometheus_client
import pytest
import redis
import structlog

from receiver.keys import CONSUMER_GROUP, all_shards, member_of
from receiver.models import EventState
from receiver.settings import Settings
from receiver.signing import Scheme, Verifier
from tests.conftest import TEST_SECRET
from tests.factories import base_env, event_body, signed_headers
from tests.helpers import eventually
from tests.redis_proc import RedisProcess
from tests.servers import Downstream, ServiceThread


def state_of(client: redis.Redis, event_id: str) -> dict[bytes, bytes]:
    return client.hgetall(all_shards(1)[0].event(member_of("rivya", event_id)))


def deliver(service: ServiceThread, body: bytes, event_id: str) -> int:
    headers = signed_headers(body, event_id=event_id)
    return httpx.post(f"{service.url}/webhooks/rivya", content=body, headers=headers).status_code


def worker_settings(tmp_path: Path, redis_url: str, sink: str, **extra: str) -> Settings:
    """Settings for a worker test: quick retries (``extra`` overrides any of them)."""
    quick = {
        "RECEIVER_RETRY_BASE": "20ms",
        "RECEIVER_RETRY_MAX": "100ms",
        "RECEIVER_SINK_TIMEOUT": "2s",
    }
    return Settings.from_env(
        base_env(
            tmp_path,
            redis_url,
            RECEIVER_SINK=sink,
            RECEIVER_FORWARD_SECRET=TEST_SECRET,
            **{**quick, **extra},
        )
    )


async def run_worker_until(runtime: Any, client: redis.Redis, event_id: str, state: bytes) -> None:
    """Run one in-process worker until ``event_id`` reaches ``state`` (or 5 s pass)."""
    from receiver.worker import Worker

    assert runtime.sink is not None
    worker = Worker(runtime, runtime.sink, name="survivor")
    task = asyncio.create_task(worker.run())
    for _ in range(100):  # polling Redis: the state changes in another component
        if state_of(client, event_id).get(b"state") == state:
            break
        await asyncio.sleep(0.05)
    await worker.stop(5)
    await task


class TestApply:
    def test_event_is_applied_to_sqlite(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """A delivered event ends applied, its record written, its queue entry gone."""
        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        with ServiceThread(settings, run_worker=True) as service:
            assert deliver(service, event_body(task_id="task_w1"), "msg_w1") == 202
            eventually(lambda: state_of(clean_redis, "msg_w1").get(b"state") == b"applied")
        row = (
            sqlite3.connect(tmp_path / "records.db")
            .execute("SELECT status, last_event_id FROM generations WHERE record_key = 'task_w1'")
            .fetchone()
        )
        assert row == ("succeeded", "msg_w1")
        shard = all_shards(1)[0]
        assert (
            clean_redis.xlen(shard.stream),
            clean_redis.xpending(shard.stream, CONSUMER_GROUP)["pending"],
        ) == (0, 0)

    def test_older_event_ends_stale(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """An event older than the record ends stale; the record keeps the newer state."""
        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        with ServiceThread(settings, run_worker=True) as service:
            deliver(
                service,
                event_body(task_id="task_o", status="succeeded", updated_at="2026-05-10T00:02:00Z"),
                "msg_new",
            )
            eventually(lambda: state_of(clean_redis, "msg_new").get(b"state") == b"applied")
            deliver(
                service,
                event_body(
                    task_id="task_o", status="processing", updated_at="2026-05-10T00:01:00Z"
                ),
                "msg_old",
            )
            eventually(lambda: state_of(clean_redis, "msg_old").get(b"state") == b"stale")
        row = (
            sqlite3.connect(tmp_path / "records.db")
            .execute("SELECT status, last_event_id FROM generations WHERE record_key = 'task_o'")
            .fetchone()
        )
        assert row == ("succeeded", "msg_new")


async def run_worker_until_applied(
    runtime: Any, client: redis.Redis, events: list[str], deliver_all: Callable[[], Any]
) -> dict[str, Any]:
    """Start an in-process worker, await ``deliver_all()``, wait (up to 10 s) until every
    event is applied, stop the worker; returns Redis's commandstats from the start on."""
    from receiver.worker import Worker

    assert runtime.sink is not None
    client.config_resetstat()
    worker = Worker(runtime, runtime.sink)
    task = asyncio.create_task(worker.run())
    await deliver_all()
    for _ in range(200):  # polling Redis: the states change in another component
        if all(state_of(client, e).get(b"state") == b"applied" for e in events):
            break
        await asyncio.sleep(0.05)
    await worker.stop(5)
    await task
    stats: dict[str, Any] = client.info("commandstats")
    return stats


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, redis.Redis]]:
    """A Redis server of this test's own: these tests read server-wide command counts,
    which another test run on a shared server would skew."""
    with RedisProcess(tmp_path / "private-redis") as server:
        client = redis.Redis(port=server.port)
        yield server.url, client
        client.close()


class TestBatches:
    async def test_backlog_is_applied_in_batches(
        self, tmp_path: Path, private_redis: tuple[str, redis.Redis]
    ) -> None:
        """A backlog is loaded, applied and finished a batch at a time, every event applied."""
        from receiver.runtime import Runtime

        redis_url, clean_redis = private_redis

        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        events = [f"msg_batch_{n}" for n in range(40)]
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            with ServiceThread(settings) as service:  # ingest only
                for n, event_id in enumerate(events):
                    assert 202 == deliver(service, event_body(task_id=f"task_b{n}"), event_id)
            stats = await run_worker_until_applied(
                runtime, clean_redis, events, lambda: asyncio.sleep(0)
            )
        finally:
            await runtime.aclose()
        assert [b"applied"] * 40 == [state_of(clean_redis, e).get(b"state") for e in events]
        rows = sqlite3.connect(tmp_path / "records.db").execute("SELECT COUNT(*) FROM generations")
        assert (40,) == rows.fetchone()
        # One finish script and one XACK per batch (at most 8 events with the default
        # concurrency of 16), not one per event.
        finish_calls = stats["cmdstat_xack"]["calls"]
        assert 5 <= finish_calls <= 10, f"{finish_calls} finish calls for 40 events"

    async def test_events_arriving_one_by_one_are_applied_together(
        self,
        tmp_path: Path,
        private_redis: tuple[str, redis.Redis],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """After a read that did not fill a batch the worker waits a moment (the linger), so
        events arriving one by one in that time are applied as one batch."""
        from receiver import worker as worker_module
        from receiver.runtime import Runtime

        redis_url, clean_redis = private_redis

        # Generous: the five deliveries must all land within it on a busy machine.
        monkeypatch.setattr(worker_module, "BATCH_LINGER_SECONDS", 3.0)
        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        events = [f"msg_linger_{n}" for n in range(6)]
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            with ServiceThread(settings) as service:

                async def one_by_one() -> None:
                    for n, event_id in enumerate(events):
                        body = event_body(task_id=f"task_l{n}")
                        await asyncio.to_thread(deliver, service, body, event_id)
                        await asyncio.sleep(0.05)  # alone, each would be its own read

                stats = await run_worker_until_applied(runtime, clean_redis, events, one_by_one)
        finally:
            await runtime.aclose()
        assert [b"applied"] * 6 == [state_of(clean_redis, e).get(b"state") for e in events]
        # The first event alone, then the five that arrived during the linger together.
        assert 2 == stats["cmdstat_xack"]["calls"]

    def test_each_event_of_a_batch_gets_its_own_outcome(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """In one batch one record is accepted, one refused for good, one retried."""
        with Downstream(200, 422, 503, 200) as downstream:
            settings = worker_settings(tmp_path, redis_url, downstream.url)
            events = ["msg_mix_a", "msg_mix_b", "msg_mix_c"]
            with ServiceThread(settings) as service:  # ingest only: the three wait together
                for n, event_id in enumerate(events):
                    deliver(service, event_body(task_id=f"task_mix{n}"), event_id)
            with ServiceThread(settings, run_worker=True):
                eventually(
                    lambda: (
                        sorted(state_of(clean_redis, e).get(b"state", b"") for e in events)
                        == [b"applied", b"applied", b"dead"]
                    )
                )
        outcomes = sorted(
            (stored[b"state"], stored[b"attempts"])
            for stored in (state_of(clean_redis, e) for e in events)
        )
        assert [(b"applied", b"1"), (b"applied", b"2"), (b"dead", b"1")] == outcomes
        assert 4 == len(downstream.requests)


class TestUntrustedNumbers:
    async def test_credits_past_2_63_are_dead_at_once_and_the_next_event_applies(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """An event whose credits overflow SQLite (2^63), stored pending (by a version that did
        not check it at ingest), is dead with invalid_number on its first attempt, and the
        event read with it in the same batch is applied: no writer dies, nobody times out."""
        import hashlib

        from receiver.models import EventState
        from receiver.runtime import Runtime
        from receiver.store import IncomingEvent, now_ms

        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        bodies = {
            "msg_huge": event_body(task_id="task_huge").replace(
                b'"final_credits":1', b'"final_credits":9223372036854775808'
            ),
            "msg_next": event_body(task_id="task_next"),
        }
        assert b"9223372036854775808" in bodies["msg_huge"]
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            for event_id, body in bodies.items():
                await runtime.store.accept(
                    IncomingEvent(
                        source="rivya",
                        event_id=event_id,
                        body=body,
                        body_sha256=hashlib.sha256(body).hexdigest(),
                        encrypted=False,
                        received_ms=now_ms(),
                        signed_ts=int(time.time()),
                        event_type="generation.succeeded",
                        record_key=event_id.replace("msg_", "task_"),
                        state=EventState.PENDING,
                    )
                )
            await run_worker_until(runtime, clean_redis, "msg_next", b"applied")
        finally:
            await runtime.aclose()
        huge, following = state_of(clean_redis, "msg_huge"), state_of(clean_redis, "msg_next")
        assert (b"dead", b"1", b"invalid_number") == (
            huge[b"state"],
            huge[b"attempts"],
            huge[b"reason_code"],
        )
        assert b"final_credits is outside 0..2^53" in huge[b"last_error"]
        assert (b"applied", b"1") == (following[b"state"], following[b"attempts"])
        rows = sqlite3.connect(tmp_path / "records.db").execute(
            "SELECT record_key FROM generations"
        )
        assert [("task_next",)] == rows.fetchall()


class TestRetries:
    def test_outage_is_retried_then_applied(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """Transient failures (503, 429, 500) retry with backoff until the sink recovers."""
        with Downstream(503, 429, 500, 200) as downstream:
            settings = worker_settings(tmp_path, redis_url, downstream.url)
            with ServiceThread(settings, run_worker=True) as service:
                deliver(service, event_body(task_id="task_r"), "msg_retry")
                eventually(lambda: state_of(clean_redis, "msg_retry").get(b"state") == b"applied")
        stored = state_of(clean_redis, "msg_retry")
        assert (stored[b"state"], stored[b"attempts"]) == (b"applied", b"4")
        ids = {headers["webhook-id"] for headers, _ in downstream.requests}
        assert {"msg_retry"} == ids, "every retry carries the same webhook-id"
        verifier = Verifier(Scheme.STANDARD, [TEST_SECRET])
        headers, body = downstream.requests[-1]
        verifier.verify(headers, body, time.time())
        assert orjson.loads(body)["record_key"] == "task_r"
        history = [
            orjson.loads(item)
            for item in clean_redis.lrange(all_shards(1)[0].history("rivya|msg_retry"), 0, -1)
        ]
        assert [h["state"] for h in history] == [
            "pending",
            "pending",
            "pending",
            "pending",
            "applied",
        ]

    def test_permanent_failure_is_dead_at_once(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """A 4xx from the sink is permanent: dead after one attempt, with the reason kept."""
        with Downstream(422) as downstream:
            settings = worker_settings(tmp_path, redis_url, downstream.url)
            with ServiceThread(settings, run_worker=True) as service:
                deliver(service, event_body(), "msg_perm")
                eventually(lambda: state_of(clean_redis, "msg_perm").get(b"state") == b"dead")
        stored = state_of(clean_redis, "msg_perm")
        assert stored[b"attempts"] == b"1"
        assert b"422" in stored[b"last_error"]
        assert b"sink_rejected" == stored[b"reason_code"]
        assert len(downstream.requests) == 1
        assert clean_redis.zscore(all_shards(1)[0].dead, "rivya|msg_perm") is not None

    def test_exhausted_retries_are_dead(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """When every attempt fails transiently the event is dead after max attempts."""
        with Downstream(503) as downstream:
            settings = worker_settings(
                tmp_path, redis_url, downstream.url, RECEIVER_MAX_ATTEMPTS="3"
            )
            with ServiceThread(settings, run_worker=True) as service:
                deliver(service, event_body(), "msg_exhaust")
                eventually(lambda: state_of(clean_redis, "msg_exhaust").get(b"state") == b"dead")
        stored = state_of(clean_redis, "msg_exhaust")
        assert (stored[b"attempts"], len(downstream.requests)) == (b"3", 3)
        assert stored[b"last_error"].startswith(b"gave up after 3 attempts")
        assert b"retries_exhausted" == stored[b"reason_code"]


class TestReclaim:
    async def test_entry_of_dead_consumer_is_reclaimed(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """An entry read by a consumer that died is applied by another after the timeout."""
        from receiver.runtime import Runtime

        settings = worker_settings(
            tmp_path,
            redis_url,
            f"sqlite:///{tmp_path}/records.db",
            RECEIVER_VISIBILITY_TIMEOUT="300ms",
        )
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            with ServiceThread(settings) as service:  # ingest only
                deliver(service, event_body(task_id="task_claim"), "msg_claim")
            taken = await runtime.store.read("crashed-consumer", 10, 100)
            assert [entry.member for entry in taken] == ["rivya|msg_claim"]  # and never finished
            await run_worker_until(runtime, clean_redis, "msg_claim", b"applied")
        finally:
            await runtime.aclose()
        assert state_of(clean_redis, "msg_claim")[b"state"] == b"applied"


class TestLiveness:
    async def test_healthz_fails_when_the_in_process_worker_is_gone(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """Liveness turns 503 once serve's worker has stopped, so the process gets restarted."""
        from receiver.app import create_app

        settings = worker_settings(tmp_path, redis_url, "log:")
        app = create_app(settings, run_worker=True)
        transport = httpx.ASGITransport(app=app)
        async with (
            app._starlette.router.lifespan_context(app._starlette),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            alive = (await client.get("/healthz")).status_code
            assert app.worker is not None
            await app.worker.stop(1)
            await asyncio.sleep(0.1)
            dead = await client.get("/healthz")
        assert (200, 503, {"error": "worker_stopped"}) == (alive, dead.status_code, dead.json())


class TestPoisonEvents:
    async def test_entry_abandoned_too_often_is_dead(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """An entry workers keep taking and never finishing ends dead instead of looping."""
        from receiver.runtime import Runtime

        settings = worker_settings(
            tmp_path, redis_url, "log:", RECEIVER_VISIBILITY_TIMEOUT="200ms",
            RECEIVER_MAX_ATTEMPTS="2",
        )  # fmt: skip
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            with ServiceThread(settings) as service:  # ingest only
                deliver(service, event_body(task_id="task_poison"), "msg_poison")
            await runtime.store.read("crashed-1", 10, 100)
            for crashed in ("crashed-2", "crashed-3"):  # each "worker" died holding it
                [claimed] = await runtime.store.reclaim(crashed, 0, 10)
            assert 3 == claimed.deliveries
            await run_worker_until(runtime, clean_redis, "msg_poison", b"dead")
        finally:
            await runtime.aclose()
        stored = state_of(clean_redis, "msg_poison")
        assert b"dead" == stored[b"state"]
        assert stored[b"last_error"].startswith(b"abandoned: taken 4 times")
        assert b"poison" == stored[b"reason_code"]
        shard = all_shards(1)[0]
        assert 0 == clean_redis.xpending(shard.stream, CONSUMER_GROUP)["pending"]

    async def test_an_entry_taken_back_too_often_after_failures_is_dead(
        self, tmp_path: Path
    ) -> None:
        """The worker's own entries taken back after a Redis failure still count their
        deliveries: one past the limit is dead as poison instead of looping."""
        from receiver.runtime import Runtime
        from receiver.worker import Worker

        server = RedisProcess(tmp_path / "redis").start()
        client = redis.Redis(port=server.port)
        try:
            settings = worker_settings(tmp_path, server.url, "log:", RECEIVER_MAX_ATTEMPTS="3")
            runtime = await Runtime.open(settings, with_sink=True)
            try:
                with ServiceThread(settings) as service:  # ingest only
                    deliver(service, event_body(task_id="task_loop"), "msg_loop")
                await runtime.store.read("looping", 10, 100)
                for _ in range(2):  # taken back twice already: handed out three times
                    await runtime.store.held_by("looping")
                worker = Worker(runtime, runtime.sink, name="looping")  # type: ignore[arg-type]
                task = asyncio.create_task(worker.run())
                await asyncio.sleep(0.3)
                # A Redis failure (its connections dropped, on this test's own server): the
                # worker takes back what it holds.
                client.client_kill_filter(_type="normal", skipme=True)
                for _ in range(200):  # polling Redis: the state changes in the worker
                    if state_of(client, "msg_loop").get(b"state") == b"dead":
                        break
                    await asyncio.sleep(0.05)
                await worker.stop(5)
                await task
            finally:
                await runtime.aclose()
            stored = state_of(client, "msg_loop")
        finally:
            client.close()
            server.stop()
        assert (b"dead", b"poison") == (stored[b"state"], stored[b"reason_code"])
        assert stored[b"last_error"].startswith(b"abandoned: taken 4 times")


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of this process's default Prometheus registry (0 when it has none yet)."""
    return prometheus_client.REGISTRY.get_sample_value(name, labels or {}) or 0.0


class TestRetryBudget:
    def test_an_outage_longer_than_the_old_count_budget_is_not_dead(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """An event failing far more often than the old budget of 8 attempts stays pending
        within its time budget, and is applied once the sink answers again."""
        with Downstream(503) as downstream:
            settings = worker_settings(
                tmp_path, redis_url, downstream.url, RECEIVER_CIRCUIT_FAILURES="1000"
            )
            with ServiceThread(settings, run_worker=True) as service:
                deliver(service, event_body(task_id="task_long"), "msg_long")
                eventually(
                    lambda: int(state_of(clean_redis, "msg_long").get(b"attempts", 0)) >= 12,
                    what="a dozen failed attempts",
                )
                assert b"pending" == state_of(clean_redis, "msg_long")[b"state"]
                downstream.statuses = [200]
                eventually(lambda: state_of(clean_redis, "msg_long").get(b"state") == b"applied")
        stored = state_of(clean_redis, "msg_long")
        assert (b"applied", b"") == (stored[b"state"], stored[b"reason_code"])
        assert int(stored[b"attempts"]) > 12
        assert 0 == clean_redis.zcard(all_shards(1)[0].dead)

    def test_a_spent_time_budget_is_dead(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """Once RECEIVER_RETRY_FOR has passed since its first failure, the event is dead
        with reason_code retries_exhausted, after as many attempts as fit in the budget."""
        with Downstream(503) as downstream:
            settings = worker_settings(
                tmp_path, redis_url, downstream.url, RECEIVER_RETRY_FOR="1s",
                RECEIVER_CIRCUIT_FAILURES="1000",
            )  # fmt: skip
            with ServiceThread(settings, run_worker=True) as service:
                deliver(service, event_body(task_id="task_budget"), "msg_budget")
                eventually(lambda: state_of(clean_redis, "msg_budget").get(b"state") == b"dead")
        stored = state_of(clean_redis, "msg_budget")
        assert b"retries_exhausted" == stored[b"reason_code"]
        assert stored[b"last_error"].startswith(b"gave up after")
        # Due retries are queued by housekeeping every half second: 3 or more in 1 s.
        assert int(stored[b"attempts"]) >= 3
        assert int(stored[b"updated_ms"]) - int(stored[b"first_failed_ms"]) >= 1000
        assert len(downstream.requests) == int(stored[b"attempts"])


class TestCircuitBreaker:
    def test_serve_exports_the_sink_state_and_keeps_accepting(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """serve's in-process worker opens its circuit on a failing sink and shows it on
        /metrics (receiver_sink_circuit_open 1, receiver_sink_up 0) while ingest answers
        202; events queued behind the open circuit are not even read."""
        with Downstream(503) as downstream:
            settings = worker_settings(
                tmp_path, redis_url, downstream.url, RECEIVER_CIRCUIT_FAILURES="2",
                RECEIVER_RETRY_MAX="300ms",
            )  # fmt: skip
            with ServiceThread(settings, run_worker=True, admin=True) as service:
                for n in range(2):
                    assert 202 == deliver(service, event_body(task_id=f"task_c{n}"), f"msg_c{n}")
                eventually(lambda: metric("receiver_sink_circuit_open") == 1, what="circuit open")
                waiting = [f"msg_wait_{n}" for n in range(5)]
                for event_id in waiting:
                    assert 202 == deliver(service, event_body(), event_id)
                exported = httpx.get(f"{service.admin_url}/metrics").text
                time.sleep(1.0)  # several probe intervals
                attempts = [int(state_of(clean_redis, e)[b"attempts"]) for e in waiting]
                downstream.statuses = [200]
                eventually(lambda: metric("receiver_sink_circuit_open") == 0, what="circuit closed")
                eventually(
                    lambda: all(state_of(clean_redis, e)[b"state"] == b"applied" for e in waiting)
                )
        assert "receiver_sink_circuit_open 1.0" in exported
        assert "receiver_sink_up 0.0" in exported
        assert [0] * 5 == attempts, "events behind the open circuit were attempted"
        assert [b"1"] * 5 == [state_of(clean_redis, e)[b"attempts"] for e in waiting]


class TestLostEvents:
    async def test_an_event_gone_within_its_retention_is_dead_lost(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """A queued event whose stored hash vanished (as eviction does) ends dead with
        reason_code lost: logged at error level with its id, counted, listed with the dead
        events, and not replayable (its body is gone)."""
        from receiver.ops.events import EventFilter, list_events
        from receiver.runtime import Runtime

        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        runtime = await Runtime.open(settings, with_sink=True)
        try:
            with ServiceThread(settings) as service:  # ingest only
                assert 202 == deliver(service, event_body(task_id="task_lost"), "msg_lost")
            clean_redis.delete(all_shards(1)[0].event(member_of("rivya", "msg_lost")))
            before = metric("receiver_events_lost_total", {"source": "rivya"})
            with structlog.testing.capture_logs() as logs:
                await run_worker_until(runtime, clean_redis, "msg_lost", b"dead")
            listed = await list_events(runtime.store, EventFilter(state=EventState.DEAD))
            replayed = await runtime.store.requeue(member_of("rivya", "msg_lost"), by="test")
        finally:
            await runtime.aclose()
        stored = state_of(clean_redis, "msg_lost")
        assert (b"dead", b"lost") == (stored[b"state"], stored[b"reason_code"])
        assert stored[b"last_error"].startswith(b"lost:")
        assert 0 < clean_redis.pttl(all_shards(1)[0].event("rivya|msg_lost")) <= 30 * 86400_000
        assert before + 1 == metric("receiver_events_lost_total", {"source": "rivya"})
        [line] = [entry for entry in logs if entry["event"] == "event_lost"]
        assert ("error", "msg_lost", "lost") == (
            line["log_level"],
            line["event_id"],
            line["reason_code"],
        )
        assert [("msg_lost", "lost")] == [(e.event_id, e.reason_code) for e in listed]
        assert replayed is False
        assert 0 == clean_redis.xlen(all_shards(1)[0].stream)

    async def test_an_event_past_its_retention_is_expired_not_lost(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """A queued event whose hash is gone because its retention ended is counted
        expired: no tombstone, no lost count, and the entry is acknowledged."""
        from receiver.runtime import Runtime
        from receiver.worker import Worker

        settings = worker_settings(tmp_path, redis_url, f"sqlite:///{tmp_path}/records.db")
        runtime = await Runtime.open(settings, with_sink=True)
        shard = all_shards(1)[0]
        try:
            with ServiceThread(settings) as service:  # ingest only
                assert 202 == deliver(service, event_body(task_id="task_old"), "msg_old")
                assert 202 == deliver(service, event_body(task_id="task_new"), "msg_new")
            # As Redis leaves an event read after its retention: the hash expired, and the
            # index says it was received long ago (or, trimmed by housekeeping, no more).
            clean_redis.delete(shard.event("rivya|msg_old"))
            clean_redis.zadd(shard.index, {"rivya|msg_old": 1})
            before = metric("receiver_events_lost_total", {"source": "rivya"})
            assert runtime.sink is not None
            worker = Worker(runtime, runtime.sink)
            with structlog.testing.capture_logs() as logs:
                task = asyncio.create_task(worker.run())
                for _ in range(200):  # polling Redis: the entry is acknowledged by the worker
                    if clean_redis.xlen(shard.stream) == 0:
                        break
                    await asyncio.sleep(0.05)
                await worker.stop(5)
                await task
        finally:
            await runtime.aclose()
        assert ["event_expired"] == [
            entry["event"] for entry in logs if entry["event"] in ("event_expired", "event_lost")
        ]
        assert (before, 0, 0) == (
            metric("receiver_events_lost_total", {"source": "rivya"}),
            clean_redis.exists(shard.event("rivya|msg_old")),
            clean_redis.xlen(shard.stream),
        )


class TestConsumers:
    async def test_consumers_gone_and_holding_nothing_are_removed(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """Housekeeping removes consumers idle past the threshold with nothing pending; one
        that still holds an entry, and the worker itself (idle between events), stay."""
        from receiver.runtime import Runtime
        from receiver.worker import Worker

        settings = worker_settings(tmp_path, redis_url, "log:")
        runtime = await Runtime.open(settings, with_sink=True)
        stream = all_shards(1)[0].stream

        def names() -> set[bytes]:
            return {c["name"] for c in clean_redis.xinfo_consumers(stream, CONSUMER_GROUP)}

        try:
            with ServiceThread(settings) as service:  # ingest only
                deliver(service, event_body(task_id="task_held"), "msg_held")
                assert [] != await runtime.store.read("gone-holding", 10, 100)
                clean_redis.xgroup_createconsumer(stream, CONSUMER_GROUP, "gone-empty")
                worker = Worker(
                    runtime, runtime.sink, name="housekeeper",  # type: ignore[arg-type]
                    consumer_max_idle_seconds=0.2, consumer_sweep_seconds=0.1,
                )  # fmt: skip
                task = asyncio.create_task(worker.run())
                deliver(service, event_body(task_id="task_mine"), "msg_mine")
                await asyncio.sleep(0.3)  # "gone-empty" idle past the threshold
                for _ in range(100):
                    if b"gone-empty" not in names():
                        break
                    await asyncio.sleep(0.05)
                # More sweeps while the worker's own blocking reads leave it idle past 0.2 s.
                await asyncio.sleep(1.0)
                remaining = names()
                applied = state_of(clean_redis, "msg_mine").get(b"state")
                await worker.stop(5)
                await task
        finally:
            await runtime.aclose()
        assert {b"gone-holding", b"housekeeper"} == remaining
        assert b"applied" == applied

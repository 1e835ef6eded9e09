"""Crash safety and scale-out with real processes: SIGKILL mid-burst, several workers."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from receiver.keys import all_shards, member_of
from receiver.settings import Settings
from tests.conftest import free_port, wait_for_port
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow
STATUSES = [("queued", "00:00:10"), ("processing", "00:00:20"), ("succeeded", "00:01:00")]


def task_events(tasks: int) -> list[tuple[str, bytes, str]]:
    """Three events per task (queued, processing, succeeded), shuffled across tasks."""
    events = []
    for n in range(tasks):
        for status, clock in STATUSES:
            gen = generation(
                task_id=f"task_{n:04d}", status=status, updated_at=f"2026-05-10T{clock}.000Z"
            )
            event_id = f"msg_{n:04d}_{status}"
            events.append(
                (event_id, orjson.dumps(envelope(gen, event_id=f"evt_{event_id}")), status)
            )
    random.Random(7).shuffle(events)
    return events


class PersistentSender:
    """Sends each event until it gets a 2xx, like Rivya's retrying delivery system."""

    def __init__(self, url_of: callable) -> None:  # type: ignore[valid-type]
        self.url_of = url_of
        self.acknowledged: set[str] = set()
        self.lock = threading.Lock()

    def send(self, event: tuple[str, bytes, str]) -> None:
        event_id, body, _ = event
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                response = httpx.post(
                    self.url_of(),
                    content=body,
                    headers=signed_headers(body, event_id=event_id),
                    timeout=5,
                )
                if response.status_code in (200, 202):
                    with self.lock:
                        self.acknowledged.add(event_id)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{event_id} never acknowledged")


def wait_for_final_states(
    client: redis.Redis, event_ids: set[str], timeout: float = 90
) -> dict[str, bytes]:
    shard = all_shards(1)[0]
    deadline = time.monotonic() + timeout
    while True:
        with client.pipeline(transaction=False) as pipe:
            for event_id in sorted(event_ids):
                pipe.hget(shard.event(member_of("rivya", event_id)), "state")
            states = dict(zip(sorted(event_ids), pipe.execute(), strict=True))
        if all(state in (b"applied", b"stale") for state in states.values()):
            return states
        if time.monotonic() > deadline:
            stuck = Counter(states.values())
            raise AssertionError(f"events not final after {timeout}s: {stuck}")
        time.sleep(0.2)


def test_sigkill_during_burst_loses_nothing(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """SIGKILL twice mid-burst: every acknowledged event is applied, every record is final."""
    env = base_env(
        tmp_path, redis_url, RECEIVER_VISIBILITY_TIMEOUT="1s", RECEIVER_LOG_LEVEL="warning"
    )
    service = ServiceProcess(env, tmp_path / "serve.log").start()
    sender = PersistentSender(lambda: f"{service.url}/webhooks/rivya")
    events = task_events(100)  # 300 distinct events
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(sender.send, event) for event in events]
        for kill_at in (len(events) // 3, 2 * len(events) // 3):
            while len(sender.acknowledged) < kill_at:
                time.sleep(0.01)
            service.kill()
            service = ServiceProcess(env, tmp_path / "serve.log", port=service.port).start()
        for future in futures:
            future.result()
    try:
        states = wait_for_final_states(clean_redis, sender.acknowledged)
    finally:
        service.stop()
    assert len(sender.acknowledged) == len(events)
    assert set(states.values()) <= {b"applied", b"stale"}
    rows = (
        sqlite3.connect(tmp_path / "records.db")
        .execute("SELECT record_key, status, last_event_id FROM generations ORDER BY record_key")
        .fetchall()
    )
    assert [(f"task_{n:04d}", "succeeded", f"msg_{n:04d}_succeeded") for n in range(100)] == rows
    assert all(states[f"msg_{n:04d}_succeeded"] == b"applied" for n in range(100))


def test_two_worker_processes_apply_each_event_once(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """serve --no-worker plus two worker processes: every event applied exactly once."""
    env = base_env(tmp_path, redis_url, RECEIVER_LOG_LEVEL="info")
    ingest = ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker").start()
    workers = [
        ServiceProcess(env, tmp_path / f"worker{n}.log", "worker").start(wait=False)
        for n in range(2)
    ]
    try:
        time.sleep(1.5)  # both workers connected and blocking on the queue
        events = [
            (f"msg_w_{n}", orjson.dumps(envelope(generation(task_id=f"task_w_{n}"))), "succeeded")
            for n in range(200)
        ]
        sender = PersistentSender(lambda: f"{ingest.url}/webhooks/rivya")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(sender.send, events))
        states = wait_for_final_states(clean_redis, {event_id for event_id, _, _ in events})
    finally:
        for process in (*workers, ingest):
            process.stop()
    assert {b"applied"} == set(states.values())
    processed = Counter()
    per_worker = []
    for worker in workers:
        ids = re.findall(
            r'"event_id":"(msg_w_\d+)"[^\n]*"event":"event_processed"', worker.output()
        )
        per_worker.append(len(ids))
        processed.update(ids)
    assert {event_id: 1 for event_id, _, _ in events} == dict(processed)
    assert all(count > 0 for count in per_worker), f"one worker did nothing: {per_worker}"
    count = (
        sqlite3.connect(tmp_path / "records.db")
        .execute("SELECT count(*) FROM generations")
        .fetchone()
    )
    assert count == (200,)


def test_sigterm_drains_and_keeps_every_acknowledged_event(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """SIGTERM mid-burst: readiness 503 while draining, 2xx events stored, exit 0 in time."""
    env = base_env(
        tmp_path,
        redis_url,
        RECEIVER_SHUTDOWN_DRAIN="1s",
        RECEIVER_SHUTDOWN_TIMEOUT="5s",
        RECEIVER_LOG_LEVEL="warning",
    )
    service = ServiceProcess(env, tmp_path / "serve.log").start()
    acknowledged: list[str] = []
    readiness: list[int] = []
    stop_sending = threading.Event()

    def burst(worker: int) -> None:
        with httpx.Client(base_url=service.url, timeout=5) as client:
            n = 0
            while not stop_sending.is_set():
                n += 1
                event_id = f"msg_term_{worker}_{n}"
                body = orjson.dumps(envelope(generation()))
                try:
                    response = client.post(
                        "/webhooks/rivya",
                        content=body,
                        headers=signed_headers(body, event_id=event_id),
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code in (200, 202):
                    acknowledged.append(event_id)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(burst, n) for n in range(4)]
        time.sleep(1.0)
        signalled = time.monotonic()
        service.signal(signal.SIGTERM)
        with httpx.Client(base_url=service.url, timeout=2) as probe:
            while time.monotonic() - signalled < 0.8:
                try:
                    readiness.append(probe.get("/readyz").status_code)
                except httpx.HTTPError:
                    break
                time.sleep(0.05)
        code = service.wait(10)
        elapsed = time.monotonic() - signalled
        stop_sending.set()
        for future in futures:
            future.result()
    assert 503 in readiness, f"readiness never reported draining: {readiness}"
    assert (code, elapsed < 1 + 5 + 3) == (0, True)
    assert len(acknowledged) > 10
    shard = all_shards(1)[0]
    with clean_redis.pipeline(transaction=False) as pipe:
        for event_id in acknowledged:
            pipe.exists(shard.event(member_of("rivya", event_id)))
        assert all(pipe.execute())


def test_sigterm_releases_the_event_in_hand(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """A worker stopped while its sink call hangs hands the event back; another applies it."""
    from tests.servers import Downstream

    shard = all_shards(1)[0]
    with Downstream(200, first_delay=30) as downstream:
        env = base_env(
            tmp_path, redis_url, RECEIVER_SINK=downstream.url,
            RECEIVER_FORWARD_SECRET=signed_secret(), RECEIVER_SHUTDOWN_TIMEOUT="1s",
            RECEIVER_SINK_TIMEOUT="60s", RECEIVER_LOG_LEVEL="info",
        )  # fmt: skip
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as ingest:
            worker = ServiceProcess(env, tmp_path / "worker.log", "worker").start(wait=False)
            body = orjson.dumps(envelope(generation(task_id="task_release")))
            headers = signed_headers(body, event_id="msg_release")
            assert (
                202
                == httpx.post(
                    f"{ingest.url}/webhooks/rivya", content=body, headers=headers
                ).status_code
            )
            deadline = time.monotonic() + 15
            while not downstream.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert downstream.requests, "the worker never called the sink"
            started = time.monotonic()
            worker.signal(signal.SIGTERM)
            code = worker.wait(10)
            stopped_in = time.monotonic() - started
            pending = clean_redis.xpending(shard.stream, "workers")["pending"]
            queued = clean_redis.xlen(shard.stream)
            state = clean_redis.hget(shard.event("rivya|msg_release"), "state")
            second = ServiceProcess(env, tmp_path / "worker2.log", "worker").start(wait=False)
            try:
                final = wait_for_final_states(clean_redis, {"msg_release"}, timeout=20)
            finally:
                second.stop()
    assert (0, True) == (code, stopped_in < 5)
    assert (0, 1, b"pending") == (pending, queued, state), "released back to the queue"
    assert {"msg_release": b"applied"} == final
    assert "event_released" in worker.output()


def signed_secret() -> str:
    from tests.conftest import TEST_SECRET

    return TEST_SECRET


# --- recovery (issue 13) ---------------------------------------------------------------


def worker_state(port: int) -> tuple[float, int, list[str]]:
    """A worker process's view: receiver_sink_circuit_open, /readyz status, what it names."""
    exported = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    [circuit] = [
        float(line.split()[1])
        for line in exported.splitlines()
        if line.startswith("receiver_sink_circuit_open ")
    ]
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    return circuit, ready.status_code, ready.json().get("failed", [])


def send_all(url: str, events: list[tuple[str, bytes]]) -> None:
    """Deliver each (event id, body); every one must be acknowledged."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for event_id, body in events:
            headers = signed_headers(body, event_id=event_id)
            response = client.post("/webhooks/rivya", content=body, headers=headers)
            assert response.status_code == 202, response.text


def fields_of(client: redis.Redis, event_ids: list[str], name: str) -> list[bytes | None]:
    shard = all_shards(1)[0]
    with client.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hget(shard.event(member_of("rivya", event_id)), name)
        return pipe.execute()


def new_events(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}_{n}", orjson.dumps(envelope(generation(task_id=f"task_{prefix}_{n}"))))
        for n in range(count)
    ]


def test_sink_outage_dead_letters_nothing_and_the_circuit_holds_events_back(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """A sink down for the scaled-down equivalent of minutes (many times the old 8-attempt
    budget): nothing goes dead; the worker's circuit opens (metric, readiness naming the
    sink, log line) although the downstream still answers HEAD; events that arrive behind
    it are not even attempted; when the sink is back everything is applied, each waiting
    event at its first attempt, and the circuit closes."""
    from tests.servers import Downstream

    with Downstream(200) as downstream:
        metrics_port = free_port()
        env = base_env(
            tmp_path, redis_url, RECEIVER_SINK=downstream.url,
            RECEIVER_FORWARD_SECRET=signed_secret(), RECEIVER_RETRY_BASE="50ms",
            RECEIVER_RETRY_MAX="200ms", RECEIVER_CIRCUIT_FAILURES="3", RECEIVER_LOG_LEVEL="info",
        )  # fmt: skip
        ingest = ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker").start()
        worker = ServiceProcess(
            env, tmp_path / "worker.log", "worker", "--metrics-port", str(metrics_port)
        ).start(wait=False)
        try:
            wait_for_port(metrics_port, 30)
            before = new_events("before", 5)
            send_all(ingest.url, before)
            wait_for_final_states(clean_redis, {e for e, _ in before}, timeout=30)

            downstream.statuses = [503]
            outage_started = time.monotonic()
            failing = new_events("failing", 10)
            send_all(ingest.url, failing)
            eventually(lambda: worker_state(metrics_port)[0] == 1, 30, "the circuit to open")
            assert (1.0, 503, ["sink"]) == worker_state(metrics_port)
            waiting = new_events("waiting", 10)
            send_all(ingest.url, waiting)
            posts_when_open = len(downstream.requests)
            samples = []
            while time.monotonic() - outage_started < OUTAGE_SECONDS:
                samples.append(worker_state(metrics_port)[0])
                assert 0 == clean_redis.zcard(all_shards(1)[0].dead), "an event went dead"
                time.sleep(0.2)
            attempts_behind = fields_of(clean_redis, [e for e, _ in waiting], "attempts")
            posts_while_open = len(downstream.requests) - posts_when_open

            downstream.statuses = [200]
            everything = {e for e, _ in before + failing + waiting}
            states = wait_for_final_states(clean_redis, everything, timeout=30)
            eventually(lambda: worker_state(metrics_port)[:2] == (0, 200), 30, "closed, ready")
        finally:
            worker.stop()
            ingest.stop()
    assert {b"applied"} == set(states.values())
    assert {1.0} == set(samples), "the circuit closed during the outage"
    assert [b"0"] * len(waiting) == attempts_behind, "events behind the circuit were attempted"
    assert [b"1"] * len(waiting) == fields_of(clean_redis, [e for e, _ in waiting], "attempts")
    # Probes only: without the circuit, 20 events retrying every 0.1-0.2 s would have
    # sent several hundred requests in this time.
    assert posts_while_open < 60, posts_while_open
    output = worker.output()
    assert '"event":"sink_circuit_opened"' in output
    assert '"event":"sink_circuit_closed"' in output
    assert '"probe":"apply"' in output


OUTAGE_SECONDS = 6.0


def test_redis_blip_resumes_held_events_within_seconds(tmp_path: Path) -> None:
    """Redis killed (SIGKILL, AOF fsync always) while the worker's sink calls are in flight
    and restarted: the events it held are applied within seconds of Redis's return, not
    after the visibility timeout (60 s here); the worker's readiness names redis meanwhile."""
    from tests.redis_proc import RedisProcess
    from tests.servers import Downstream, ServiceThread

    server = RedisProcess(tmp_path / "redis", appendonly=True, appendfsync="always").start()
    try:
        with Downstream(200) as downstream:
            metrics_port = free_port()
            env = base_env(
                tmp_path, server.url, RECEIVER_SINK=downstream.url,
                RECEIVER_FORWARD_SECRET=signed_secret(), RECEIVER_VISIBILITY_TIMEOUT="60s",
                RECEIVER_LOG_LEVEL="info",
            )  # fmt: skip
            held = new_events("held", 5)
            with ServiceThread(Settings.from_env(env)) as service:  # ingest only
                send_all(service.url, held)
            downstream.delay = 1.5  # the sink answers after Redis is gone
            worker = ServiceProcess(
                env, tmp_path / "worker.log", "worker", "--metrics-port", str(metrics_port)
            ).start(wait=False)
            try:
                eventually(lambda: len(downstream.requests) >= 5, 30, "the sink calls")
                server.kill()
                eventually(lambda: worker_state(metrics_port)[2] == ["redis"], 15, "not ready")
                time.sleep(2.0)  # the sink has answered; recording the outcomes failed
                downstream.delay = 0
                server.start()
                restarted = time.monotonic()
                client = redis.Redis(port=server.port)
                states = wait_for_final_states(client, {e for e, _ in held}, timeout=50)
                resumed_in = time.monotonic() - restarted
            finally:
                worker.stop()
    finally:
        server.stop()
    assert {b"applied"} == set(states.values())
    assert resumed_in < 15, f"held events waited {resumed_in:.1f}s"
    assert '"event":"redis_recovered"' in worker.output()
    # Each was applied twice, harmlessly: the same webhook-id both times.
    ids = Counter(headers["webhook-id"] for headers, _ in downstream.requests)
    assert {event_id: 2 for event_id, _ in held} == dict(ids)

"""`receiver reconcile` as real processes: killed with SIGKILL mid-batch it loses no
watch; two of them never poll one task at once; a refused key does not loop (issue 16)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from receiver.keys import member_of
from receiver.reconcile.events import poll_event_id
from receiver.settings import POLL_SOURCE, Settings
from tests.conftest import free_port, wait_for_port
from tests.factories import envelope, generation, signed_headers
from tests.fake_rivya import FakeRivya, Reply
from tests.helpers import eventually
from tests.reconcilers import API_KEY, cli, metric, reconcile_env, watched
from tests.servers import ServiceProcess, ServiceThread

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[FakeRivya]:
    with FakeRivya() as server:
        yield server


def start_reconciler(
    env: dict[str, str], log: Path, metrics_port: int | None = None
) -> ServiceProcess:
    args = ["reconcile"]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    process = ServiceProcess(env, log, *args).start()
    eventually(lambda: "reconciler_started" in process.output(), 30, "the reconciler to start")
    return process


def stored_poll(client: redis.Redis, task_id: str, status: str, updated_at: str) -> bool:
    from receiver.keys import keys_for

    member = member_of(POLL_SOURCE, poll_event_id(task_id, updated_at, status))
    return bool(client.exists(keys_for(member, 1).event(member)))


def test_sigkill_mid_batch_loses_no_watch(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
) -> None:
    """A reconciler killed with SIGKILL while its requests are in flight leaves every task
    watched; once the leases run out another reconciler polls each of them to the end."""
    tasks = [f"task_kill_{n:02d}" for n in range(12)]  # fewer than a reconciler's 16 in flight
    final = "2026-05-10T00:01:00.000Z"
    for task_id in tasks:
        done = generation(task_id, "succeeded", final)
        # The first answer takes longer than a lease: only the kill can end that round.
        fake.script(task_id, Reply.of(done, delay=8), Reply.of(done))
    env = reconcile_env(tmp_path, redis_url, fake)
    assert 0 == cli(env, "track", *tasks).returncode
    first = start_reconciler(env, tmp_path / "first.log")
    try:
        eventually(lambda: fake.count() == len(tasks), 20, "every task's request in flight")
    finally:
        first.kill()
    # Nothing was answered, and nothing is lost: every task is still watched.
    assert set(tasks) == set(watched(clean_redis))
    killed_at = time.monotonic()
    second = start_reconciler(env, tmp_path / "second.log")
    try:
        eventually(lambda: watched(clean_redis) == {}, 30, "the second reconciler to finish")
    finally:
        second.stop()
    assert all(stored_poll(clean_redis, task, "succeeded", final) for task in tasks)
    retried = [s for s in fake.snapshot() if s.started > killed_at]
    assert sorted(tasks) == sorted(s.task_id for s in retried), "each polled once more"
    # Leases last 5 s from the claim (renewed every 5/3 s while it lived): none ran out
    # sooner than about 3 s after the kill, however fast the second process started.
    assert min(s.started for s in retried) - killed_at >= 2.5, "only after the leases ran out"


def test_two_reconcilers_never_poll_one_task_at_once(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
) -> None:
    """Two reconciler processes, slow answers and webhooks moving the tasks meanwhile: the
    fake never sees two requests for one task in flight together, and both processes poll."""
    tasks = [f"task_pair_{n:02d}" for n in range(30)]
    stamps = [f"2026-05-10T00:00:{second:02d}.000Z" for second in range(10, 60, 5)]
    for task_id in tasks:
        # Slow answers (leases get renewed) of a task that keeps processing.
        replies = [
            Reply.of(generation(task_id, "processing", stamp), delay=random.uniform(0.05, 0.4))
            for stamp in stamps
        ]
        fake.script(task_id, *replies)
    env = reconcile_env(tmp_path, redis_url, fake)
    worker_only = Settings.from_env({**env, "RECEIVER_RIVYA_API_KEY": ""})
    assert 0 == cli(env, "track", *tasks).returncode
    one = start_reconciler(env, tmp_path / "one.log")
    two = start_reconciler(env, tmp_path / "two.log")
    try:
        with ServiceThread(worker_only, run_worker=True) as service, httpx.Client() as client:
            deadline = time.monotonic() + 6
            rng = random.Random(4)
            sent = 0
            while time.monotonic() < deadline:
                # Processing webhooks land while the tasks are held: the worker moves their
                # watch (progress) without ever cutting a lease short.
                task_id = rng.choice(tasks)
                gen = generation(task_id, "processing", f"2026-05-10T00:00:0{sent % 10}.500Z")
                body = orjson.dumps(envelope(gen))
                headers = signed_headers(body)
                assert (
                    202
                    == client.post(
                        f"{service.url}/webhooks/rivya", content=body, headers=headers
                    ).status_code
                )
                sent += 1
                time.sleep(0.05)
    finally:
        one.stop()
        two.stop()
    per_task = {task: len(fake.requests_for(task)) for task in tasks}
    assert min(per_task.values()) >= 2, f"every task polled again and again: {per_task}"
    doubled = {task: n for task, n in fake.max_in_flight.items() if n > 1}
    assert {} == doubled, "a task was polled twice at once"
    for process in (one, two):
        assert process.output().count('"reconcile_polled"') >= 5, "both processes polled"


def test_a_refused_key_does_not_loop(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
) -> None:
    """401 for every request: the reconciler stops after the first answers, logs one error
    line, exports receiver_reconcile_key_refused 1, and never prints the key."""
    tasks = [f"task_401_{n}" for n in range(10)]
    fake.override = Reply(401, {"error": "invalid api key", "echo": f"Bearer {API_KEY}"})
    env = reconcile_env(tmp_path, redis_url, fake)
    assert 0 == cli(env, "track", *tasks).returncode
    port = free_port()
    process = start_reconciler(env, tmp_path / "refused.log", metrics_port=port)
    try:
        wait_for_port(port)
        eventually(lambda: fake.count() >= 1, 20, "the first request")
        time.sleep(1.0)
        after_first = fake.count()
        time.sleep(3.0)  # at 50/s, a looping reconciler would send ~150 requests
        exported = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.stop()
    assert after_first == fake.count(), "no request after the refusal"
    assert after_first <= len(tasks)
    assert 1 == metric(exported, "receiver_reconcile_key_refused")
    assert len(tasks) == metric(exported, "receiver_reconcile_watched_tasks")
    output = process.output()
    assert 1 == output.count('"reconcile_key_refused"'), "one error line, not one per request"
    assert API_KEY not in output
    assert API_KEY not in exported
    assert API_KEY.removeprefix("rvya_sk_") not in output

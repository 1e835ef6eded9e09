"""Scale-out on a real Redis Cluster: sharded queues, hash-tagged keys, atomic scripts."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from receiver import ops
from receiver.runtime import Runtime
from receiver.settings import Settings
from tests.factories import base_env, event_body, generation, signed_headers
from tests.fake_rivya import FakeRivya, Reply
from tests.reconcilers import reconcile_env
from tests.redis_proc import RedisClusterProcesses
from tests.servers import ServiceThread

pytestmark = pytest.mark.slow


def test_events_flow_through_a_redis_cluster(tmp_path: Path) -> None:
    """On a 3-primary cluster with 8 queue shards: accept, dedup and apply every event."""
    with RedisClusterProcesses(tmp_path / "cluster") as cluster:
        settings = Settings.from_env(base_env(tmp_path, cluster.url, RECEIVER_QUEUE_SHARDS="8"))
        bodies = {f"msg_cluster_{n}": event_body(task_id=f"task_cluster_{n}") for n in range(40)}
        with (
            ServiceThread(settings, run_worker=True) as service,
            httpx.Client(base_url=service.url, timeout=10) as client,
        ):
            first = [
                client.post(
                    "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
                ).status_code
                for event_id, body in bodies.items()
            ]
            again = [
                client.post(
                    "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
                ).status_code
                for event_id, body in bodies.items()
            ]
            deadline = time.monotonic() + 30
            count = 0
            while time.monotonic() < deadline:
                with sqlite3.connect(tmp_path / "records.db") as db:
                    try:
                        count = db.execute("SELECT count(*) FROM generations").fetchone()[0]
                    except sqlite3.OperationalError:
                        count = 0
                if count == len(bodies):
                    break
                time.sleep(0.1)
            ready = client.get("/readyz").status_code
    assert ([202] * 40, [200] * 40) == (first, again)
    assert (40, 200) == (count, ready)


def test_reconciliation_on_a_redis_cluster(tmp_path: Path) -> None:
    """Issue 16 on a 3-primary cluster with 8 shards: tracked tasks (watch shards hashed by
    task id, the gate in its own slot) are polled to their terminal state, half of them
    after a processing webhook moved their watch."""
    tasks = [f"task_cluster_poll_{n}" for n in range(20)]
    with RedisClusterProcesses(tmp_path / "cluster") as cluster, FakeRivya() as fake:
        for task_id in tasks:
            fake.script(task_id, Reply.of(generation(task_id, "succeeded")))
        env = reconcile_env(tmp_path, cluster.url, fake, RECEIVER_QUEUE_SHARDS="8")
        settings = Settings.from_env(env)
        with (
            ServiceThread(settings, run_worker=True) as service,
            httpx.Client(base_url=service.url, timeout=10) as client,
        ):
            for task_id in tasks[::2]:
                body = event_body(
                    task_id=task_id, status="processing", updated_at="2026-05-10T00:00:10.000Z"
                )
                assert (
                    202
                    == client.post(
                        "/webhooks/rivya", content=body, headers=signed_headers(body)
                    ).status_code
                )
            left = asyncio.run(_track_then_wait(settings, tasks[1::2], fake, len(tasks)))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with sqlite3.connect(tmp_path / "records.db") as db:
                    done = db.execute(
                        "SELECT count(*) FROM generations WHERE status = 'succeeded'"
                    ).fetchone()[0]
                if done == len(tasks):
                    break
                time.sleep(0.1)
    assert (0, len(tasks)) == (left, done)
    assert sorted(tasks) == sorted(seen.task_id for seen in fake.snapshot())


async def _track_then_wait(
    settings: Settings, task_ids: list[str], fake: FakeRivya, polls: int
) -> int:
    """Track ``task_ids``, wait until ``polls`` requests were made and nothing is watched;
    returns how many tasks are still watched."""
    runtime = await Runtime.open(settings)
    try:
        await ops.track_tasks(runtime.store, task_ids, after_seconds=0.2)
        deadline = time.monotonic() + 30
        while True:
            status = await ops.watch_status(runtime.store)
            done = status.watched == 0 and fake.count() >= polls
            if done or time.monotonic() > deadline:
                return status.watched
            await asyncio.sleep(0.1)  # polling: the reconciler works in another thread
    finally:
        await runtime.aclose()

"""Scale-out on a real Redis Cluster: sharded queues, hash-tagged keys, atomic scripts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from receiver.settings import Settings
from tests.factories import base_env, event_body, signed_headers
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

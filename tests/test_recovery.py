"""Recovery from faults with real processes: every fault ends with the service healthy again
and nothing acknowledged lost (issue 13). Redis here is always the test's own server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from receiver.keys import all_shards, member_of
from tests.factories import base_env, event_body, signed_headers
from tests.redis_proc import RedisProcess
from tests.servers import ServiceProcess

pytestmark = pytest.mark.slow


async def deliver_for(url: str, senders: int, seconds: float, prefix: str) -> list[tuple[str, int]]:
    """``senders`` concurrent senders posting new events back to back for ``seconds``."""
    limits = httpx.Limits(max_connections=senders, max_keepalive_connections=senders)
    answers: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def sender(n: int) -> None:
            k = 0
            while time.monotonic() < deadline:
                k += 1
                event_id = f"{prefix}_{n}_{k}"
                body = event_body()
                headers = signed_headers(body, event_id=event_id)
                try:
                    response = await client.post("/webhooks/rivya", content=body, headers=headers)
                    answers.append((event_id, response.status_code))
                except httpx.HTTPError:
                    answers.append((event_id, 599))

        await asyncio.gather(*(sender(n) for n in range(senders)))
    return answers


async def deliver_all(url: str, count: int, prefix: str) -> list[tuple[str, int]]:
    """``count`` new events delivered at once; (event id, status) for each (599: no answer)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def one(n: int) -> tuple[str, int]:
            event_id = f"{prefix}_{n}"
            body = event_body()
            try:
                response = await client.post(
                    "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
                )
            except httpx.HTTPError:
                return event_id, 599
            return event_id, response.status_code

        return list(await asyncio.gather(*(one(n) for n in range(count))))


def stored(client: redis.Redis, event_ids: list[str]) -> list[bool]:
    shard = all_shards(1)[0]
    with client.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.exists(shard.event(member_of("rivya", event_id)))
        return [bool(found) for found in pipe.execute()]


def test_killed_connections_under_load_answer_503_never_500(tmp_path: Path) -> None:
    """200 concurrent senders while Redis drops every connection (CLIENT KILL every 50 ms,
    and now and then a SIGKILL and restart): every answer is 2xx or 503, no traceback, every
    2xx is stored, and once the kills stop every delivery is accepted."""
    durable = ("--appendfsync", "always")
    with RedisProcess(tmp_path / "redis", appendonly=True, extra_args=durable) as server:
        env = base_env(tmp_path, server.url, RECEIVER_LOG_LEVEL="warning")
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            stop = threading.Event()
            kills = 0

            def killer() -> None:
                nonlocal kills
                while not stop.is_set():
                    time.sleep(0.05)
                    kills += 1
                    if kills % 10 == 0:
                        server.kill()
                        server.start()
                        continue
                    with redis.Redis(port=server.port) as admin:
                        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")

            thread = threading.Thread(target=killer)
            thread.start()
            try:
                answers = asyncio.run(deliver_for(service.url, 200, 8, "msg_kill"))
            finally:
                stop.set()
                thread.join()
            after = asyncio.run(deliver_all(service.url, 50, "msg_after"))
            output = service.output()
        with redis.Redis(port=server.port) as client:
            acknowledged = [event_id for event_id, status in answers if status in (200, 202)]
            kept = stored(client, acknowledged)
    statuses = Counter(status for _, status in answers)
    assert (True, True) == (kills > 20, statuses[503] > 0), f"kills missed: {statuses}"
    assert {} == {code: n for code, n in statuses.items() if code >= 500 and code != 503}
    assert "Traceback" not in output
    assert len(acknowledged) > 100
    assert all(kept), f"{kept.count(False)} acknowledged events lost"
    assert {202} == {status for _, status in after}

"""Readiness (receiver/readiness.py, SPEC §3): shared probes, a bounded result age, and the
truth about a Redis that refuses writes.

Every test writes to a real, private ``redis-server`` (tests/redis_proc.py): counting its
SET calls (``INFO commandstats``) is how a test sees how many probes reached Redis, and
``CONFIG SET maxmemory 1`` under ``noeviction`` makes it refuse every write. The shared
Redis at 6379 is never reconfigured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from receiver.readiness import MAX_AGE_SECONDS, PROBE_CONNECTIONS, Readiness
from receiver.redis_client import create_client
from tests.factories import base_env
from tests.helpers import eventually
from tests.redis_proc import RedisProcess
from tests.servers import ServiceProcess

SHARDS = 4  # one probe writes one key per shard: SHARDS SET calls


class FakeClock:
    """A monotonic clock the test moves by hand (Readiness's ``clock`` seam)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    with RedisProcess(tmp_path / "redis", extra_args=("--maxmemory-policy", "noeviction")) as s:
        yield s


@pytest.fixture
def admin(server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(port=server.port)
    yield client
    client.close()


def set_calls(admin: redis.Redis) -> int:
    """SET commands Redis has run (``CONFIG RESETSTAT`` starts the count again)."""
    stats = admin.info("commandstats").get("cmdstat_set", {})
    return int(stats.get("calls", 0))


def refuse_writes(admin: redis.Redis) -> None:
    """Every write now fails with OOM: used memory is over a 1-byte limit, nothing evicts."""
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)


def accept_writes(admin: redis.Redis) -> None:
    admin.config_set("maxmemory", 0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def readiness(server: RedisProcess, clock: FakeClock) -> AsyncIterator[Readiness]:
    """Readiness as the runtime builds it (its own 2-connection client), on a test clock."""
    client = create_client(server.url, max_connections=PROBE_CONNECTIONS, timeout=2.0)
    probe = Readiness(client, shards=SHARDS, timeout_seconds=2.0, clock=clock)
    yield probe
    await probe.aclose()


async def test_concurrent_checks_share_one_probe(readiness: Readiness, admin: redis.Redis) -> None:
    """300 concurrent checks on a 2-connection client: one probe (SHARDS SETs) answers them
    all, ready; a probe per caller would exhaust the pool and report Redis unreachable."""
    admin.config_resetstat()

    results = await asyncio.gather(*(readiness.check() for _ in range(300)))

    assert {(True, "")} == {(result.ready, result.reason) for result in results}
    assert 1 == len({id(result) for result in results})
    assert SHARDS == set_calls(admin)


async def test_a_result_is_reused_within_its_max_age_and_refreshed_after(
    readiness: Readiness, admin: redis.Redis, clock: FakeClock
) -> None:
    """A result answers for MAX_AGE_SECONDS, even once Redis refuses writes; a check after
    that probes again and says out_of_memory; once writes work, the next fresh probe is
    ready again."""
    admin.config_resetstat()
    first = await readiness.check()
    refuse_writes(admin)
    try:
        clock.now += MAX_AGE_SECONDS  # at the max age: still the cached answer
        cached = await readiness.check()
        calls_while_cached = set_calls(admin)
        clock.now += 0.01  # past it: a new probe
        refused = await readiness.check()
        clock.now += MAX_AGE_SECONDS / 2
        refused_cached = await readiness.check()
    finally:
        accept_writes(admin)
    clock.now += MAX_AGE_SECONDS / 2 + 0.01
    recovered = await readiness.check()

    assert first.ready
    assert cached is first
    assert SHARDS == calls_while_cached
    assert (False, ("redis",), "out_of_memory") == (refused.ready, refused.failed, refused.reason)
    assert refused_cached is refused
    assert recovered.ready
    assert refused.checked_at < recovered.checked_at
    assert readiness.last is recovered


# -- over HTTP ----------------------------------------------------------------------------


async def get_all(url: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return list(await asyncio.gather(*(client.get("/readyz") for _ in range(count))))


@pytest.mark.slow
def test_readyz_is_503_naming_redis_while_it_refuses_writes(
    tmp_path: Path, server: RedisProcess, admin: redis.Redis
) -> None:
    """serve on a real socket: 300 concurrent /readyz answer 200; after CONFIG SET
    maxmemory 1 (noeviction), 300 concurrent /readyz all answer 503 naming redis with the
    reason out_of_memory, within one max age; with writes back, 200 again."""
    env = base_env(tmp_path, server.url, RECEIVER_LOG_LEVEL="warning")
    with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
        healthy = asyncio.run(get_all(service.url, 300))
        refuse_writes(admin)
        try:
            eventually(
                lambda: httpx.get(f"{service.url}/readyz", timeout=5).status_code == 503,
                timeout=MAX_AGE_SECONDS + 5,
                what="readiness to see the refused writes",
            )
            refused = asyncio.run(get_all(service.url, 300))
        finally:
            accept_writes(admin)
        eventually(
            lambda: httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200,
            what="readiness once writes work",
        )
        output = service.output()
    assert [200] * 300 == [response.status_code for response in healthy]
    assert {(503, '{"error":"not_ready","failed":["redis"],"reason":"out_of_memory"}')} == {
        (response.status_code, response.text) for response in refused
    }
    assert "Traceback" not in output

"""The auto-pipeline: concurrent commands on one shared connection, each with its own answer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.batching import FLUSH_AT, AutoPipeline, Script
from receiver.redis_client import create_client
from tests.redis_proc import RedisProcess


def client_count(url: str) -> int:
    with redis.Redis.from_url(url) as admin:
        return len(admin.client_list()) - 1  # less this admin connection


async def test_concurrent_callers_get_their_own_replies(redis_client: aioredis.Redis) -> None:
    """Hundreds of concurrent commands, batched and pipelined: each caller gets its reply."""
    pipeline = AutoPipeline(redis_client)
    try:
        replies = await asyncio.gather(
            *(pipeline.execute("ECHO", f"value-{n}") for n in range(500))
        )
        counts = await asyncio.gather(*(pipeline.execute("INCR", "counter") for _ in range(300)))
    finally:
        await pipeline.aclose()
    assert replies == [f"value-{n}".encode() for n in range(500)]
    assert sorted(counts) == list(range(1, 301))


async def test_batches_share_one_connection(redis_url: str) -> None:
    """Batches of successive loop ticks go down one connection without waiting for replies."""
    client = create_client(redis_url)
    pipeline = AutoPipeline(client)

    async def ping_in_tick(tick: int) -> bytes:
        for _ in range(tick):
            await asyncio.sleep(0)
        reply: bytes = await pipeline.execute("PING")
        return reply

    try:
        before = client_count(redis_url)
        for _ in range(20):
            await asyncio.gather(*(ping_in_tick(n % 8) for n in range(64)))
        during = client_count(redis_url)
    finally:
        await pipeline.aclose()
        await client.aclose()
    assert during - before == 1


async def test_a_long_batch_goes_out_before_the_tick_ends(
    redis_client: aioredis.Redis, clean_redis: redis.Redis
) -> None:
    """The first FLUSH_AT commands of a busy tick reach Redis while the tick still runs
    (Redis works as handlers go on); the rest go at the end of the tick."""
    pipeline = AutoPipeline(redis_client)
    try:
        await pipeline.execute("PING")  # the shared connection is open
        futures = [pipeline.execute("SET", f"k{n}", "v") for n in range(FLUSH_AT + 4)]
        # The tick goes on (blocking the loop on purpose); Redis is not waiting for it.
        time.sleep(0.2)  # noqa: ASYNC251
        seen_during_the_tick = sum(clean_redis.exists(f"k{n}") for n in range(FLUSH_AT + 4))
        await asyncio.gather(*futures)
        seen_after = sum(clean_redis.exists(f"k{n}") for n in range(FLUSH_AT + 4))
    finally:
        await pipeline.aclose()
    assert (seen_during_the_tick, seen_after) == (FLUSH_AT, FLUSH_AT + 4)


async def test_an_error_reply_fails_only_its_command(redis_client: aioredis.Redis) -> None:
    """A command that Redis refuses raises for its caller; the rest of the batch succeeds."""
    await redis_client.set("text", "not a number")
    pipeline = AutoPipeline(redis_client)
    try:
        results = await asyncio.gather(
            pipeline.execute("INCR", "n"),
            pipeline.execute("INCR", "text"),
            pipeline.execute("INCR", "n"),
            return_exceptions=True,
        )
    finally:
        await pipeline.aclose()
    assert (results[0], results[2]) == (1, 2)
    assert isinstance(results[1], ResponseError)


async def test_script_reloads_after_script_flush(redis_client: aioredis.Redis) -> None:
    """A script Redis forgot (restart, SCRIPT FLUSH) is loaded again and the call succeeds."""
    pipeline = AutoPipeline(redis_client)
    script = Script(pipeline, "return ARGV[1] .. KEYS[1]")
    try:
        await script.load()
        first = await script(("k",), ("a",))
        await redis_client.script_flush()
        second = await script(("k",), ("b",))
    finally:
        await pipeline.aclose()
    assert (first, second) == (b"ak", b"bk")


async def test_killed_connection_fails_then_reconnects(tmp_path: Path) -> None:
    """The server drops the connection: callers get ConnectionError, the next batch reconnects."""
    with RedisProcess(tmp_path / "redis") as server:
        client = create_client(server.url)
        pipeline = AutoPipeline(client)
        try:
            assert await pipeline.execute("PING") == b"PONG"
            server.stop()
            with pytest.raises(RedisConnectionError):
                await pipeline.execute("PING")
            server.start()
            await asyncio.sleep(0.1)
            replies = [await pipeline.execute("PING") for _ in range(3)]
        finally:
            await pipeline.aclose()
            await client.aclose()
    # A stale connection may fail the first call after the restart; later ones must work.
    assert replies[-2:] == [b"PONG", b"PONG"]


async def test_a_server_that_stops_answering_times_out(tmp_path: Path) -> None:
    """No reply within the socket timeout: every waiting caller gets TimeoutError, promptly."""
    with RedisProcess(tmp_path / "redis") as server:
        client = create_client(server.url, timeout=0.5)
        pipeline = AutoPipeline(client)
        try:
            assert await pipeline.execute("PING") == b"PONG"
            with redis.Redis(port=server.port) as admin:
                admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            started = time.monotonic()
            results = await asyncio.gather(
                *(pipeline.execute("PING") for _ in range(5)), return_exceptions=True
            )
            waited = time.monotonic() - started
        finally:
            await pipeline.aclose()
            await client.aclose()
    assert all(isinstance(result, RedisTimeoutError) for result in results)
    assert 0.4 < waited < 2.5


async def test_aclose_returns_the_connection_to_the_pool(redis_url: str) -> None:
    """After aclose the shared connection is back in the pool, closed."""
    client = create_client(redis_url)
    pipeline = AutoPipeline(client)
    try:
        await pipeline.execute("PING")
        in_use = len(client.connection_pool._in_use_connections)
        await pipeline.aclose()
        assert (in_use, len(client.connection_pool._in_use_connections)) == (1, 0)
    finally:
        await client.aclose()


async def test_replies_follow_the_clients_decoding(redis_url: str) -> None:
    """A client created with decode_responses gets text back, as from its own commands."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    pipeline = AutoPipeline(client)
    try:
        reply = await pipeline.execute("ECHO", "héllo")
    finally:
        await pipeline.aclose()
        await client.aclose()
    assert reply == "héllo"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_transport_closed_under_the_pipeline_is_replaced(tmp_path: Path, loop: str) -> None:
    """The event loop closes the connection's transport (as after a reset) before the reader
    has seen it: a batch written then never raises (uvloop's RuntimeError would have been a
    500); it goes out on a new connection and gets its replies."""
    import uvloop

    async def scenario(url: str) -> tuple[list[str], list[Any]]:
        client = create_client(url)
        pipeline = AutoPipeline(client)
        try:
            assert await pipeline.execute("PING") == b"PONG"
            channel = pipeline._channel
            assert channel is not None
            assert channel._writer is not None
            channel._writer.transport.abort()  # what uvloop does on ECONNRESET / EPIPE
            # One iteration: the loop closes the handle (connection_lost); the reader task,
            # woken by that, runs after this one. That gap is where the 500s came from.
            await asyncio.sleep(0)
            futures, raised = [], []
            for _ in range(FLUSH_AT * 2):  # FLUSH_AT makes execute() itself write the batch
                try:
                    futures.append(pipeline.execute("PING"))
                except Exception as exc:
                    raised.append(repr(exc))
            results = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await pipeline.aclose()
            await client.aclose()
        return raised, results

    with RedisProcess(tmp_path / "redis") as server:
        runner = uvloop.run if loop == "uvloop" else asyncio.run
        raised, results = runner(scenario(server.url))
    assert ([], [b"PONG"] * FLUSH_AT * 2) == (raised, results)

"""Durability of ingest: Redis outages, restarts of the embedded Redis, arbitrary input."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.app import create_app
from receiver.keys import all_shards
from receiver.runtime import Runtime
from receiver.settings import Settings
from tests.conftest import TEST_SECRET
from tests.factories import base_env, event_body, signed_headers
from tests.redis_proc import RedisProcess
from tests.servers import ServiceProcess, ServiceThread


def test_redis_outage_answers_503_then_recovers(tmp_path: Path) -> None:
    """Redis down: 503 with Retry-After and nothing acknowledged; back up: the retry is a 202."""
    with RedisProcess(tmp_path / "redis") as server:
        settings = Settings.from_env(base_env(tmp_path, server.url, RECEIVER_SINK="log:"))
        with (
            ServiceThread(settings) as service,
            httpx.Client(base_url=service.url, timeout=10) as client,
        ):
            body = event_body()
            headers = signed_headers(body, event_id="msg_outage")
            server.stop()
            down = client.post("/webhooks/rivya", content=body, headers=headers)
            ready = client.get("/readyz")
            server.start()
            up = client.post("/webhooks/rivya", content=body, headers=headers)
            again = client.post("/webhooks/rivya", content=body, headers=headers)
    assert (down.status_code, down.json()) == (503, {"error": "storage_unavailable"})
    assert int(down.headers["retry-after"]) > 0
    assert (ready.status_code, ready.json()["failed"]) == (503, ["redis"])
    assert (up.status_code, again.status_code) == (202, 200)


def test_embedded_redis_keeps_dedup_across_restarts(tmp_path: Path) -> None:
    """Embedded default: accept, stop the service, start it again, resend: 200 duplicate."""
    data_dir = Path("/tmp") / f"rcv-emb-{time.time_ns()}"  # short: unix socket path limit
    env = base_env(data_dir, None, RECEIVER_SINK="log:")
    body = event_body()
    headers = signed_headers(body, event_id="msg_embedded")
    service = ServiceProcess(env, tmp_path / "serve.log")
    with service:
        first = httpx.post(f"{service.url}/webhooks/rivya", content=body, headers=headers)
    assert service.process is not None
    assert service.process.returncode == 0
    assert not (data_dir / "redis" / "redis.sock").exists(), "embedded Redis must stop with serve"
    with ServiceProcess(env, tmp_path / "serve2.log", port=service.port) as restarted:
        second = httpx.post(f"{restarted.url}/webhooks/rivya", content=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert (data_dir / "redis" / "appendonly.aof").exists() or (
        data_dir / "redis" / "appendonlydir"
    ).exists()


def test_embedded_redis_left_by_sigkill_is_reused(tmp_path: Path) -> None:
    """A redis-server orphaned by kill -9 of serve is found and reused; the event survives."""
    data_dir = Path("/tmp") / f"rcv-kill-{time.time_ns()}"
    env = base_env(data_dir, None, RECEIVER_SINK="log:")
    body = event_body()
    headers = signed_headers(body, event_id="msg_orphan")
    service = ServiceProcess(env, tmp_path / "serve.log").start()
    first = httpx.post(f"{service.url}/webhooks/rivya", content=body, headers=headers)
    service.kill()
    with ServiceProcess(env, tmp_path / "serve2.log", port=service.port) as restarted:
        second = httpx.post(f"{restarted.url}/webhooks/rivya", content=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert not (data_dir / "redis" / "redis.sock").exists(), "the adopted Redis stops with serve"


# -- arbitrary input never produces a 5xx ---------------------------------------------------

header_names = st.sampled_from(
    [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "content-type",
        "content-length-x",
        "x-other",
    ]
)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@pytest.fixture(scope="module")
def asgi_client(redis_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The app in-process over httpx's ASGI transport (fast enough for many examples)."""
    import asyncio

    settings = Settings.from_env(
        base_env(
            tmp_path_factory.mktemp("prop"),
            redis_url,
            RECEIVER_SINK="log:",
            RECEIVER_MAX_BODY_BYTES="2048",
        )
    )
    loop = asyncio.new_event_loop()
    runtime = loop.run_until_complete(Runtime.open(settings))
    app = create_app(settings, run_worker=False, runtime=runtime)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    yield loop, client
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(runtime.aclose())
    loop.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.dictionaries(header_names, header_values, max_size=6),
    body=st.binary(max_size=3000),
    sign=st.booleans(),
    json_type=st.booleans(),
)
def test_any_input_is_4xx_or_stored(
    asgi_client, clean_redis: redis.Redis, headers, body, sign, json_type
) -> None:  # type: ignore[no-untyped-def]
    """Arbitrary headers and bodies: the answer is a 4xx or a stored event, never a 5xx."""
    loop, client = asgi_client
    if sign:
        headers = {**headers, **signed_headers(body, event_id=headers.get("webhook-id") or None)}
    if json_type:
        headers["content-type"] = "application/json"
    response = loop.run_until_complete(
        client.post("/webhooks/rivya", content=body, headers=headers)
    )
    assert response.status_code < 500
    if response.status_code in (200, 202):
        event_id = response.json()["event_id"]
        shard = all_shards(1)[0]
        assert clean_redis.exists(shard.event(f"rivya|{event_id}"))
    else:
        assert 400 <= response.status_code < 500
        answer = response.json()
        # A 400 for a missing header also names the headers expected (SPEC §10), no more.
        extra = {"expected"} if answer.get("error") == "missing_signature_header" else set()
        assert set(answer) == {"error", *extra}


def test_secret_is_never_in_stored_headers(
    clean_redis: redis.Redis, tmp_path: Path, redis_url: str
) -> None:
    """The stored event keeps no signature and no secret, only what the worker and ops need."""
    settings = Settings.from_env(base_env(tmp_path, redis_url, RECEIVER_SINK="log:"))
    with ServiceThread(settings) as service:
        body = event_body()
        headers = signed_headers(body, event_id="msg_fields")
        assert (
            httpx.post(f"{service.url}/webhooks/rivya", content=body, headers=headers).status_code
            == 202
        )
    stored = clean_redis.hgetall(all_shards(1)[0].event("rivya|msg_fields"))
    flat = b" ".join(list(stored) + list(stored.values()))
    assert headers["webhook-signature"].encode() not in flat
    assert TEST_SECRET.encode() not in flat

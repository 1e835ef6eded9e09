"""The worker's own listener: /healthz, /readyz and /metrics tell the worker's truth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from receiver.runtime import Runtime
from receiver.settings import Settings
from receiver.worker import Worker
from receiver.worker_http import create_worker_app
from tests.conftest import TEST_SECRET
from tests.factories import base_env, event_body, signed_headers
from tests.helpers import eventually_async
from tests.redis_proc import RedisProcess
from tests.servers import Downstream, ServiceThread


def settings_for(tmp_path: Path, redis_url: str, sink: str) -> Settings:
    return Settings.from_env(
        base_env(
            tmp_path, redis_url, RECEIVER_SINK=sink, RECEIVER_FORWARD_SECRET=TEST_SECRET,
            RECEIVER_RETRY_BASE="20ms", RECEIVER_RETRY_MAX="100ms",
            RECEIVER_CIRCUIT_FAILURES="2", RECEIVER_SINK_TIMEOUT="2s",
        )
    )  # fmt: skip


class RunningWorker:
    """A worker on its own runtime with its listener's app, served in-process over ASGI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def __aenter__(self) -> RunningWorker:
        self.runtime = await Runtime.open(self.settings, with_sink=True)
        assert self.runtime.sink is not None
        self.worker = Worker(self.runtime, self.runtime.sink)
        self.task = asyncio.create_task(self.worker.run())
        transport = httpx.ASGITransport(app=create_worker_app(self.worker))
        self.client = httpx.AsyncClient(transport=transport, base_url="http://worker")
        return self

    async def status(self, path: str) -> tuple[int, dict[str, Any]]:
        response = await self.client.get(path)
        return response.status_code, response.json()

    async def stop(self) -> None:
        await self.worker.stop(5)
        await self.task

    async def __aexit__(self, *exc: object) -> None:
        if not self.task.done():
            await self.stop()
        await self.client.aclose()
        await self.runtime.aclose()


@pytest.fixture
async def log_worker(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> AsyncIterator[RunningWorker]:
    async with RunningWorker(settings_for(tmp_path, redis_url, "log:")) as running:
        yield running


async def ready(running: RunningWorker) -> bool:
    return (await running.client.get("/readyz")).status_code == 200


class TestHealth:
    async def test_healthy_worker_is_live_and_ready(self, log_worker: RunningWorker) -> None:
        """A running worker with Redis and a working sink: /healthz and /readyz answer 200,
        /metrics carries the sink's state."""
        await eventually_async(lambda: ready(log_worker), what="the worker to be ready")
        metrics = (await log_worker.client.get("/metrics")).text
        assert (200, {"status": "ok"}) == await log_worker.status("/healthz")
        assert (200, {"status": "ready"}) == await log_worker.status("/readyz")
        assert "receiver_sink_circuit_open 0.0" in metrics
        assert "receiver_sink_up 1.0" in metrics

    async def test_healthz_fails_once_the_loop_has_stopped(self, log_worker: RunningWorker) -> None:
        """After the worker loop ends, liveness answers 503 so the process gets restarted."""
        await eventually_async(lambda: ready(log_worker), what="the worker to be ready")
        await log_worker.stop()
        assert (503, {"error": "worker_stopped"}) == await log_worker.status("/healthz")

    async def test_300_concurrent_probes_all_answer_ready(self, log_worker: RunningWorker) -> None:
        """Readiness comes from the worker's state, not a probe per request: 300 at once
        never flap it."""
        await eventually_async(lambda: ready(log_worker), what="the worker to be ready")
        answers = await asyncio.gather(*(log_worker.client.get("/readyz") for _ in range(300)))
        assert {200} == {answer.status_code for answer in answers}


class TestReadiness:
    async def test_an_open_circuit_is_not_ready_naming_the_sink(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """While the sink fails for everything the circuit opens and /readyz answers 503
        naming the sink (liveness stays 200: a restart would not help); it is ready again
        once the sink answers."""
        with Downstream(503) as downstream:
            settings = settings_for(tmp_path, redis_url, downstream.url)
            async with RunningWorker(settings) as running:
                with ServiceThread(settings) as service:  # ingest only
                    async with httpx.AsyncClient(base_url=service.url) as sender:
                        for n in range(3):
                            body = event_body()
                            headers = signed_headers(body, event_id=f"msg_ready_{n}")
                            await sender.post("/webhooks/rivya", content=body, headers=headers)

                async def circuit_open() -> bool:
                    return (await running.status("/readyz"))[1].get("failed") == ["sink"]

                await eventually_async(circuit_open, what="readiness to name the sink")
                assert 200 == (await running.client.get("/healthz")).status_code
                downstream.statuses = [200]
                await eventually_async(lambda: ready(running), what="ready again")

    async def test_redis_away_is_not_ready_naming_redis(self, tmp_path: Path) -> None:
        """When Redis stops answering, /readyz answers 503 naming redis; ready again when
        it is back."""
        server = RedisProcess(tmp_path / "redis", appendonly=True).start()
        try:
            async with RunningWorker(settings_for(tmp_path, server.url, "log:")) as running:
                await eventually_async(lambda: ready(running), what="the worker to be ready")
                server.stop()

                async def redis_named() -> bool:
                    return "redis" in (await running.status("/readyz"))[1].get("failed", [])

                await eventually_async(redis_named, what="readiness to name redis")
                server.start()
                await eventually_async(lambda: ready(running), what="ready again")
        finally:
            server.stop()

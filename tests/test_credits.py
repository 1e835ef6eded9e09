"""Credits per model and day, counted incrementally from stored events (real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from receiver.ops.credits import CreditLedger
from receiver.runtime import Runtime
from receiver.settings import Settings
from tests.conftest import TEST_SECRET
from tests.factories import envelope, generation, signed_headers
from tests.servers import ServiceThread


def settings(tmp_path: Path, redis_url: str) -> Settings:
    return Settings.from_env(
        {
            "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
            "RECEIVER_REDIS_URL": redis_url,
            "RECEIVER_DATA_DIR": str(tmp_path),
            "RECEIVER_SINK": "log:",
        }
    )


@pytest.fixture
async def runtime(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> AsyncIterator[Runtime]:
    opened = await Runtime.open(settings(tmp_path, redis_url))
    yield opened
    await opened.aclose()


def send(service: ServiceThread, *bodies: bytes) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for body in bodies:
            assert (
                client.post(
                    "/webhooks/rivya", content=body, headers=signed_headers(body)
                ).status_code
                == 202
            )


def body(task: str, status: str, updated: str, model: str = "z-image", **extra: object) -> bytes:
    return orjson.dumps(envelope(generation(task, status, updated, model=model, **extra)))


async def test_totals_per_model_and_day_count_each_task_once(
    tmp_path: Path, redis_url: str, runtime: Runtime
) -> None:
    """A task counts once in its latest state; failed jobs' uncharged credits; models apart."""
    with ServiceThread(settings(tmp_path, redis_url)) as service:
        send(
            service,
            body("t1", "processing", "2026-05-10T00:00:30.000Z"),
            body("t1", "succeeded", "2026-05-10T00:01:00.000Z"),
            # older than what t1 holds: the ordering guard ignores it, and so do the credits
            body("t1", "processing", "2026-05-10T00:00:40.000Z"),
            body("t2", "failed", "2026-05-10T00:02:00.000Z", reserved_credits=3),
            body("t3", "succeeded", "2026-05-10T00:03:00.000Z", model="v-video",
                 reserved_credits=5, final_credits=4),
            b'{"type": "generation.succeeded", "data": {"status": "succeeded"}}',  # unmappable
        )  # fmt: skip
    report = await CreditLedger(runtime.store, runtime.cipher, settle_seconds=0).report()
    rows = {row.model: row.to_json() for row in report.rows}
    assert {"z-image", "v-video"} == set(rows)
    assert {
        "day": "2026-05-10", "model": "z-image", "jobs": 2, "succeeded": 1, "failed": 1,
        "reserved_credits": 4.0, "final_credits": 1.0, "uncharged_credits": 3.0,
    } == rows["z-image"]  # fmt: skip
    assert (1, 5.0, 4.0, 0.0) == (
        rows["v-video"]["jobs"], rows["v-video"]["reserved_credits"],
        rows["v-video"]["final_credits"], rows["v-video"]["uncharged_credits"],
    )  # fmt: skip
    assert {"jobs": 3.0, "succeeded": 2.0, "failed": 1.0, "reserved": 9.0, "final": 5.0,
            "uncharged": 3.0} == report.totals  # fmt: skip


async def test_each_call_reads_a_bounded_number_of_new_events(
    tmp_path: Path, redis_url: str, runtime: Runtime
) -> None:
    """With a budget of 2, five events take three calls; nothing is counted twice."""
    with ServiceThread(settings(tmp_path, redis_url)) as service:
        send(service, *(body(f"t{n}", "succeeded", "2026-05-11T10:00:00.000Z") for n in range(5)))
    ledger = CreditLedger(runtime.store, runtime.cipher, settle_seconds=0)
    calls = [await ledger.catch_up(budget=2) for _ in range(4)]
    assert [(2, True), (2, True), (1, False), (0, False)] == calls
    report = await ledger.report()
    assert (5.0, 5.0) == (report.totals["jobs"], report.totals["final"])


async def test_a_later_state_of_a_counted_task_replaces_it(
    tmp_path: Path, redis_url: str, runtime: Runtime
) -> None:
    """A task counted as processing, then failed in a later batch, moves to failed."""
    ledger = CreditLedger(runtime.store, runtime.cipher, settle_seconds=0)
    with ServiceThread(settings(tmp_path, redis_url)) as service:
        send(service, body("t9", "processing", "2026-05-12T00:00:00.000Z", reserved_credits=2))
        first = await ledger.report()
        send(service, body("t9", "failed", "2026-05-12T00:05:00.000Z", reserved_credits=2))
    second = await ledger.report()
    assert (1.0, 0.0) == (first.totals["jobs"], first.totals["failed"])
    assert {"jobs": 1.0, "succeeded": 0.0, "failed": 1.0, "reserved": 2.0, "final": 0.0,
            "uncharged": 2.0} == second.totals  # fmt: skip


async def test_two_processes_catching_up_at_once_count_each_batch_once(
    tmp_path: Path, redis_url: str, runtime: Runtime
) -> None:
    """Two ledgers (two console replicas, each with its own store and connection) catch
    up on the same events at once: the cursor's compare-and-set lets one batch in, the
    other learns it was counted and moves on; the totals count every task once."""
    import asyncio

    with ServiceThread(settings(tmp_path, redis_url)) as service:
        send(service, *(body(f"c{n}", "succeeded", "2026-05-13T10:00:00.000Z") for n in range(6)))
    other = await Runtime.open(settings(tmp_path, redis_url))
    try:
        first = CreditLedger(runtime.store, runtime.cipher, settle_seconds=0)
        second = CreditLedger(other.store, other.cipher, settle_seconds=0)
        rounds = [
            await asyncio.gather(first.catch_up(budget=3), second.catch_up(budget=3))
            for _ in range(3)
        ]
        report = await first.report()
    finally:
        await other.aclose()
    counted = sum(read for pair in rounds for read, _ in pair)
    assert 6 == counted, rounds
    assert (6.0, 6.0) == (report.totals["jobs"], report.totals["final"])

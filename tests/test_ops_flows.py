"""Day-2 operations end to end (issue 14): real ``serve`` and ``worker`` processes, real
Redis and sinks, the CLI as subprocesses. Rejected deliveries under a flood, the sink's
answer in an event's timeline, resolve, ``replay --wait``, heartbeats, key rotation and
``records show``."""

from __future__ import annotations

import asyncio
import base64
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from receiver.signing import key_fingerprint
from tests.conftest import TEST_SECRET
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
from tests.servers import Downstream, ServiceProcess

NEW_SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-rotated-0001").decode()
FORWARD_SECRET = "whsec_" + base64.b64encode(b"forward-secret-for-the-http-sink").decode()
WAIT_SECONDS = 30.0


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m receiver ARGS`` with stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def deliver(
    url: str, gen: dict[str, Any], *, secret: str = TEST_SECRET, event_id: str | None = None
) -> str:
    """POST one signed generation event; returns its event id (asserts 202)."""
    event_id = event_id or new_id("evt")
    body = orjson.dumps(envelope(gen, event_id))
    headers = signed_headers(body, event_id, secret=secret)
    response = httpx.post(f"{url}/webhooks/rivya", content=body, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    return event_id


def show(env: dict[str, str], event_id: str) -> dict[str, Any]:
    data: dict[str, Any] = cli_json(env, "events", "show", event_id)
    return data


def wait_state(env: dict[str, str], event_id: str, state: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(show(env, event_id))
        return found.get("state") == state

    eventually(reached, WAIT_SECONDS, f"{event_id} to be {state}")
    return found


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of ``name`` from the service's /metrics (0 if absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name or (
            series.startswith(name + "{")
            and all(f'{k}="{v}"' in series for k, v in labels.items())
            and wanted
        ):
            return float(value)
    return 0.0


@pytest.fixture
def env(tmp_path: Path, redis_url: str, clean_redis: redis.Redis) -> dict[str, str]:
    """The environment of this test's service and CLI runs (flushed Redis, SQLite sink)."""
    return base_env(tmp_path, redis_url, RECEIVER_LOG_LEVEL="warning")


@pytest.fixture
def serve(env: dict[str, str], tmp_path: Path) -> Iterator[ServiceProcess]:
    """``receiver serve`` with its worker."""
    with ServiceProcess(env, tmp_path / "serve.log", admin=True) as service:
        yield service


class TestRejectedDeliveries:
    def test_a_flood_leaves_a_bounded_log_and_ingest_answers(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """5,000 bad-signature requests: every one counted, only a sample logged (bounded by
        the per-process rate), and valid deliveries are still accepted meanwhile."""
        flood_size = 5_000
        bad_body = orjson.dumps(envelope(generation()))

        async def flood() -> tuple[list[int], list[int]]:
            async with httpx.AsyncClient(base_url=serve.url, timeout=30) as client:
                statuses: list[int] = []
                accepted: list[int] = []

                async def bad(n: int) -> None:
                    headers = signed_headers(bad_body, f"msg_bad_{n}", secret=NEW_SECRET)
                    answer = await client.post("/webhooks/rivya", content=bad_body, headers=headers)
                    statuses.append(answer.status_code)

                async def lane(first: int) -> None:
                    for n in range(first, flood_size, 32):
                        await bad(n)

                async def good() -> None:
                    for _ in range(5):
                        body = orjson.dumps(envelope(generation()))
                        headers = signed_headers(body)
                        answer = await client.post("/webhooks/rivya", content=body, headers=headers)
                        accepted.append(answer.status_code)
                        await asyncio.sleep(0.2)

                await asyncio.gather(good(), *(lane(k) for k in range(32)))
                return statuses, accepted

        started = time.monotonic()
        statuses, accepted = asyncio.run(flood())
        elapsed = time.monotonic() - started
        assert statuses == [401] * flood_size
        assert accepted == [202] * 5

        def all_counted() -> bool:
            status = cli_json(env, "status")
            return bool(status["rejected_last_hour"].get("invalid_signature") == flood_size)

        eventually(all_counted, WAIT_SECONDS, "every rejection to be counted")
        logged = cli_json(env, "deliveries", "list", "--rejected", "--limit", "10000")
        # The first 100 at once, then 20 per second (keys.REJECTIONS_*), per process.
        assert 100 <= len(logged) <= 100 + 20 * (elapsed + 2)
        recorded = metric(serve.admin_url, "receiver_rejected_deliveries_recorded_total")
        sampled_out = metric(serve.admin_url, "receiver_rejected_deliveries_sampled_out_total")
        assert (recorded, recorded + sampled_out) == (len(logged), flood_size)
        entry = logged[0]
        assert (entry["status"], entry["code"], entry["keys_tried"]) == (
            401,
            "invalid_signature",
            1,
        )
        assert {"webhook-id", "webhook-signature", "webhook-timestamp"} <= set(entry["headers"])
        assert entry["event_id"].startswith("msg_bad_")
        assert abs(entry["skew_seconds"]) <= 5
        assert entry["body_bytes"] == len(bad_body)
        assert entry["client"] == "127.0.0.1"

    def test_skew_and_missing_headers_are_explained(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """A stale timestamp records its skew; a missing header names what was absent."""
        body = orjson.dumps(envelope(generation()))
        stale = signed_headers(body, "msg_stale", timestamp=int(time.time()) - 900)
        url = f"{serve.url}/webhooks/rivya"
        assert httpx.post(url, content=body, headers=stale).status_code == 401
        missing = {"content-type": "application/json", "webhook-id": "msg_missing"}
        assert httpx.post(url, content=body, headers=missing).status_code == 400

        def both_logged() -> bool:
            return len(cli_json(env, "deliveries", "list", "--rejected")) == 2

        eventually(both_logged, WAIT_SECONDS, "two rejected deliveries")
        [skewed] = cli_json(env, "deliveries", "list", "--rejected", "--code", "401")
        assert skewed["code"] == "timestamp_out_of_tolerance"
        assert 895 <= skewed["skew_seconds"] <= 910
        assert re.fullmatch(r"timestamp \d+ s in the past, tolerance 300 s", skewed["reason"])
        [absent] = cli_json(
            env, "deliveries", "list", "--rejected", "--code", "missing_signature_header"
        )
        assert absent["reason"] == "missing header webhook-timestamp, webhook-signature"

    def test_requests_the_http_layer_refuses_are_logged_too(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """A 431 (oversized headers) and a 400 (a request the parser refuses), answered by the
        HTTP protocol before the app sees them, are kept beside the app's own rejections:
        with the path's source and the header names, never a header's value."""
        from tests.raw_http import exchange, request_bytes

        secret_value = "x" * 40_000
        oversized = request_bytes(headers=[("x-padding", secret_value)], body=b"{}")
        malformed = request_bytes(
            headers=[("x-token", "hunter2"), ("transfer-encoding", "chunked")]
        )
        statuses = [exchange(serve.port, raw).status for raw in (oversized, malformed)]
        assert [431, 400] == statuses

        def both_logged() -> bool:
            return len(cli_json(env, "deliveries", "list", "--rejected")) == 2

        eventually(both_logged, WAIT_SECONDS, "two refused requests in the log")
        [too_large] = cli_json(
            env, "deliveries", "list", "--rejected", "--code", "request_header_fields_too_large"
        )
        [refused] = cli_json(env, "deliveries", "list", "--rejected", "--code", "malformed_request")
        assert (too_large["status"], too_large["source"]) == (431, "rivya")
        assert (refused["status"], refused["source"]) == (400, "rivya")
        assert "x-token" in refused["headers"]
        text = str(too_large) + str(refused)
        assert "hunter2" not in text
        assert secret_value[:100] not in text


class TestTimeline:
    def test_a_sink_answering_400_shows_status_and_snippet(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """events show's timeline holds the sink's status and the start of its answer."""
        answer = b'{"error":"unknown_model","detail":"model z-image is not enabled here"}'
        with Downstream(400, body=answer) as downstream:
            env = {
                **env,
                "RECEIVER_SINK": downstream.url,
                "RECEIVER_FORWARD_SECRET": FORWARD_SECRET,
            }
            with ServiceProcess(env, tmp_path / "serve.log") as service:
                event_id = deliver(service.url, generation())
                event = wait_state(env, event_id, "dead")
        assert event["reason_code"] == "sink_rejected"
        [attempt] = [entry["attempt"] for entry in event["history"] if "attempt" in entry]
        assert (attempt["outcome"], attempt["status"]) == ("rejected", 400)
        assert attempt["answer"] == answer.decode()
        assert attempt["duration_ms"] > 0
        text = cli(env, "events", "show", event_id).stdout
        assert "rejected status=400" in text
        assert "model z-image is not enabled here" in text

    def test_a_stale_event_says_what_the_record_held(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """A stale outcome's attempt records the held status, time and event id."""
        task = new_id("task")
        newer = deliver(serve.url, generation(task, updated_at="2026-05-10T00:05:00.000Z"))
        wait_state(env, newer, "applied")
        older = deliver(
            serve.url, generation(task, status="processing", updated_at="2026-05-10T00:01:00.000Z")
        )
        event = wait_state(env, older, "stale")
        [attempt] = [entry["attempt"] for entry in event["history"] if "attempt" in entry]
        assert attempt["outcome"] == "stale"
        assert attempt["held"] == {
            "status": "succeeded",
            "source_updated_at": "2026-05-10T00:05:00.000000Z",
            "last_event_id": newer,
        }


def unmappable(url: str) -> str:
    """Deliver a signed body that is not a generation: stored dead (unmappable)."""
    event_id = new_id("evt")
    body = orjson.dumps({"id": event_id, "type": "generation.succeeded", "data": {"x": 1}})
    response = httpx.post(
        f"{url}/webhooks/rivya", content=body, headers=signed_headers(body, event_id), timeout=10
    )
    assert response.status_code == 202
    return event_id


class TestResolve:
    def test_resolve_leaves_the_dead_gauge_and_bulk_replay_and_is_audited(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """A resolved event stops counting as dead (gauge, replay --status dead), stays
        showable with its reason, and the audit names the actor."""
        env = {**env, "RECEIVER_ACTOR": "ops-carol"}
        with ServiceProcess(env, tmp_path / "serve.log", admin=True) as service:
            closed, kept = unmappable(service.url), unmappable(service.url)
            wait_state(env, closed, "dead")
            wait_state(env, kept, "dead")
            assert metric(service.admin_url, "receiver_dead_letters") == 2
            result = cli(env, "events", "resolve", closed, "--reason", "test data, never mappable")
            assert result.returncode == 0, result.stderr
            assert "resolved 1 of 1 events as ops-carol" in result.stdout
            assert metric(service.admin_url, "receiver_dead_letters") == 1
        dry = cli_json(env, "replay", "--status", "dead", "--dry-run")
        assert dry["total"] == 1
        planned = cli(env, "replay", "--status", "dead", "--dry-run")
        assert closed not in planned.stdout
        assert kept in planned.stdout
        event = show(env, closed)
        assert (event["state"], event["resolved_reason"], event["resolved_by"]) == (
            "resolved",
            "test data, never mappable",
            "ops-carol",
        )
        assert event["reason_code"] == "unmappable"
        listed = cli_json(env, "events", "list", "--status", "resolved")
        assert [closed] == [item["event_id"] for item in listed]
        [audit] = [e for e in cli_json(env, "events", "audit") if e["action"] == "resolve"]
        assert (audit["action"], audit["actor"], audit["resolved"], audit["reason"]) == (
            "resolve",
            "ops-carol",
            1,
            "test data, never mappable",
        )

    def test_bulk_resolve_by_error_code_needs_yes(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """--error unmappable selects the unmappable dead events; a filter needs --yes."""
        ids = [unmappable(serve.url) for _ in range(2)]
        for event_id in ids:
            wait_state(env, event_id, "dead")
        refused = cli(env, "events", "resolve", "--error", "unmappable", "--reason", "cleanup")
        assert refused.returncode == 2
        done = cli_json(env, "events", "resolve", "--error", "unmappable", "--reason", "x", "--yes")
        assert (done["matched"], done["resolved"]) == (2, 2)
        assert cli_json(env, "events", "list", "--error", "unmappable") == []


class TestReplayWait:
    def test_wait_reports_the_real_outcomes(self, env: dict[str, str], tmp_path: Path) -> None:
        """replay --wait prints how many were queued and how they ended: applied after the
        downstream is fixed, dead again while it still refuses."""
        with Downstream(422, 422, 200, 200, 422) as downstream:
            env = {
                **env,
                "RECEIVER_SINK": downstream.url,
                "RECEIVER_FORWARD_SECRET": FORWARD_SECRET,
            }
            with ServiceProcess(env, tmp_path / "serve.log") as service:
                ids = [deliver(service.url, generation()) for _ in range(2)]
                for event_id in ids:
                    wait_state(env, event_id, "dead")
                fixed = cli(env, "replay", *ids, "--wait")
                assert fixed.returncode == 0, fixed.stderr
                assert "queued 2 of 2 events" in fixed.stdout
                assert "outcomes: 2 applied, 0 stale, 0 dead, 0 still pending" in fixed.stdout
                again = cli(env, "replay", ids[0], "--wait", "--json")
        assert again.returncode == 1
        outcome = orjson.loads(again.stdout)
        assert (outcome["queued"], outcome["outcomes"]["dead"], outcome["outcomes"]["applied"]) == (
            1,
            1,
            0,
        )
        [audit, *_] = cli_json(env, "events", "audit")
        assert audit["outcomes"] == {
            "applied": 0, "stale": 0, "dead": 1, "pending": 0, "resolved": 0, "missing": 0,
        }  # fmt: skip

    def test_replay_warns_when_no_worker_is_live(self, env: dict[str, str], tmp_path: Path) -> None:
        """With no worker running, replay says the events only wait in the queue."""
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            event_id = deliver(service.url, generation())
            result = cli(env, "replay", event_id, "--wait", "--wait-timeout", "1")
        assert result.returncode == 0, result.stderr
        assert "no live worker is registered" in result.stderr
        assert "queued 1 of 1 events" in result.stdout


class TestStatus:
    def test_a_killed_workers_heartbeat_goes_stale(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """status lists a running worker as live; after kill -9 its heartbeat ages past
        the stale limit and it is shown not live."""
        worker = ServiceProcess(env, tmp_path / "worker.log", "worker").start()
        try:
            assert worker.process is not None
            pid = worker.process.pid

            def workers() -> list[dict[str, Any]]:
                return [w for w in cli_json(env, "status")["workers"] if w["pid"] == pid]

            eventually(lambda: [w["live"] for w in workers()] == [True], WAIT_SECONDS, "live")
            status = cli_json(env, "status")
            assert status["live_workers"] == 1
        finally:
            worker.kill()

        def stale() -> bool:
            found = workers()
            return len(found) == 1 and not found[0]["live"]

        eventually(stale, WAIT_SECONDS, "the killed worker to go stale")
        [seen] = workers()
        assert seen["heartbeat_age_seconds"] > 10
        assert cli_json(env, "status")["live_workers"] == 0
        text = cli(env, "status")
        assert "STALE" in text.stdout

    def test_status_counts_the_queue_and_dead_by_reason(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """status shows dead letters by reason code and the last accepted delivery."""
        event_id = unmappable(serve.url)
        wait_state(env, event_id, "dead")
        status = cli_json(env, "status")
        assert (status["dead"], status["dead_by_reason"]) == (1, {"unmappable": 1})
        assert status["last_accepted_at"] is not None
        assert status["live_workers"] == 1


class TestRotation:
    def test_after_the_sender_moves_the_old_keys_count_stops_growing(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        """With old and new keys configured, status and the metric count per fingerprint;
        once the sender signs with the new key only, the old count stays put."""
        env = {**env, "RECEIVER_WEBHOOK_SECRET": f"{TEST_SECRET} {NEW_SECRET}"}
        old, new = key_fingerprint(TEST_SECRET), key_fingerprint(NEW_SECRET)

        def counts() -> dict[str, int]:
            keys = cli_json(env, "status")["signing_keys"]
            return {key["fingerprint"]: key["verified_last_hour"] for key in keys}

        with ServiceProcess(env, tmp_path / "serve.log", admin=True) as service:
            for _ in range(3):
                deliver(service.url, generation(), secret=TEST_SECRET)
            assert counts() == {old: 3, new: 0}
            for _ in range(4):
                deliver(service.url, generation(), secret=NEW_SECRET)
            assert counts() == {old: 3, new: 4}
            assert metric(service.admin_url, "receiver_verifications_total", key=old) == 3
            assert metric(service.admin_url, "receiver_verifications_total", key=new) == 4
        keys = cli_json(env, "status")["signing_keys"]
        assert all(key["configured"] for key in keys)
        last = cli_json(env, "events", "list", "--limit", "1")[0]
        assert last["signing_key"] == new


class TestRecords:
    def test_records_show_reads_the_sink_and_names_the_setting_event(
        self, serve: ServiceProcess, env: dict[str, str]
    ) -> None:
        """records show prints the SQLite row as held and the events of that record."""
        task = new_id("task")
        first = deliver(
            serve.url, generation(task, status="processing", updated_at="2026-05-10T00:00:30Z")
        )
        second = deliver(serve.url, generation(task, updated_at="2026-05-10T00:01:00.000Z"))
        wait_state(env, second, "applied")
        wait_state(env, first, "applied")
        view = cli_json(env, "records", "show", task)
        assert view["record"]["status"] == "succeeded"
        assert view["record"]["last_event_id"] == second
        assert view["set_by"]["event_id"] == second
        assert [second, first] == [event["event_id"] for event in view["events"]]
        unknown = cli(env, "records", "show", "task_never_seen")
        assert unknown.returncode == 1

    def test_http_sink_records_are_not_readable(self, env: dict[str, str]) -> None:
        """records show on an HTTP sink exits 1 saying the downstream holds the records."""
        env = {
            **env,
            "RECEIVER_SINK": "https://downstream.example/records",
            "RECEIVER_FORWARD_SECRET": FORWARD_SECRET,
        }
        result = cli(env, "records", "show", "task_x")
        assert result.returncode == 1
        assert "the downstream system holds the records" in result.stderr

"""Reconciliation against a fake Rivya status API (issue 16): records reach their terminal
state through polling, polls and webhooks agree through the ordering guard, and the
reconciler is polite (429, 5xx, timeouts, 404, a refused key, the rate limit)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from receiver import ops
from receiver.keys import RECONCILE_PAUSE, all_watch_shards, keys_for, member_of
from receiver.reconcile.events import poll_event_id
from receiver.rivya import map_event
from receiver.settings import POLL_SOURCE, Settings
from tests.factories import base_env, envelope, generation, signed_headers
from tests.fake_rivya import FakeRivya, Reply
from tests.helpers import eventually
from tests.reconcilers import API_KEY, ReconcilerThread, cli, metric, reconcile_env, watched
from tests.servers import ServiceThread

UPDATED = ("2026-05-10T00:00:20.000Z", "2026-05-10T00:01:00.000Z")


@pytest.fixture
def fake() -> Iterator[FakeRivya]:
    with FakeRivya() as server:
        yield server


def row(tmp_path: Path, task_id: str) -> dict[str, Any] | None:
    try:
        connection = sqlite3.connect(tmp_path / "records.db")
        connection.row_factory = sqlite3.Row
        found = connection.execute(
            "SELECT * FROM generations WHERE record_key = ?", (task_id,)
        ).fetchone()
    except sqlite3.OperationalError:  # the sink has not created its table yet
        return None
    return dict(found) if found is not None else None


def wait_status(tmp_path: Path, task_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
    eventually(
        lambda: (row(tmp_path, task_id) or {}).get("status") == status,
        timeout,
        f"{task_id} to be {status}",
    )
    found = row(tmp_path, task_id)
    assert found is not None
    return found


def content(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what differs between two events of the same state."""
    return {
        k: v for k, v in record.items() if k not in ("last_event_id", "applied_at", "status_rank")
    }


def expected(gen: dict[str, Any]) -> dict[str, Any]:
    """The record a generation maps to, in the SQLite sink's columns."""
    mapped = map_event(envelope(gen), "x", datetime.now(UTC)).record.to_json()
    mapped["result_urls"] = orjson.dumps(mapped["result_urls"]).decode()
    return content(mapped)


def event_hash(client: redis.Redis, source: str, event_id: str) -> dict[str, str]:
    member = member_of(source, event_id)
    fields = client.hgetall(keys_for(member, 1).event(member))
    return {k.decode(): v.decode() for k, v in fields.items() if k != b"body"}


def poll_id(gen: dict[str, Any]) -> str:
    return poll_event_id(gen["id"], gen["updated_at"], gen["status"])


def deliver(
    service: ServiceThread, gen: dict[str, Any], event_id: str, client: httpx.Client | None = None
) -> None:
    body = orjson.dumps(envelope(gen, event_id=f"evt_{event_id}"))
    post = client.post if client is not None else httpx.post
    answer = post(
        f"{service.url}/webhooks/rivya",
        content=body,
        headers=signed_headers(body, event_id=event_id),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text


def scrape(service: ServiceThread) -> str:
    return httpx.get(f"{service.admin_url}/metrics", timeout=10).text


def counter(text: str, name: str, **labels: str) -> float:
    return metric(text, name, **labels) or 0.0


class TestPolling:
    def test_a_task_that_never_gets_a_webhook_reaches_succeeded(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """Tracked right after submission, polled without any webhook: processing, then
        succeeded; the record is final, set by a rivya-poll event, and the watch is empty."""
        processing = generation("task_lost", "processing", UPDATED[0])
        succeeded = generation("task_lost", "succeeded", UPDATED[1])
        fake.script("task_lost", Reply.of(processing), Reply.of(succeeded))
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True, admin=True) as service:
            before = scrape(service)
            tracked = cli(env, "track", "task_lost")
            assert 0 == tracked.returncode, tracked.stderr
            assert "tracking 1 tasks (0 already watched)" in tracked.stdout
            record = wait_status(tmp_path, "task_lost", "succeeded")
            eventually(lambda: watched(clean_redis) == {}, what="the watch to end")
            after = scrape(service)
        assert expected(succeeded) == content(record)
        assert poll_id(succeeded) == record["last_event_id"]
        seen = fake.requests_for("task_lost")
        assert 2 == len(seen)
        assert {f"Bearer {API_KEY}"} == {s.headers["authorization"] for s in seen}
        assert {"applied"} == {
            event_hash(clean_redis, POLL_SOURCE, poll_id(g))["state"]
            for g in (processing, succeeded)
        }
        assert 1 == counter(after, "receiver_reconcile_records_fixed_total") - counter(
            before, "receiver_reconcile_records_fixed_total"
        ), "the succeeded poll fixed a record; the processing one does not count"
        assert 1 == counter(after, "receiver_reconcile_polls_total", outcome="terminal") - counter(
            before, "receiver_reconcile_polls_total", outcome="terminal"
        )
        assert 0 == metric(after, "receiver_reconcile_watched_tasks")

    def test_a_failed_task_keeps_its_error_and_credits(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """A failed generation found by polling keeps error_code, error_message and credits."""
        failed = generation(
            "task_failed",
            "failed",
            UPDATED[1],
            error={"code": "content_policy", "message": "the prompt was refused"},
            reserved_credits=2,
            final_credits=0,
        )
        fake.script("task_failed", Reply.of(failed))
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True):
            assert 0 == cli(env, "track", "task_failed").returncode
            record = wait_status(tmp_path, "task_failed", "failed")
        assert ("content_policy", "the prompt was refused") == (
            record["error_code"],
            record["error_message"],
        )
        assert (2, 0) == (record["reserved_credits"], record["final_credits"])
        assert expected(failed) == content(record)

    def test_an_unchanged_state_polled_again_is_a_duplicate(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """Polling an unchanged non-terminal state again stores no new event, and the next
        checks come further apart (backoff)."""
        processing = generation("task_slow", "processing", UPDATED[0])
        fake.script("task_slow", Reply.of(processing))
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True):
            assert 0 == cli(env, "track", "task_slow").returncode
            eventually(lambda: len(fake.requests_for("task_slow")) >= 4, what="four checks")
        starts = [seen.started for seen in fake.requests_for("task_slow")]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert gaps[2] > gaps[0] * 1.5, f"checks must back off: {gaps}"
        members = clean_redis.zrange(keys_for("x", 1).index, 0, -1)
        assert [member_of(POLL_SOURCE, poll_id(processing)).encode()] == members


class TestOrderingGuard:
    def test_webhook_and_poll_in_either_order_leave_the_same_record(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """A poll after a webhook and a webhook after a poll (one way round each, then 30
        tasks with both racing): every record is the same terminal state, and the later
        copy of a state is stale."""
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True) as service:
            # A webhook first, then a poll of the same state.
            first = generation("task_hook_first", "succeeded", UPDATED[1])
            fake.script("task_hook_first", Reply.of(first))
            deliver(service, first, "msg_hook_first")
            wait_status(tmp_path, "task_hook_first", "succeeded")
            assert 0 == cli(env, "track", "task_hook_first").returncode
            eventually(
                lambda: event_hash(clean_redis, POLL_SOURCE, poll_id(first)).get("state") == "stale"
            )
            # A poll first, then the webhook of the same state.
            second = generation("task_poll_first", "succeeded", UPDATED[1])
            fake.script("task_poll_first", Reply.of(second))
            assert 0 == cli(env, "track", "task_poll_first").returncode
            wait_status(tmp_path, "task_poll_first", "succeeded")
            deliver(service, second, "msg_poll_first")
            eventually(
                lambda: event_hash(clean_redis, "rivya", "msg_poll_first").get("state") == "stale"
            )
            # Both racing, with an older state in the mix on both sides.
            racing = self._race(service, env, fake, [f"task_race_{n:02d}" for n in range(30)])
            winners = set()
            for task_id, final in racing.items():
                record = wait_status(tmp_path, task_id, "succeeded")
                assert expected(final) == content(record)
                winners.add("poll" if record["last_event_id"].startswith("poll_") else "webhook")
            assert {"poll", "webhook"} == winners, "the race went both ways"
        assert "msg_hook_first" == row(tmp_path, "task_hook_first")["last_event_id"]  # type: ignore[index]
        assert poll_id(second) == row(tmp_path, "task_poll_first")["last_event_id"]  # type: ignore[index]
        assert expected(first) == content(row(tmp_path, "task_hook_first"))  # type: ignore[arg-type]
        assert expected(second) == content(row(tmp_path, "task_poll_first"))  # type: ignore[arg-type]
        eventually(lambda: watched(clean_redis) == {}, what="every watch to end")

    def _race(
        self, service: ServiceThread, env: dict[str, str], fake: FakeRivya, tasks: list[str]
    ) -> dict[str, dict[str, Any]]:
        rng = random.Random(16)
        finals: dict[str, dict[str, Any]] = {}
        jobs = []
        # One client for all: a client per request spends most of its time building an
        # SSL context, which stretches the race out instead of making it one.
        client = httpx.Client()
        for task_id in tasks:
            older = generation(task_id, "processing", UPDATED[0])
            final = generation(task_id, "succeeded", UPDATED[1])
            finals[task_id] = final
            replies = [Reply.of(older), Reply.of(final)]
            rng.shuffle(replies)
            fake.script(task_id, *replies, Reply.of(final))
            # Spread over the second the polls take, so either may come first.
            for gen, delay in ((older, rng.uniform(0, 1)), (final, rng.uniform(0, 1))):
                event_id = f"msg_{task_id}_{gen['status']}"
                jobs.append(functools.partial(self._later, delay, service, gen, event_id, client))
        rng.shuffle(jobs)
        assert 0 == cli(env, "track", *tasks).returncode
        with client, ThreadPoolExecutor(16) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()
        return finals

    @staticmethod
    def _later(
        delay: float,
        service: ServiceThread,
        gen: dict[str, Any],
        event_id: str,
        client: httpx.Client,
    ) -> None:
        time.sleep(delay)
        deliver(service, gen, event_id, client)


class TestPoliteness:
    def test_429_with_retry_after_pauses_every_poll(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """After a 429 with Retry-After: 1, no request reaches Rivya for a second (for any
        task), then polling resumes and every task finishes."""
        tasks = [f"task_429_{n}" for n in range(6)]
        for task_id in tasks:
            done = Reply.of(generation(task_id, "succeeded", UPDATED[1]))
            fake.script(task_id, done)
        fake.script(tasks[0], Reply(429, {"error": "slow down"}, headers={"Retry-After": "1"}),
                    Reply.of(generation(tasks[0], "succeeded", UPDATED[1])))  # fmt: skip
        env = reconcile_env(tmp_path, redis_url, fake, RECEIVER_RECONCILE_RATE="4/s")
        with ServiceThread(Settings.from_env(env), run_worker=True):
            assert 0 == cli(env, "track", tasks[0]).returncode
            time.sleep(0.1)
            assert 0 == cli(env, "track", *tasks[1:]).returncode
            for task_id in tasks:
                wait_status(tmp_path, task_id, "succeeded")
        seen = sorted(fake.snapshot(), key=lambda s: s.started)
        [limited] = [s for s in seen if s.status == 429]
        after = [s.started - limited.finished for s in seen if s.started > limited.finished]
        assert after, "polling resumed"
        assert min(after) >= 0.95, f"a request came {min(after):.3f} s after the 429"
        assert len(seen) == len(tasks) + 1

    def test_5xx_and_timeouts_are_retried(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """503 then 500, and an answer slower than the timeout: both tasks are retried with
        backoff until their state comes back."""
        fake.script(
            "task_5xx",
            Reply(503, {"error": "unavailable"}),
            Reply(500, {"error": "oops"}),
            Reply.of(generation("task_5xx", "succeeded", UPDATED[1])),
        )
        fake.script(
            "task_slow_api",
            Reply.of(generation("task_slow_api", "processing", UPDATED[0]), delay=2.0),
            Reply.of(generation("task_slow_api", "succeeded", UPDATED[1])),
        )
        env = reconcile_env(tmp_path, redis_url, fake)
        worker_only = Settings.from_env({**env, "RECEIVER_RIVYA_API_KEY": ""})
        with (
            ServiceThread(worker_only, run_worker=True),
            ReconcilerThread(Settings.from_env(env), timeout_seconds=0.5),
        ):
            assert 0 == cli(env, "track", "task_5xx", "task_slow_api").returncode
            wait_status(tmp_path, "task_5xx", "succeeded")
            wait_status(tmp_path, "task_slow_api", "succeeded")
        assert [503, 500, 200] == [s.status for s in fake.requests_for("task_5xx")]
        slow = sorted(fake.requests_for("task_slow_api"), key=lambda s: s.started)
        assert 2 == len(slow)
        assert slow[1].started - slow[0].started < 1.5, "retried after the timeout, not the answer"

    def test_404_ends_the_watch_with_a_dead_unknown_task_event(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """A task Rivya does not know ends its watch with one dead event, unknown_task."""
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True):
            assert 0 == cli(env, "track", "task_nobody").returncode
            eventually(lambda: watched(clean_redis) == {} and fake.count() == 1)
            time.sleep(1.0)  # several check intervals: no further request may come
            listed = cli(env, "events", "list", "--source", POLL_SOURCE, "--json")
        assert 1 == fake.count()
        [dead] = orjson.loads(listed.stdout)
        assert ("dead", "unknown_task", "task_nobody") == (
            dead["state"],
            dead["reason_code"],
            dead["record_key"],
        )
        assert "404" in dead["last_error"]

    def test_a_task_still_running_after_the_max_age_is_given_up(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """A task that stays processing past RECEIVER_RECONCILE_MAX_AGE is given up with a
        dead gave_up event that says so; the record keeps its last state."""
        fake.script("task_stuck", Reply.of(generation("task_stuck", "processing", UPDATED[0])))
        env = reconcile_env(tmp_path, redis_url, fake, RECEIVER_RECONCILE_MAX_AGE="1500ms")
        with ServiceThread(Settings.from_env(env), run_worker=True):
            started = time.monotonic()
            assert 0 == cli(env, "track", "task_stuck").returncode
            eventually(lambda: watched(clean_redis) == {}, what="the watch to be given up")
            given_up_after = time.monotonic() - started
            listed = orjson.loads(
                cli(
                    env, "events", "list", "--source", POLL_SOURCE, "--status", "dead", "--json"
                ).stdout
            )
        assert given_up_after >= 1.4
        [dead] = listed
        assert ("gave_up", "reconcile.gave_up") == (dead["reason_code"], dead["type"])
        assert "not finished after" in dead["last_error"]
        assert "processing" in dead["last_error"]
        assert "processing" == (row(tmp_path, "task_stuck") or {}).get("status")

    @pytest.mark.parametrize("refusal", [401, 403])
    def test_a_refused_key_stops_polling_then_one_probe_resumes_it(
        self,
        tmp_path: Path,
        redis_url: str,
        clean_redis: redis.Redis,
        fake: FakeRivya,
        refusal: int,
    ) -> None:
        """401 or 403: no further request until the recheck; ``receiver status`` shows the
        refusal in words and in JSON, never the key; the recheck's probe finds the key
        accepted again and polling resumes."""
        tasks = [f"task_refused_{n}" for n in range(3)]
        for task_id in tasks:
            fake.script(task_id, Reply.of(generation(task_id, "succeeded", UPDATED[1])))
        fake.override = Reply(refusal, {"error": "invalid api key"})
        env = reconcile_env(tmp_path, redis_url, fake, RECEIVER_RECONCILE_RATE="1/s")
        settings = Settings.from_env(env)
        with ReconcilerThread(settings):
            assert 0 == cli(env, "track", *tasks).returncode
            eventually(lambda: fake.count() == 1)
            time.sleep(2.5)  # 1/s would have asked twice more by now
            assert 1 == fake.count(), "a refused key stops polling"
            status = asyncio.run(_watch_status(settings))
            assert (True, refusal, "refused", 3) == (
                status.key_refused,
                status.refused_status,
                status.pause_reason,
                status.watched,
            )
            assert status.paused_seconds > 50
            shown, as_json = cli(env, "status"), cli(env, "status", "--json")
            assert (0, 0) == (shown.returncode, as_json.returncode), shown.stderr
            assert f"API KEY REFUSED ({refusal}): polling stopped" in shown.stdout
            reported = orjson.loads(as_json.stdout)["reconcile"]
            assert (True, refusal) == (reported["key_refused"], reported["refused_status"])
            for output in (shown.stdout, shown.stderr, as_json.stdout, as_json.stderr):
                assert API_KEY not in output
            fake.override = None
            clean_redis.delete(RECONCILE_PAUSE)  # as if the minute until the recheck had passed
            eventually(lambda: watched(clean_redis) == {}, what="polling to resume")
            status = asyncio.run(_watch_status(settings))
        assert (False, None) == (status.key_refused, status.refused_status)
        assert 1 + len(tasks) == fake.count()

    def test_the_rate_limit_holds_over_200_due_tasks_and_two_reconcilers(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """200 tasks due at once, two reconcilers sharing RECEIVER_RECONCILE_RATE=50/s: the
        200 requests take about 4 s, spread out, and no one-second window at the fake holds
        much more than 50.

        The gate hands out slots 20 ms apart; a request whose sleep until its slot wakes
        late (a loaded machine) lands next to the following ones, so a window seen at the
        fake can exceed the rate by lateness x rate (56 seen once in a CI run). Without the
        gate the 200 would arrive within a fraction of a second."""
        tasks = [f"task_rate_{n:03d}" for n in range(200)]
        for task_id in tasks:
            fake.script(task_id, Reply.of(generation(task_id, "succeeded", UPDATED[1])))
        env = reconcile_env(tmp_path, redis_url, fake)
        settings = Settings.from_env(env)
        assert 0 == cli(env, "track", *tasks).returncode
        time.sleep(0.3)  # all due
        with ReconcilerThread(settings), ReconcilerThread(settings):
            eventually(lambda: fake.count() >= len(tasks), 30, "every task polled")
        starts = sorted(seen.started for seen in fake.snapshot())
        busiest = max(
            sum(1 for other in starts[n:] if other < start + 1.0) for n, start in enumerate(starts)
        )
        assert busiest <= 50 * 1.25, f"{busiest} requests in one second at 50/s"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert sorted(gaps)[len(gaps) // 2] >= 0.015, "spread out, not in bursts"
        assert starts[-1] - starts[0] >= 3.5, "200 requests at 50/s take about 4 s"
        assert sorted(tasks) == sorted(seen.task_id for seen in fake.snapshot())


async def _watch_status(settings: Settings) -> ops.WatchStatus:
    from receiver.runtime import Runtime

    runtime = await Runtime.open(settings)
    try:
        return await ops.watch_status(runtime.store)
    finally:
        await runtime.aclose()


class TestResilience:
    def test_an_odd_watch_entry_does_not_stop_the_reconciler(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """A watch entry whose first-watched score is not whole milliseconds (written by
        hand, or by another tool) is claimed with the tasks due beside it: it is polled
        like them, and a task tracked beside it still reaches its terminal state (reading
        it with ``int()`` failed every claim that held it, the reconciler with it)."""
        for task_id in ("task_ok", "task_odd"):
            fake.script(task_id, Reply.of(generation(task_id, "succeeded", UPDATED[1])))
        shard = all_watch_shards(1)[0]
        clean_redis.zadd(shard.due, {"task_odd": 0})
        clean_redis.zadd(shard.since, {"task_odd": time.time() * 1000 + 0.5})
        env = reconcile_env(tmp_path, redis_url, fake)
        worker_only = Settings.from_env({**env, "RECEIVER_RIVYA_API_KEY": ""})
        with (
            ServiceThread(worker_only, run_worker=True),
            ReconcilerThread(Settings.from_env(env)),
        ):
            assert 0 == cli(env, "track", "task_ok").returncode
            wait_status(tmp_path, "task_ok", "succeeded")
            wait_status(tmp_path, "task_odd", "succeeded")
            eventually(lambda: watched(clean_redis) == {}, what="both watches to end")


class TestWorkerKeepsTheWatch:
    def test_a_failed_watch_write_keeps_its_events_pending_until_it_succeeds(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """The worker writes a batch's watch changes before it finishes the batch: while the
        watch cannot be written (its key holds the wrong type, so every script call fails)
        a queued event stays pending, not applied-and-unwatched; once the key is fixed the
        reclaim applies it again and the task is watched. Finishing first (or alongside)
        would drop the watch for good: nothing applies a finished event again."""
        since = all_watch_shards(1)[0].since
        clean_redis.set(since, "not a sorted set")
        env = base_env(tmp_path, redis_url, RECEIVER_VISIBILITY_TIMEOUT="1s")
        with ServiceThread(Settings.from_env(env), run_worker=True) as service:
            deliver(service, generation("task_w", "queued", UPDATED[0]), "w1")
            wait_status(tmp_path, "task_w", "queued")  # the sink took it; the watch failed
            time.sleep(2.5)  # two visibility timeouts: reclaimed and failed again
            assert "pending" == event_hash(clean_redis, "rivya", "w1")["state"]
            assert {} == watched(clean_redis)
            clean_redis.delete(since)
            eventually(
                lambda: event_hash(clean_redis, "rivya", "w1")["state"] == "applied",
                timeout=15,
                what="the reclaim to apply and finish the event",
            )
            assert ["task_w"] == list(watched(clean_redis))


class TestSurfaces:
    def test_rivya_poll_is_never_a_webhook_source(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """POST /webhooks/rivya-poll is 404 unknown_source, even correctly signed."""
        env = reconcile_env(tmp_path, redis_url, fake)
        body = orjson.dumps(envelope(generation("task_x")))
        with ServiceThread(Settings.from_env(env)) as service:
            answer = httpx.post(
                f"{service.url}/webhooks/{POLL_SOURCE}",
                content=body,
                headers=signed_headers(body),
            )
        assert (404, {"error": "unknown_source"}) == (answer.status_code, answer.json())

    def test_polled_events_list_show_and_replay_like_webhooks(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """events list/show and replay take --source rivya-poll; show says the event was
        polled (by reconcile, not signed); send-test refuses the source."""
        done = generation("task_shown", "succeeded", UPDATED[1])
        fake.script("task_shown", Reply.of(done))
        env = reconcile_env(tmp_path, redis_url, fake)
        with ServiceThread(Settings.from_env(env), run_worker=True):
            assert 0 == cli(env, "track", "task_shown").returncode
            wait_status(tmp_path, "task_shown", "succeeded")
            event_id = poll_id(done)
            listed = cli(env, "events", "list", "--source", POLL_SOURCE)
            shown = cli(env, "events", "show", event_id, "--source", POLL_SOURCE)
            as_json = orjson.loads(
                cli(env, "events", "show", event_id, "--source", POLL_SOURCE, "--json").stdout
            )
            replayed = cli(env, "replay", event_id, "--source", POLL_SOURCE)
            history = keys_for("x", 1).history(member_of(POLL_SOURCE, event_id))
            # ingest, applied, then the replay's pending and applied again
            eventually(lambda: clean_redis.llen(history) == 4, what="the replay to be applied")
            send = cli(env, "send-test", "--source", POLL_SOURCE)
            status_text = cli(env, "status").stdout
            status = orjson.loads(cli(env, "status", "--json").stdout)
        assert event_id in listed.stdout
        assert 0 == shown.returncode, shown.stderr
        assert "polled from Rivya's status API" in shown.stdout
        assert "by reconcile" in shown.stdout
        assert (POLL_SOURCE, None) == (as_json["source"], as_json["signed_at"])
        assert "reconcile" == as_json["history"][0]["by"]
        assert 0 == replayed.returncode, replayed.stderr
        assert "queued 1 of 1 events for replay" in replayed.stdout
        assert "applied" == event_hash(clean_redis, POLL_SOURCE, event_id)["state"]
        assert 2 == send.returncode
        assert "takes no webhooks" in send.stderr
        # status: a polled event is no accepted delivery; the reconcile part says what is on
        assert (None, 0, False) == (
            status["last_accepted_at"],
            status["reconcile"]["watched"],
            status["reconcile"]["key_refused"],
        )
        assert status["reconcile"]["last_polled_at"] is not None
        assert re.search(r"^reconcile:\s+0 watched \(0 due\)", status_text, re.MULTILINE)
        assert "last polled event 20" in status_text

    def test_track_refuses_what_cannot_be_a_task_id(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """`track` exits 2 naming the bad item, watching nothing; --json reports counts."""
        env = reconcile_env(tmp_path, redis_url, fake)
        bad = cli(env, "track", "task_ok", "has space")
        assert (2, "item 2 is not a task id") == (
            bad.returncode,
            bad.stderr.split(": ", 2)[-1][:23],
        )
        assert {} == watched(clean_redis)
        good = cli(env, "track", "task_ok", "task_ok", "task_two", "--json")
        assert 0 == good.returncode, good.stderr
        answer = orjson.loads(good.stdout)
        assert (2, 2, 0) == (answer["tracked"], answer["newly_watched"], answer["already_watched"])
        again = orjson.loads(cli(env, "track", "task_ok", "--json").stdout)
        assert (0, 1) == (again["newly_watched"], again["already_watched"])
        assert {"task_ok", "task_two"} == set(watched(clean_redis))

    def test_reconcile_needs_the_api_key(
        self, tmp_path: Path, redis_url: str, fake: FakeRivya
    ) -> None:
        """`receiver reconcile` without RECEIVER_RIVYA_API_KEY: one line naming it, exit 1."""
        env = reconcile_env(tmp_path, redis_url, fake, RECEIVER_RIVYA_API_KEY="")
        result = cli(env, "reconcile")
        assert 1 == result.returncode
        assert result.stderr.strip().splitlines() == [
            "receiver: configuration error: RECEIVER_RIVYA_API_KEY: required to poll Rivya's "
            "status API (or RECEIVER_RIVYA_API_KEY_FILE)"
        ]

    def test_the_header_carries_the_bare_key_when_it_is_not_authorization(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis, fake: FakeRivya
    ) -> None:
        """RECEIVER_RIVYA_API_KEY_HEADER=X-API-Key sends the bare key there, no Authorization."""
        fake.script("task_hdr", Reply.of(generation("task_hdr", "succeeded", UPDATED[1])))
        env = reconcile_env(tmp_path, redis_url, fake, RECEIVER_RIVYA_API_KEY_HEADER="X-API-Key")
        with ReconcilerThread(Settings.from_env(env)):
            assert 0 == cli(env, "track", "task_hdr").returncode
            eventually(lambda: fake.count() == 1)
        [seen] = fake.snapshot()
        assert API_KEY == seen.headers["x-api-key"]
        assert "authorization" not in seen.headers

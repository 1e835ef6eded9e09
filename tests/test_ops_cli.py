"""The operator CLI (SPEC §7, §9), run as real processes against a real Redis and service.

One service runs at a time on this module's Redis database (several would share one
queue and take each other's events); ``Services.start`` restarts it only when a test
needs different settings, so tests are grouped by configuration in file order. Tests use
fresh task and event ids instead of flushing Redis under the running service.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest
import redis
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.embedded import EmbeddedRedis
from receiver.keys import keys_for, member_of
from tests.conftest import TEST_SECRET, free_port, wait_for_port
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually

SOURCE = "rivya"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"forward-secret-for-the-http-sink").decode()
SECRET_IN_BODY = "rvya_sk_test_9f8e7d6c5b4a3210"
SIGNED_URL = "https://cdn.example/x.png?X-Amz-Signature=abc"
WAIT_SECONDS = 15.0


# -- processes ---------------------------------------------------------------------------


@dataclass
class Service:
    """A running ``receiver serve`` and the environment it (and the CLI) runs with."""

    key: tuple[tuple[str, str], ...]
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/{SOURCE}"


class Services:
    """Starts one service at a time; reuses it while the requested settings are the same."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.workdir = workdir
        self.redis_url = redis_url
        self.current: Service | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return base_env(self.workdir, self.redis_url, RECEIVER_LOG_LEVEL="warning", **extra)

    def start(self, **extra: str) -> Service:
        key = tuple(sorted(extra.items()))
        if self.current is not None and self.current.key == key:
            return self.current
        self.stop()
        port = free_port()
        env = self.env(**extra)
        log_path = self.workdir / f"serve-{port}.log"
        service = Service(key, serve(env, port, log_path), port, env, log_path)
        self.current = service
        try:
            wait_for_port(port)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"serve did not start:\n{log_path.read_text()}") from None
        return service

    def stop(self) -> None:
        if self.current is not None:
            process, self.current = self.current.process, None
            terminate(process)


def serve(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``receiver serve`` on ``port``, its output going to ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
            # Tests run side by side: no one may take the default admin port 8081.
            env={"RECEIVER_ADMIN_ADDR": "", **env},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def terminate(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m receiver ARGS`` with stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_json(env: dict[str, str], *args: str) -> Any:
    result = cli(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


# -- events and state --------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def post(service: Service, body: bytes, event_id: str) -> httpx.Response:
    """Deliver ``body`` signed like Rivya, with ``event_id`` as the webhook-id."""
    return httpx.post(service.url, content=body, headers=signed_headers(body, event_id), timeout=10)


def deliver(service: Service, gen: dict[str, Any]) -> str:
    """Deliver one generation event; return its event id."""
    event_id = new_id("evt")
    response = post(service, orjson.dumps(envelope(gen, event_id)), event_id)
    assert response.status_code == 202, response.text
    return event_id


def event_key(event_id: str) -> str:
    member = member_of(SOURCE, event_id)
    return keys_for(member, 1).event(member)


def history_key(event_id: str) -> str:
    member = member_of(SOURCE, event_id)
    return keys_for(member, 1).history(member)


def stream_key() -> str:
    return keys_for(member_of(SOURCE, "x"), 1).stream


def state_of(rdb: redis.Redis, event_id: str) -> str | None:
    value = rdb.hget(event_key(event_id), "state")
    return value.decode() if value is not None else None


def wait_state(rdb: redis.Redis, event_id: str, state: str) -> None:
    eventually(lambda: state_of(rdb, event_id) == state, WAIT_SECONDS, f"{event_id} to be {state}")


def history(rdb: redis.Redis, event_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(item) for item in rdb.lrange(history_key(event_id), 0, -1)]


def wait_replayed(rdb: redis.Redis, event_id: str, state: str) -> None:
    """Wait until the last history line is the worker's outcome after a replay."""

    def done() -> bool:
        lines = history(rdb, event_id)
        replayed = [i for i, line in enumerate(lines) if str(line["by"]).startswith("replay:")]
        return bool(replayed) and lines[-1]["state"] == state and len(lines) > replayed[-1] + 1

    eventually(done, WAIT_SECONDS, f"{event_id} to be replayed and end {state}")


def record(workdir: Path, record_key: str) -> dict[str, Any] | None:
    with sqlite3.connect(workdir / "records.db") as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT * FROM generations WHERE record_key = ?", (record_key,)
        ).fetchone()
    return dict(row) if row is not None else None


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data dir and SQLite sink of every service and CLI run in this module."""
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="module")
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the module's Redis database, flushed once before any service starts."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def services(workdir: Path, redis_url: str, rdb: redis.Redis) -> Iterator[Services]:
    """The module's service starter; stops the last service at the end."""
    manager = Services(workdir, redis_url)
    yield manager
    manager.stop()


@pytest.fixture
def service(services: Services) -> Service:
    """The service with default settings (SQLite sink, plaintext bodies)."""
    return services.start()


@dataclass(frozen=True)
class Seeded:
    ids: dict[str, str]
    tasks: dict[str, str]
    before: float
    after: float


@pytest.fixture(scope="module")
def seeded(services: Services, rdb: redis.Redis) -> Seeded:
    """Three events delivered in order: ok (applied), failed (applied), dead (unmappable)."""
    service = services.start()
    before = time.time() - 0.01
    tasks = {"ok": new_id("task"), "failed": new_id("task")}
    ids = {
        "ok": deliver(service, generation(tasks["ok"])),
        "failed": deliver(service, generation(tasks["failed"], status="failed")),
    }
    dead_id = new_id("evt")
    body = orjson.dumps({"id": dead_id, "type": "generation.succeeded", "data": {"x": 1}})
    assert post(service, body, dead_id).status_code == 202
    ids["dead"] = dead_id
    wait_state(rdb, ids["ok"], "applied")
    wait_state(rdb, ids["failed"], "applied")
    wait_state(rdb, ids["dead"], "dead")
    return Seeded(ids, tasks, before, time.time() + 0.01)


@pytest.fixture(scope="module")
def secret_event(services: Services, rdb: redis.Redis) -> str:
    """An applied event whose body holds an API key and a signed file URL."""
    service = services.start()
    gen = generation(
        note=f"retry with {SECRET_IN_BODY}",
        result={"primary_url": SIGNED_URL, "urls": [SIGNED_URL]},
    )
    event_id = deliver(service, gen)
    wait_state(rdb, event_id, "applied")
    return event_id


# -- events list / show ------------------------------------------------------------------

EVERYTHING = {"ok", "failed", "dead"}


class TestEventsList:
    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--status", "applied"], {"ok", "failed"}),
            (["--status", "dead"], {"dead"}),
            (["--type", "generation.failed"], {"failed"}),
            (["--type", "generation.*"], EVERYTHING),
            (["--record", "{task_ok}"], {"ok"}),
            (["--since", "10m"], EVERYTHING),
            (["--since", "{before}"], EVERYTHING),
            (["--since", "{after}"], set()),
            (["--until", "{before}"], set()),
            (["--since", "{before}", "--until", "{after}", "--limit", "2"], {"dead", "failed"}),
            (["--status", "applied", "--record", "{task_failed}"], {"failed"}),
        ],
        ids=[
            "status-applied",
            "status-dead",
            "type",
            "type-pattern",
            "record",
            "since-duration",
            "since-iso",
            "since-after-all",
            "until-before-all",
            "limit-newest-first",
            "combined",
        ],
    )
    def test_filters(
        self, seeded: Seeded, services: Services, args: list[str], expected: set[str]
    ) -> None:
        """Each filter selects exactly the matching seeded events, newest first."""
        values = {
            "task_ok": seeded.tasks["ok"],
            "task_failed": seeded.tasks["failed"],
            "before": iso(seeded.before),
            "after": iso(seeded.after),
        }
        listed = cli_json(services.env(), "events", "list", *[a.format(**values) for a in args])
        by_id = {event_id: name for name, event_id in seeded.ids.items()}
        found = [by_id[item["event_id"]] for item in listed if item["event_id"] in by_id]
        assert expected == set(found)
        newest_first = ["dead", "failed", "ok"]
        assert sorted(found, key=newest_first.index) == found

    def test_json_fields(self, seeded: Seeded, services: Services) -> None:
        """``--json`` prints the SPEC §9 fields, with received_at as ISO 8601."""
        listed = cli_json(services.env(), "events", "list", "--status", "dead")
        item = next(entry for entry in listed if entry["event_id"] == seeded.ids["dead"])
        assert {
            "event_id",
            "state",
            "type",
            "record_key",
            "received_at",
            "attempts",
            "last_error",
        } <= set(item)
        assert (item["state"], item["last_error"]) == ("dead", "unmappable: no_generation_object")
        received = datetime.fromisoformat(item["received_at"].replace("Z", "+00:00"))
        assert seeded.before <= received.timestamp() <= seeded.after

    def test_plain_table(self, seeded: Seeded, services: Services) -> None:
        """Without a terminal the list is a plain table with a header row."""
        result = cli(services.env(), "events", "list", "--record", seeded.tasks["ok"])
        assert result.returncode == 0
        header, row = result.stdout.splitlines()
        assert header.split() == ["EVENT_ID", "STATE", "TYPE", "RECORD_KEY", "AGE", "REASON"]
        assert [seeded.ids["ok"], "applied", "generation.succeeded", seeded.tasks["ok"]] == (
            row.split()[:4]
        )

    @pytest.mark.parametrize(
        ("args", "named"),
        [
            (["--since", "yesterdayish"], "--since"),
            (["--until", "2026-13-45"], "--until"),
            (["--status", "bogus"], "--status"),
            (["--limit", "0"], "--limit"),
            (["--since", "1h", "--until", "2h"], "--since"),
            (["--source", "nosuch"], "nosuch"),
        ],
        ids=["since", "until", "status", "limit", "since-after-until", "source"],
    )
    def test_bad_filter_exits_2(self, services: Services, args: list[str], named: str) -> None:
        """A malformed filter is a usage error (exit 2) naming what is wrong."""
        result = cli(services.env(), "events", "list", *args)
        assert result.returncode == 2
        assert named in result.stderr
        assert "Traceback" not in result.stderr


class TestEventsShow:
    def test_json(self, seeded: Seeded, services: Services) -> None:
        """``show --json`` holds the summary, the history and the parsed body."""
        shown = cli_json(services.env(), "events", "show", seeded.ids["ok"])
        assert ("applied", 1, seeded.tasks["ok"]) == (
            shown["state"],
            shown["attempts"],
            shown["record_key"],
        )
        assert [line["state"] for line in shown["history"]] == ["pending", "applied"]
        assert seeded.tasks["ok"] == shown["body"]["data"]["id"]

    @pytest.mark.parametrize("args", [["--json"], []], ids=["json", "text"])
    def test_redacts_body(self, secret_event: str, services: Services, args: list[str]) -> None:
        """Without --raw no API key or signed URL query reaches the output."""
        result = cli(services.env(), "events", "show", secret_event, *args)
        assert result.returncode == 0
        assert SECRET_IN_BODY not in result.stdout
        assert "X-Amz-Signature" not in result.stdout
        assert "https://cdn.example/x.png?[REDACTED]" in result.stdout

    def test_raw_prints_stored_body(self, secret_event: str, services: Services) -> None:
        """``--raw`` prints the stored bytes, with a warning on stderr."""
        result = cli(services.env(), "events", "show", secret_event, "--raw")
        assert result.returncode == 0
        assert SECRET_IN_BODY in result.stdout
        assert SIGNED_URL in orjson.loads(result.stdout)["data"]["result"]["primary_url"]
        assert "warning" in result.stderr

    def test_unknown_id_exits_1(self, services: Services) -> None:
        """An unknown event id is a failure (exit 1) with one clear line."""
        result = cli(services.env(), "events", "show", "evt_never_seen")
        assert (result.returncode, result.stdout) == (1, "")
        assert "evt_never_seen" in result.stderr


# -- send-test ---------------------------------------------------------------------------


class TestSendTest:
    @pytest.mark.parametrize("status", ["succeeded", "failed"])
    def test_applies_event(
        self, service: Service, rdb: redis.Redis, workdir: Path, status: str
    ) -> None:
        """send-test delivers a signed event that is stored and applied to the record."""
        task_id = new_id("task")
        result = cli(
            service.env, "send-test", "--url", service.url, "--status", status, "--task-id", task_id
        )
        assert result.returncode == 0, result.stderr
        assert "HTTP 202" in result.stdout
        match = re.search(r"event (evt_\w+)", result.stdout)
        assert match is not None
        event_id = match.group(1)
        wait_state(rdb, event_id, "applied")
        assert cli_json(service.env, "events", "show", event_id)["state"] == "applied"
        row = record(workdir, task_id)
        assert row is not None
        assert (status, event_id) == (row["status"], row["last_event_id"])

    def test_rejected_exits_1(self, service: Service) -> None:
        """A non-2xx answer (here 401 for a wrong secret) exits 1."""
        other = "whsec_" + base64.b64encode(b"not-the-receivers-secret-at-all!").decode()
        result = cli(service.env, "send-test", "--url", service.url, "--secret", other)
        assert result.returncode == 1
        assert "HTTP 401" in result.stdout
        assert other not in result.stdout + result.stderr

    def test_unreachable_exits_1(self, services: Services) -> None:
        """A connection error exits 1 with one line."""
        url = f"http://127.0.0.1:{free_port()}/webhooks/rivya"
        result = cli(services.env(), "send-test", "--url", url)
        assert result.returncode == 1
        assert "cannot reach" in result.stderr

    def test_public_key_only_exits_2(self, services: Services) -> None:
        """With only a whpk_ (verify-only) key and no --secret there is nothing to sign with."""
        public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        env = services.env(RECEIVER_WEBHOOK_SECRET="whpk_" + base64.b64encode(public).decode())
        result = cli(env, "send-test", "--url", f"http://127.0.0.1:{free_port()}/webhooks/rivya")
        assert result.returncode == 2
        assert "--secret" in result.stderr


# -- replay ------------------------------------------------------------------------------


def snapshot(rdb: redis.Redis, event_id: str) -> tuple[Any, ...]:
    """What a replay would change: the queue, the event's state and its history."""
    return (rdb.xlen(stream_key()), state_of(rdb, event_id), rdb.llen(history_key(event_id)))


class TestReplay:
    def test_needs_ids_or_filter(self, services: Services) -> None:
        """Neither ids nor a filter is a usage error."""
        assert cli(services.env(), "replay").returncode == 2

    def test_bulk_needs_yes_without_terminal(
        self, seeded: Seeded, services: Services, rdb: redis.Redis
    ) -> None:
        """A filter replay with stdin not a terminal and no --yes exits 2, touching nothing."""
        before = snapshot(rdb, seeded.ids["dead"])
        result = cli(services.env(), "replay", "--status", "dead")
        assert result.returncode == 2
        assert "--yes" in result.stderr
        assert before == snapshot(rdb, seeded.ids["dead"])

    @pytest.mark.parametrize("by_filter", [True, False], ids=["filter", "ids"])
    def test_dry_run_changes_nothing(
        self, seeded: Seeded, service: Service, rdb: redis.Redis, by_filter: bool
    ) -> None:
        """``--dry-run`` lists what would be replayed and leaves queue and states as they are."""
        event_id = seeded.ids["dead"]
        before = snapshot(rdb, event_id)
        selection = ["--status", "dead", "--since", iso(seeded.before)] if by_filter else [event_id]
        result = cli(service.env, "replay", *selection, "--dry-run")
        assert result.returncode == 0, result.stderr
        assert event_id in result.stdout
        assert "dry run: 1 events would be queued" in result.stdout
        assert before == snapshot(rdb, event_id)
        latest = cli_json(service.env, "events", "audit", "--limit", "1")[0]
        assert (latest["dry_run"], latest["matched"], latest["queued"]) == (True, 1, 0)

    def test_older_event_never_regresses(
        self, service: Service, rdb: redis.Redis, workdir: Path
    ) -> None:
        """Replaying an older event goes through the ordering guard: it ends stale."""
        task_id = new_id("task")
        newer = deliver(service, generation(task_id, updated_at="2026-05-10T00:02:00.000Z"))
        wait_state(rdb, newer, "applied")
        older = deliver(
            service, generation(task_id, status="queued", updated_at="2026-05-10T00:01:00.000Z")
        )
        wait_state(rdb, older, "stale")
        result = cli(service.env, "replay", older)
        assert result.returncode == 0, result.stderr
        wait_replayed(rdb, older, "stale")
        row = record(workdir, task_id)
        assert row is not None
        assert ("succeeded", newer) == (row["status"], row["last_event_id"])

    @pytest.mark.parametrize(
        ("args", "actor"),
        [(["--actor", "alice"], "alice"), ([], pwd.getpwuid(os.getuid()).pw_name)],
        ids=["explicit-actor", "os-user"],
    )
    def test_audited(
        self, seeded: Seeded, service: Service, rdb: redis.Redis, args: list[str], actor: str
    ) -> None:
        """Each replay leaves an audit entry: who, when, what, how many."""
        event_id = seeded.ids["ok"]
        started = time.time() - 1
        result = cli(service.env, "replay", event_id, *args)
        assert result.returncode == 0, result.stderr
        wait_replayed(rdb, event_id, "applied")
        entry = cli_json(service.env, "events", "audit", "--limit", "1")[0]
        expected = {
            "actor": actor,
            "source": SOURCE,
            "filter": {"event_ids": [event_id]},
            "ids": 1,
            "matched": 1,
            "queued": 1,
            "missing": 0,
            "dry_run": False,
            "completed": True,
        }
        assert expected == {key: entry[key] for key in expected}
        at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()
        assert started <= at <= time.time() + 1
        assert f"replay:{actor}" in [line["by"] for line in history(rdb, event_id)]
        named = cli(service.env, "events", "audit", "--limit", "1", "-o", "name")
        assert [entry["id"]] == named.stdout.splitlines()
        wide = cli(service.env, "events", "audit", "--limit", "1", "-o", "wide")
        assert wide.stdout.split()[:3] == ["ID", "AT", "ACTION"]

    def test_filter_replay_audits_filter(
        self, seeded: Seeded, service: Service, rdb: redis.Redis
    ) -> None:
        """A bulk replay with --yes requeues the matches and audits its filter."""
        task_id = seeded.tasks["failed"]
        result = cli(
            service.env,
            "replay",
            "--record",
            task_id,
            "--status",
            "applied",
            "--yes",
            "--rate",
            "50",
        )
        assert result.returncode == 0, result.stderr
        wait_replayed(rdb, seeded.ids["failed"], "applied")
        entry = cli_json(service.env, "events", "audit")[0]
        assert {"source": SOURCE, "status": "applied", "record": task_id} == entry["filter"]
        assert (entry["ids"], entry["matched"], entry["queued"]) == (0, 1, 1)

    def test_unknown_id_exits_1(self, services: Services) -> None:
        """Replaying an id that is not stored reports it and exits 1."""
        result = cli(services.env(), "replay", "evt_never_seen")
        assert result.returncode == 1
        assert "evt_never_seen" in result.stderr


# -- config check, sink init, gen-key ----------------------------------------------------


class TestConfig:
    def test_check_ok_prints_no_secret(self, services: Services, postgres_dsn: str) -> None:
        """A working configuration exits 0 and prints every secret masked."""
        sink_password = "pg-password-not-to-print"
        parts = urlsplit(postgres_dsn)
        netloc = f"{parts.username}:{sink_password}@{parts.hostname}:{parts.port or 5432}"
        sink_url = urlunsplit(parts._replace(netloc=netloc))
        fernet_key = Fernet.generate_key().decode()
        env = services.env(
            RECEIVER_SINK=sink_url,
            RECEIVER_ENCRYPTION_KEYS=fernet_key,
            RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
        )
        result = cli(env, "config", "check")
        assert result.returncode == 0, result.stdout + result.stderr
        output = result.stdout + result.stderr
        for secret in (TEST_SECRET, sink_password, fernet_key, FORWARD_SECRET):
            assert secret not in output
        lines = result.stdout.splitlines()
        assert any(line.startswith("redis: ok") for line in lines)
        assert any(line.startswith("sink: ok") for line in lines)

    def test_check_warns_about_persistence(self, services: Services) -> None:
        """The test Redis runs without appendonly: config check says what that risks."""
        result = cli(services.env(), "config", "check")
        assert result.returncode == 0
        assert any(
            line.startswith("WARNING: redis appendonly") for line in result.stdout.splitlines()
        )

    def test_check_warns_about_a_short_key(self, services: Services) -> None:
        """A webhook key under 16 bytes is accepted, and config check warns about it by
        position and length, without printing it."""
        short = "whsec_" + base64.b64encode(b"short-key-8").decode().rstrip("=")
        result = cli(services.env(RECEIVER_WEBHOOK_SECRET=short), "config", "check")
        assert result.returncode == 0, result.stdout + result.stderr
        assert (
            "WARNING: RECEIVER_WEBHOOK_SECRET: key 1: only 11 bytes of key material; "
            "use at least 16 (`receiver gen-secret` makes 32)"
        ) in result.stdout.splitlines()
        assert short.removeprefix("whsec_") not in result.stdout + result.stderr

    @pytest.mark.parametrize(
        ("appendfsync", "policy", "warning"),
        [
            ("everysec", "noeviction", "redis appendfsync is everysec"),
            ("no", "noeviction", "redis appendfsync is no"),
            ("always", "allkeys-lru", "redis maxmemory-policy is allkeys-lru, not noeviction"),
        ],
        ids=["everysec", "no", "allkeys-lru"],
    )
    def test_check_warns_about_a_lax_fsync_and_strict_fails(
        self, tmp_path: Path, appendfsync: str, policy: str, warning: str
    ) -> None:
        """appendfsync everysec or no loses acknowledged events in some crashes, an evicting
        Redis deletes them under memory pressure: config check warns (exit 0), --strict
        makes the warning a failure (exit 1)."""
        from tests.redis_proc import RedisProcess

        with RedisProcess(
            tmp_path / "redis",
            appendonly=True,
            appendfsync=appendfsync,
            extra_args=("--maxmemory-policy", policy),
        ) as server:
            env = base_env(tmp_path, server.url, RECEIVER_SINK="log:")
            lenient = cli(env, "config", "check")
            strict = cli(env, "config", "check", "--strict")
        warnings = [line for line in lenient.stdout.splitlines() if line.startswith("WARNING:")]
        assert (0, [f"WARNING: {warning}"]) == (
            lenient.returncode,
            [line[: len("WARNING: ") + len(warning)] for line in warnings],
        )
        assert 1 == strict.returncode
        assert "--strict" in strict.stderr

    def test_check_strict_passes_on_the_embedded_redis(self) -> None:
        """The embedded Redis (appendfsync always, noeviction) has nothing to warn about."""
        import shutil

        data_dir = Path(f"/tmp/rcv-strict-{time.time_ns()}")  # short: unix socket path limit
        try:
            result = cli(
                base_env(data_dir, None, RECEIVER_SINK="log:"), "config", "check", "--strict"
            )
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        assert (0, []) == (
            result.returncode,
            [line for line in result.stdout.splitlines() if line.startswith("WARNING:")],
        )

    def test_check_unreachable_redis_exits_1(self, services: Services) -> None:
        """An unreachable Redis fails the check with one clear ``redis`` line."""
        env = services.env(RECEIVER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        result = cli(env, "config", "check")
        assert result.returncode == 1
        assert any(line.startswith("redis: unreachable (") for line in result.stdout.splitlines())
        assert "Traceback" not in result.stderr

    def test_check_reports_every_error_at_once(self, services: Services) -> None:
        """Three bad variables: three ERROR lines naming each, exit 1, nothing probed."""
        env = {
            **services.env(),
            "RECEIVER_TOLERANCE_SECONDS": "soon",
            "RECEIVER_LOG_LEVEL": "loud",
            "RECEIVER_SINK": f"admin:{SECRET_IN_BODY}@db/records",
        }
        result = cli(env, "config", "check")
        assert result.returncode == 1
        errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR: ")]
        assert [
            "RECEIVER_TOLERANCE_SECONDS",
            "RECEIVER_SINK",
            "RECEIVER_LOG_LEVEL",
        ] == [line.removeprefix("ERROR: ").split(":")[0] for line in errors]
        assert "3 configuration error(s)" in result.stderr
        assert not any(line.startswith("redis:") for line in result.stdout.splitlines())
        assert SECRET_IN_BODY not in result.stdout + result.stderr

    def test_check_rejects_a_typo_in_the_config_file(
        self, services: Services, tmp_path: Path
    ) -> None:
        """``tolerence_seconds`` in the TOML file fails the check, naming the key and the
        key it probably meant, instead of silently keeping 300 s."""
        config_file = tmp_path / "receiver.toml"
        config_file.write_text(
            f'[sources.acme]\nsecret = "{TEST_SECRET}"\ntolerence_seconds = 60\n'
        )
        result = cli(services.env(RECEIVER_CONFIG=str(config_file)), "config", "check")
        assert result.returncode == 1
        assert (
            "ERROR: RECEIVER_CONFIG: sources.acme.tolerence_seconds: unknown key "
            "(did you mean tolerance_seconds?)"
        ) in result.stdout.splitlines()
        assert TEST_SECRET not in result.stdout + result.stderr

    def test_check_strict_fails_on_warnings(self, services: Services) -> None:
        """The test Redis runs without appendonly: a warning, exit 0, but 1 with --strict."""
        assert cli(services.env(), "config", "check").returncode == 0
        strict = cli(services.env(), "config", "check", "--strict")
        assert strict.returncode == 1
        assert "warning(s) and --strict" in strict.stderr

    def test_check_json(self, services: Services) -> None:
        """``--json`` prints one object: ok, errors, warnings, settings, checks; no secret."""
        good = cli(services.env(), "config", "check", "--json")
        assert good.returncode == 0, good.stderr
        report = orjson.loads(good.stdout)
        assert (report["ok"], report["valid"], report["errors"]) == (True, True, [])
        assert {"redis": True, "sink": True} == {c["name"]: c["ok"] for c in report["checks"]}
        assert any(w.startswith("redis appendonly") for w in report["warnings"])
        assert "Secret('**********')" in report["settings"]["source rivya"]
        assert TEST_SECRET not in good.stdout
        bad = cli({**services.env(), "RECEIVER_LOG_LEVEL": "loud"}, "config", "check", "--json")
        assert bad.returncode == 1
        report = orjson.loads(bad.stdout)
        assert (report["ok"], report["valid"]) == (False, False)
        assert [error.split(":")[0] for error in report["errors"]] == ["RECEIVER_LOG_LEVEL"]
        strict = cli(services.env(), "config", "check", "--json", "--strict")
        assert (strict.returncode, orjson.loads(strict.stdout)["ok"]) == (1, False)

    def test_sink_init_missing_database_is_one_line(
        self, services: Services, postgres_dsn: str
    ) -> None:
        """A PostgreSQL sink whose database does not exist fails at once with the
        server's words, one line, not pool warnings and a PoolTimeout."""
        missing = f"receiver_missing_{uuid.uuid4().hex[:8]}"
        sink_url = urlunsplit(urlsplit(postgres_dsn)._replace(path=f"/{missing}"))
        started = time.monotonic()
        result = cli(services.env(RECEIVER_SINK=sink_url), "sink", "init")
        assert result.returncode == 1
        assert result.stdout == ""
        assert [f'database "{missing}" does not exist'] == [
            line.rsplit(": ", 1)[1] for line in result.stderr.splitlines()
        ]
        assert "PoolTimeout" not in result.stderr
        assert time.monotonic() - started < 10  # the pool used to wait out its 10 s timeout

    def test_sink_init_creates_table(self, services: Services, tmp_path: Path) -> None:
        """``sink init`` creates the generations table."""
        path = tmp_path / "fresh.db"
        result = cli(services.env(RECEIVER_SINK=f"sqlite:///{path}"), "sink", "init")
        assert result.returncode == 0, result.stderr
        with sqlite3.connect(path) as connection:
            tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
        assert ("generations",) in tables

    def test_gen_key_prints_a_fernet_key(self, services: Services) -> None:
        """``gen-key`` prints a key RECEIVER_ENCRYPTION_KEYS accepts."""
        result = cli(services.env(), "gen-key")
        assert result.returncode == 0
        Fernet(result.stdout.strip())


# -- dead letters (service with a failing sink) ------------------------------------------


def test_dead_events_replay_after_sink_fixed(
    services: Services, rdb: redis.Redis, workdir: Path
) -> None:
    """Events that died on a broken sink are applied by a bulk replay once it is fixed."""
    broken = services.start(
        RECEIVER_SINK=f"http://127.0.0.1:{free_port()}/hook",
        RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
        RECEIVER_MAX_ATTEMPTS="1",
    )
    since = iso(time.time() - 0.01)
    tasks = [new_id("task"), new_id("task")]
    ids = [deliver(broken, generation(task)) for task in tasks]
    for event_id in ids:
        wait_state(rdb, event_id, "dead")
    dead = cli_json(broken.env, "events", "list", "--status", "dead", "--since", since)
    assert set(ids) == {item["event_id"] for item in dead}
    assert all("gave up after 1 attempts" in item["last_error"] for item in dead)

    fixed = services.start()
    result = cli(fixed.env, "replay", "--status", "dead", "--since", since, "--yes")
    assert result.returncode == 0, result.stderr
    assert "queued 2 of 2 events for replay" in result.stdout
    for event_id in ids:
        wait_replayed(rdb, event_id, "applied")
    for task, event_id in zip(tasks, ids, strict=True):
        row = record(workdir, task)
        assert row is not None
        assert ("succeeded", event_id) == (row["status"], row["last_event_id"])


# -- the embedded Redis -----------------------------------------------------------------


def test_cli_shares_or_starts_embedded_redis(tmp_path: Path) -> None:
    """Without RECEIVER_REDIS_URL the CLI reaches serve's embedded Redis, or starts its own."""
    env = base_env(tmp_path, None, RECEIVER_LOG_LEVEL="warning")
    port = free_port()
    process = serve(env, port, tmp_path / "serve.log")
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/webhooks/{SOURCE}"
        sent = cli(env, "send-test", "--url", url)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        match = re.search(r"event (evt_\w+)", sent.stdout)
        assert match is not None
        event_id = match.group(1)
        eventually(
            lambda: cli_json(env, "events", "show", event_id)["state"] == "applied",
            WAIT_SECONDS,
            "the test event to be applied",
        )
    finally:
        terminate(process)
    assert cli_json(env, "events", "show", event_id)["state"] == "applied"
    assert not EmbeddedRedis.for_data_dir(tmp_path).answers()  # stopped after the command


# -- retention ---------------------------------------------------------------------------


def test_retention_expires_event_and_dedup(services: Services, rdb: redis.Redis) -> None:
    """After the retention period the event is gone and the same delivery is new again, but
    the very bytes first sent (headers and all) are not: their timestamp is out of tolerance
    before the dedup entry expires (the shortest retention allowed is 2 x 3 s + 5 s; 3 s, not
    1 s, because signing floors the time to the second and the machine may be slow)."""
    service = services.start(RECEIVER_TOLERANCE_SECONDS="3", RECEIVER_RETENTION="11s")
    event_id = new_id("evt")
    body = orjson.dumps(envelope(generation(), event_id))
    first_copy = signed_headers(body, event_id)
    assert httpx.post(service.url, content=body, headers=first_copy).status_code == 202
    assert httpx.post(service.url, content=body, headers=first_copy).status_code == 200
    eventually(lambda: not rdb.exists(event_key(event_id)), WAIT_SECONDS, "the event to expire")
    assert not rdb.exists(history_key(event_id))
    assert cli(service.env, "events", "show", event_id).returncode == 1
    replayed = httpx.post(service.url, content=body, headers=first_copy)
    assert (401, "timestamp_out_of_tolerance") == (replayed.status_code, replayed.json()["error"])
    assert post(service, body, event_id).status_code == 202


# -- encryption at rest ------------------------------------------------------------------

OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def encrypted_event(services: Services, rdb: redis.Redis) -> tuple[str, bytes]:
    """An event stored while RECEIVER_ENCRYPTION_KEYS held only the old key."""
    service = services.start(RECEIVER_ENCRYPTION_KEYS=OLD_KEY)
    event_id = new_id("evt")
    body = orjson.dumps(envelope(generation(new_id("task")), event_id))
    assert post(service, body, event_id).status_code == 202
    wait_state(rdb, event_id, "applied")
    return event_id, body


class TestEncryption:
    def test_body_encrypted_at_rest(
        self, encrypted_event: tuple[str, bytes], rdb: redis.Redis
    ) -> None:
        """The stored body is ciphertext: not even its task id is readable in Redis."""
        event_id, body = encrypted_event
        stored, flag = rdb.hmget(event_key(event_id), "body", "encrypted")
        assert flag == b"1"
        task_id = orjson.loads(body)["data"]["id"].encode()
        assert stored is not None
        assert task_id not in stored
        assert b'"status"' not in stored

    def test_raw_show_and_replay_decrypt(
        self, encrypted_event: tuple[str, bytes], services: Services, rdb: redis.Redis
    ) -> None:
        """``show --raw`` decrypts the body, and a replay applies it again."""
        event_id, body = encrypted_event
        service = services.start(RECEIVER_ENCRYPTION_KEYS=OLD_KEY)
        shown = cli(service.env, "events", "show", event_id, "--raw")
        assert shown.returncode == 0, shown.stderr
        assert body.decode() == shown.stdout.strip()
        assert cli(service.env, "replay", event_id).returncode == 0
        wait_replayed(rdb, event_id, "applied")

    def test_rotation_then_reencrypt(
        self, encrypted_event: tuple[str, bytes], services: Services, rdb: redis.Redis
    ) -> None:
        """With the new key first old bodies still open; reencrypt moves them to the new key."""
        event_id, body = encrypted_event
        rotated = services.env(RECEIVER_ENCRYPTION_KEYS=f"{NEW_KEY} {OLD_KEY}")
        new_only = services.env(RECEIVER_ENCRYPTION_KEYS=NEW_KEY)
        old_only = services.env(RECEIVER_ENCRYPTION_KEYS=OLD_KEY)
        assert cli(new_only, "events", "show", event_id, "--raw").returncode == 1
        assert body.decode() == cli(rotated, "events", "show", event_id, "--raw").stdout.strip()

        result = cli(rotated, "events", "reencrypt", "--yes")
        assert result.returncode == 0, result.stderr

        assert body.decode() == cli(new_only, "events", "show", event_id, "--raw").stdout.strip()
        assert cli(old_only, "events", "show", event_id, "--raw").returncode == 1
        assert rdb.ttl(event_key(event_id)) > 0  # re-encryption kept the retention TTL

    def test_reencrypt_needs_yes_without_terminal(self, services: Services) -> None:
        """Re-encrypting everything asks first; without a terminal it needs --yes."""
        env = services.env(RECEIVER_ENCRYPTION_KEYS=NEW_KEY)
        assert cli(env, "events", "reencrypt").returncode == 2


def test_cli_logs_go_to_stderr(seeded: Seeded, service: Service) -> None:
    """A command's log lines (the replay audit) go to stderr; stdout holds only its output."""
    env = {**service.env, "RECEIVER_LOG_LEVEL": "info"}
    result = cli(env, "replay", seeded.ids["dead"], "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "replay_audited" in result.stderr
    assert "replay_audited" not in result.stdout

"""Recovery from faults with real processes: every fault ends with the service healthy again
and nothing acknowledged lost (issue 13). Redis here is always the test's own server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from receiver.keys import all_shards, member_of
from tests.factories import base_env, event_body, signed_headers
from tests.helpers import eventually
from tests.redis_proc import RedisProcess
from tests.servers import ServiceProcess
from tests.test_crash_safety import wait_for_final_states

pytestmark = pytest.mark.slow

# What a delivery refused for want of storage says (README: "Redis unreachable or erroring"):
# the JSON error code and Retry-After in seconds (SPEC §3, §9).
UNAVAILABLE = ("storage_unavailable", "5")


def refusal_of(response: httpx.Response) -> tuple[object, str | None]:
    """A 503's error code (from its JSON body) and its Retry-After header."""
    try:
        code = response.json().get("error")
    except ValueError:
        code = response.text[:100]
    return code, response.headers.get("retry-after")


async def deliver_for(
    url: str,
    senders: int,
    seconds: float,
    prefix: str,
    refusals: list[tuple[object, str | None]] | None = None,
    transport_errors: list[str] | None = None,
) -> list[tuple[str, int]]:
    """``senders`` concurrent senders posting new events back to back for ``seconds``; each
    503's error code and Retry-After go to ``refusals``, and the exception of each request
    that got no answer (recorded as 599) to ``transport_errors``."""
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
                    if response.status_code == 503 and refusals is not None:
                        refusals.append(refusal_of(response))
                except httpx.HTTPError as exc:
                    answers.append((event_id, 599))
                    if transport_errors is not None:
                        transport_errors.append(f"{type(exc).__name__}: {exc}")

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
    and now and then a SIGKILL and restart): every answer is 2xx or 503 storage_unavailable
    with Retry-After, no traceback, every 2xx is stored, and once the kills stop every
    delivery is accepted. The worker inside serve lives through the same kills: every
    acknowledged event reaches its final state within 15 s of the last kill, under a 60 s
    visibility timeout, so no event a live worker held waits for a reclaim after a Redis
    blip."""
    durable = ("--appendfsync", "always")
    with RedisProcess(tmp_path / "redis", appendonly=True, extra_args=durable) as server:
        env = base_env(
            tmp_path, server.url, RECEIVER_LOG_LEVEL="warning", RECEIVER_VISIBILITY_TIMEOUT="60s"
        )
        with ServiceProcess(env, tmp_path / "serve.log", "serve") as service:
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
            refusals: list[tuple[object, str | None]] = []
            no_answer: list[str] = []
            try:
                answers = asyncio.run(
                    deliver_for(service.url, 200, 8, "msg_kill", refusals, no_answer)
                )
            finally:
                stop.set()
                thread.join()
            after = asyncio.run(deliver_all(service.url, 50, "msg_after"))
            acknowledged = [event_id for event_id, status in answers if status in (200, 202)]
            with redis.Redis(port=server.port) as client:
                kept = stored(client, acknowledged)
                assert all(kept), f"{kept.count(False)} acknowledged events lost"
                wait_for_final_states(client, set(acknowledged), timeout=15)
            output = service.output()
    statuses = Counter(status for _, status in answers)
    assert (True, True) == (kills > 20, statuses[503] > 0), f"kills missed: {statuses}"
    assert {UNAVAILABLE} == set(refusals)
    assert {} == {code: n for code, n in statuses.items() if code >= 500 and code != 503}, (
        Counter(no_answer),
        output[-3000:],
    )
    assert "Traceback" not in output
    assert len(acknowledged) > 100
    assert {202} == {status for _, status in after}


# -- the embedded Redis: stale pid files, deaths, a full disk -----------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data dir with a short path (a unix socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rcv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def embedded_env(data_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return base_env(data_dir, None, RECEIVER_SINK=f"sqlite:///{tmp_path}/records.db", **extra)


def post_answer(
    service: ServiceProcess, event_id: str, body: bytes | None = None
) -> httpx.Response | None:
    """The answer to one signed delivery, or None when there was none."""
    body = body or event_body()
    try:
        return httpx.post(
            f"{service.url}/webhooks/rivya",
            content=body,
            headers=signed_headers(body, event_id=event_id),
            timeout=10,
        )
    except httpx.HTTPError:
        return None


def post(service: ServiceProcess, event_id: str, body: bytes | None = None) -> int:
    response = post_answer(service, event_id, body)
    return 599 if response is None else response.status_code


def metric(service: ServiceProcess, name: str) -> float:
    """A sample from /metrics, on the admin listener (start the service with admin=True)."""
    return metric_of(service.admin_url, name)


def metric_of(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def ready(service: ServiceProcess) -> bool:
    try:
        return httpx.get(f"{service.url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def log_lines(service: ServiceProcess, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in service.output().splitlines():
        if line.startswith("{") and f'"event":"{event}"' in line:
            lines.append(orjson.loads(line))
    return lines


def redis_pid(data_dir: Path) -> int:
    return int((data_dir / "redis" / "redis.pid").read_text())


def wait_gone(pid: int) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    eventually(gone, what=f"pid {pid} to exit")


def test_embedded_redis_killed_under_serve_comes_back(short_dir: Path, tmp_path: Path) -> None:
    """kill -9 of the embedded redis-server under serve: it is restarted (logged with the
    reason, counted on /metrics), /healthz stays 200, the stored event is still there, and
    the next deliveries answer 202."""
    body = event_body()
    service = ServiceProcess(embedded_env(short_dir, tmp_path), tmp_path / "serve.log", admin=True)
    with service:
        first = post(service, "msg_before_kill", body)
        old_pid = redis_pid(short_dir)
        os.kill(old_pid, signal.SIGKILL)
        eventually(
            lambda: (
                metric(service, "receiver_embedded_redis_restarts_total") >= 1 and ready(service)
            ),
            what="the embedded Redis to come back",
        )
        health = httpx.get(f"{service.url}/healthz").status_code
        again = post(service, "msg_before_kill", body)
        after = [post(service, f"msg_after_kill_{n}") for n in range(20)]
        died = log_lines(service, "embedded_redis_died")
        restarted = log_lines(service, "embedded_redis_restarted")
        new_pid = redis_pid(short_dir)
    assert (202, 200, 200) == (first, health, again)
    assert [202] * 20 == after
    assert ["killed by SIGKILL"] == [line["reason"] for line in died]
    assert (1, True) == (len(restarted), new_pid != old_pid)


def test_serve_and_cli_start_over_a_stale_pid_file(short_dir: Path, tmp_path: Path) -> None:
    """serve and its redis-server both killed -9 leave a pid file naming a process that is
    gone and a dead socket: serve starts again and so does a CLI command, and the event
    stored before is still there."""
    env = embedded_env(short_dir, tmp_path)
    body = event_body()

    def kill_both(service: ServiceProcess) -> None:
        pid = redis_pid(short_dir)
        service.kill()
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        assert (short_dir / "redis" / "redis.pid").exists()
        assert (short_dir / "redis" / "redis.sock").exists()

    service = ServiceProcess(env, tmp_path / "serve.log").start()
    first = post(service, "msg_stale", body)
    kill_both(service)
    with ServiceProcess(env, tmp_path / "serve2.log", port=service.port) as restarted:
        again = post(restarted, "msg_stale", body)
        kill_both(restarted)
    listed = subprocess.run(
        [sys.executable, "-m", "receiver", "events", "list", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (202, 200) == (first, again)
    assert (0, "") == (listed.returncode, "Traceback" if "Traceback" in listed.stderr else "")
    assert ["msg_stale"] == [event["event_id"] for event in orjson.loads(listed.stdout)]


@pytest.mark.parametrize("other", ["sleep", "redis-server"])
def test_a_reused_pid_is_never_signalled(short_dir: Path, tmp_path: Path, other: str) -> None:
    """The pid file names a live process that is not our server (its pid was reused, here
    by a sleep or by another redis-server): serve starts its own Redis, and the other
    process is never signalled."""
    if other == "sleep":
        process = subprocess.Popen(["sleep", "120"])

        def stop_other() -> None:
            process.kill()
            process.wait()

    else:
        server = RedisProcess(tmp_path / "other").start()
        assert server.process is not None
        process, stop_other = server.process, server.stop
    try:
        directory = short_dir / "redis"
        directory.mkdir(mode=0o700)
        (directory / "redis.pid").write_text(f"{process.pid}\n")
        with socket.socket(socket.AF_UNIX) as dead:  # a socket file nobody listens on
            dead.bind(str(directory / "redis.sock"))
        with ServiceProcess(embedded_env(short_dir, tmp_path), tmp_path / "serve.log") as service:
            accepted = post(service, "msg_reused_pid")
            ours = redis_pid(short_dir)
        still_running = process.poll() is None
    finally:
        stop_other()
    assert (202, True, True) == (accepted, ours != process.pid, still_running)


def test_embedded_redis_that_cannot_come_back_fails_healthz(
    short_dir: Path, tmp_path: Path
) -> None:
    """The embedded Redis dies and its append-only file is corrupt, so every restart fails:
    each attempt is logged with Redis's own reason, then /healthz answers 503
    embedded_redis_down on both listeners (the deploy files' supervisors ask the admin one),
    and serve still stops cleanly."""
    env = embedded_env(short_dir, tmp_path)
    service = ServiceProcess(env, tmp_path / "serve.log", admin=True).start()
    try:
        assert 202 == post(service, "msg_before_corruption")
        pid = redis_pid(short_dir)
        os.kill(pid, signal.SIGSTOP)  # nothing more reaches the file while we replace it
        (short_dir / "redis" / "appendonly.aof").write_bytes(b"not an append-only file\n")
        os.kill(pid, signal.SIGKILL)
        eventually(
            lambda: httpx.get(f"{service.url}/healthz").status_code == 503,
            timeout=60,
            what="/healthz to fail",
        )
        health = httpx.get(f"{service.url}/healthz").json()
        admin_health = httpx.get(f"{service.admin_url}/healthz")
    finally:
        code = service.stop()
    failures = [line["reason"] for line in log_lines(service, "embedded_redis_restart_failed")]
    assert {"error": "embedded_redis_down"} == health
    assert (503, health) == (admin_health.status_code, admin_health.json())
    assert 5 == len(failures)
    assert all("Bad file format reading the append only file" in reason for reason in failures)
    assert 1 == len(log_lines(service, "embedded_redis_gave_up"))
    assert 0 == code
    assert "Traceback" not in service.output()


def test_full_disk_kills_redis_and_serve_recovers_once_space_is_freed(tmp_path: Path) -> None:
    """The data dir's filesystem (an 8 MiB tmpfs) fills up: the embedded Redis exits on the
    failed AOF write, deliveries get 503 storage_unavailable with Retry-After meanwhile;
    once space is freed it is back by
    itself, every event acknowledged before, during and after is stored and applied."""
    mount = Path(tempfile.mkdtemp(prefix="rcv-disk-", dir="/tmp"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {mounted.stderr.strip()}")
    acknowledged: list[str] = []
    service = ServiceProcess(
        embedded_env(mount, tmp_path, RECEIVER_RETRY_BASE="100ms"), tmp_path / "serve.log"
    ).start()
    try:
        for n in range(50):
            if post(service, f"msg_disk_before_{n}") == 202:
                acknowledged.append(f"msg_disk_before_{n}")
        filler = mount / "filler"
        # Unbuffered: the write that meets ENOSPC raises here, none is left for close().
        with open(filler, "wb", buffering=0) as fill, contextlib.suppress(OSError):
            while True:
                fill.write(b"\0" * 65536)
        during: Counter[int] = Counter()
        refusals: set[tuple[object, str | None]] = set()
        for n in range(200):
            answer = post_answer(
                service, f"msg_disk_full_{n}", event_body(client_request_id="x" * 4000)
            )
            status = 599 if answer is None else answer.status_code
            during[status] += 1
            if answer is not None and status == 503:
                refusals.add(refusal_of(answer))
            if status in (200, 202):
                acknowledged.append(f"msg_disk_full_{n}")
            if log_lines(service, "embedded_redis_died"):
                break
        died = log_lines(service, "embedded_redis_died")
        filler.unlink()
        eventually(lambda: ready(service), what="readiness after the disk was freed")
        after = [post(service, f"msg_disk_after_{n}") for n in range(20)]
        acknowledged += [f"msg_disk_after_{n}" for n, code in enumerate(after) if code == 202]
        with redis.Redis(unix_socket_path=str(mount / "redis" / "redis.sock")) as client:
            states = wait_for_final_states(client, set(acknowledged), timeout=60)
        health = httpx.get(f"{service.url}/healthz").status_code
    finally:
        service.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)
    assert died, f"Redis never died of the full disk: {dict(during)}"
    assert "exit status 1" in died[0]["reason"]
    assert during[503] >= 1
    assert {UNAVAILABLE} == refusals
    assert ([202] * 20, 200) == (after, health)
    assert {b"applied"} == set(states.values())


# -- Redis that is frozen, full, read-only, evicting or locked down ------------------------


def run_receiver(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def timed_posts(url: str, count: int) -> list[tuple[int, float, str | None, object]]:
    """``count`` concurrent deliveries: (status, seconds to the answer, Retry-After, the
    JSON body's error code)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def one(n: int) -> tuple[int, float, str | None, object]:
            body = event_body()
            started = time.monotonic()
            response = await client.post(
                "/webhooks/rivya", content=body, headers=signed_headers(body)
            )
            elapsed = time.monotonic() - started
            code, retry_after = refusal_of(response)
            return response.status_code, elapsed, retry_after, code

        return list(await asyncio.gather(*(one(n) for n in range(count))))


def test_a_frozen_redis_answers_503_within_the_timeout(tmp_path: Path) -> None:
    """Redis frozen (SIGSTOP) for longer than RECEIVER_REDIS_TIMEOUT=1s: concurrent and then
    one-by-one deliveries each get 503 storage_unavailable with Retry-After within the
    timeout plus slack (not
    the sender's own timeout), /readyz says timeout; thawed, deliveries are accepted."""
    timeout, slack = 1.0, 2.0
    with RedisProcess(tmp_path / "redis") as server:
        env = base_env(tmp_path, server.url, RECEIVER_REDIS_TIMEOUT="1s")
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            assert 202 == post(service, "msg_before_freeze")
            server.freeze()
            try:
                together = asyncio.run(timed_posts(service.url, 20))
                one_by_one = [asyncio.run(timed_posts(service.url, 1))[0] for _ in range(3)]
                readiness = httpx.get(f"{service.url}/readyz", timeout=30)
            finally:
                server.resume()
            eventually(lambda: ready(service), what="readiness after the thaw")
            after = [post(service, f"msg_after_thaw_{n}") for n in range(10)]
    answers = together + one_by_one
    assert {(503, *UNAVAILABLE)} == {(status, code, retry) for status, _, retry, code in answers}
    slowest = max(elapsed for _, elapsed, _, _ in answers)
    assert slowest < timeout + slack, f"the slowest 503 took {slowest:.2f}s"
    assert (503, "timeout") == (readiness.status_code, readiness.json()["reason"])
    assert [202] * 10 == after


def _fill_memory(server: RedisProcess) -> tuple[str, Any]:
    """Redis at maxmemory with noeviction: every write fails with OOM until undone."""
    admin = redis.Redis(port=server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 1024 * 1024)
    filled = 0
    with contextlib.suppress(redis.exceptions.OutOfMemoryError):
        while filled < 100:  # 64 KiB at a time until Redis says it is full
            admin.set(f"filler{filled}", b"x" * 65536)
            filled += 1
    assert filled < 100, "Redis never reached maxmemory"
    # Right at the limit, freed client buffers can let a small write through now and then:
    # keep the limit a little under what is used, as after a burst that hit it.
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) - 256 * 1024)

    def undo() -> None:
        admin.delete(*(f"filler{n}" for n in range(filled)))
        admin.config_set("maxmemory", 0)
        admin.close()

    return "out_of_memory", undo


def _make_replica(server: RedisProcess, primary: RedisProcess) -> tuple[str, Any]:
    """Redis turned into a read-only replica (a failover that pointed us at the wrong node)."""
    admin = redis.Redis(port=server.port)
    admin.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))

    def undo() -> None:
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.close()

    return "read_only", undo


@pytest.mark.parametrize("fault", ["maxmemory", "replica"])
def test_a_redis_that_refuses_writes_answers_503_and_is_not_ready(
    tmp_path: Path, fault: str
) -> None:
    """Redis at maxmemory (noeviction) or a read-only replica: deliveries get 503
    storage_unavailable with Retry-After (never a 500), /readyz is 503 with the reason
    (out_of_memory, read_only); once Redis takes writes again both recover."""
    with (
        RedisProcess(tmp_path / "redis") as server,
        RedisProcess(tmp_path / "primary") as primary,
    ):
        env = base_env(tmp_path, server.url)
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            assert 202 == post(service, "msg_before_refusal")
            reason, undo = (
                _fill_memory(server) if fault == "maxmemory" else _make_replica(server, primary)
            )
            eventually(lambda: not ready(service), what="readiness to notice")
            refused = asyncio.run(timed_posts(service.url, 10))
            readiness = httpx.get(f"{service.url}/readyz").json()
            undo()
            eventually(lambda: ready(service), what="readiness once writes work")
            after = [post(service, f"msg_after_refusal_{n}") for n in range(10)]
            output = service.output()
    assert {(503, *UNAVAILABLE)} == {(status, code, retry) for status, _, retry, code in refused}
    assert {"error": "not_ready", "failed": ["redis"], "reason": reason} == readiness
    assert [202] * 10 == after
    assert "Traceback" not in output


def test_serve_and_worker_refuse_an_evicting_redis(tmp_path: Path) -> None:
    """An allkeys-lru Redis: serve and worker exit 1 with one line naming
    RECEIVER_ALLOW_EVICTING_REDIS; with it set to true serve starts, with a critical line."""
    with RedisProcess(
        tmp_path / "redis", extra_args=("--maxmemory-policy", "allkeys-lru")
    ) as server:
        env = base_env(tmp_path, server.url)
        commands = (("serve", "--port", "0"), ("worker",))
        refused = [run_receiver(env, *command) for command in commands]
        allowed_env = {**env, "RECEIVER_ALLOW_EVICTING_REDIS": "true"}
        with ServiceProcess(allowed_env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            accepted = post(service, "msg_evicting_allowed")
            warned = log_lines(service, "redis_evicting_allowed")
    for result in refused:
        assert 1 == result.returncode
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("receiver: configuration error: RECEIVER_ALLOW_EVICTING_REDIS:")
        assert "allkeys-lru" in line
    assert 202 == accepted
    assert [("critical", "allkeys-lru")] == [(line["level"], line["policy"]) for line in warned]


def test_a_redis_that_refuses_config_get_is_said_once(tmp_path: Path) -> None:
    """A managed Redis with CONFIG disabled: serve says once that it cannot check durability
    and serves anyway."""
    with RedisProcess(tmp_path / "redis", extra_args=("--rename-command", "CONFIG", "")) as server:
        env = base_env(tmp_path, server.url)
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            accepted = post(service, "msg_managed")
            said = log_lines(service, "redis_config_unreadable")
    assert (202, 1) == (accepted, len(said))
    assert "CONFIG GET is not allowed" in said[0]["detail"]


# -- readiness -----------------------------------------------------------------------------


async def get_concurrently(url: str, path: str, count: int, rounds: int) -> list[int]:
    """``rounds`` waves of ``count`` concurrent GETs (one client, so connections are reused)."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        for _ in range(rounds):
            responses = await asyncio.gather(*(client.get(path) for _ in range(count)))
            statuses += [response.status_code for response in responses]
    return statuses


def test_300_concurrent_readiness_probes_all_answer_200(tmp_path: Path) -> None:
    """300 concurrent /readyz, in waves, with a healthy Redis: every one answers 200, and they
    share their probes (about one SET a second reaches Redis, not one per request)."""
    with RedisProcess(tmp_path / "redis") as server:
        env = base_env(tmp_path, server.url, RECEIVER_LOG_LEVEL="warning")
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as service:
            started = time.monotonic()
            statuses = asyncio.run(get_concurrently(service.url, "/readyz", 300, rounds=2))
            elapsed = time.monotonic() - started
        with redis.Redis(port=server.port) as admin:
            probes = admin.info("commandstats").get("cmdstat_set", {}).get("calls", 0)
    assert [200] * 600 == statuses
    assert 1 <= probes <= elapsed + 2, f"{probes} probes in {elapsed:.1f}s"


def test_a_sink_outage_keeps_ingest_accepting_and_serve_ready(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """With the HTTP sink up, 30 readiness probes never reach it (no HEAD per probe, beyond
    the worker's own first ping); once it is gone, deliveries still get 202, and serve's
    /readyz stays 200 on both listeners while the admin one shows the worker's circuit open:
    events wait in Redis."""
    from tests.conftest import TEST_SECRET
    from tests.servers import Downstream

    downstream = Downstream(200).__enter__()
    try:
        env = base_env(
            tmp_path, redis_url, RECEIVER_SINK=downstream.url, RECEIVER_FORWARD_SECRET=TEST_SECRET,
            RECEIVER_CIRCUIT_FAILURES="1", RECEIVER_RETRY_BASE="100ms",
        )  # fmt: skip
        with ServiceProcess(env, tmp_path / "serve.log", admin=True) as service:
            # The worker pings the sink once as it starts (its own view of the sink).
            eventually(lambda: "HEAD" in downstream.methods, what="the worker's first ping")
            before = downstream.methods.count("HEAD")
            while_up = [httpx.get(f"{service.url}/readyz").status_code for _ in range(30)]
            sink_probes = downstream.methods.count("HEAD") - before
            downstream.__exit__(None, None, None)
            accepted = [post(service, f"msg_sink_down_{n}") for n in range(20)]
            eventually(
                lambda: (
                    httpx.get(f"{service.admin_url}/readyz").json().get("sink") == "circuit_open"
                ),
                what="the worker's circuit to open",
            )
            while_down, admin_down = [], []
            for _ in range(3):  # across probe results, not one cached answer
                while_down.append(httpx.get(f"{service.url}/readyz").status_code)
                detail = httpx.get(f"{service.admin_url}/readyz")
                admin_down.append((detail.status_code, detail.json()["sink"]))
                time.sleep(1.1)
    finally:
        downstream.__exit__(None, None, None)
    assert ([200] * 30, 0) == (while_up, sink_probes)
    assert ([202] * 20, [200] * 3) == (accepted, while_down)
    assert [(200, "circuit_open")] * 3 == admin_down


# -- logging -------------------------------------------------------------------------------


def test_a_stalled_stdout_keeps_serve_answering(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """serve's stdout is a pipe nobody reads: deliveries and /healthz keep being answered and
    receiver_log_lines_dropped_total moves on /metrics; once the pipe is read again, every
    line is whole JSON and one says how many were dropped."""
    from tests.conftest import free_port, wait_for_port

    port, admin_port = free_port(), free_port()
    env = base_env(tmp_path, redis_url, RECEIVER_ADMIN_ADDR=f"127.0.0.1:{admin_port}")
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve", "--port", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    url = f"http://127.0.0.1:{port}"
    answers: list[tuple[str, int]] = []
    chunks: list[bytes] = []
    stdout = process.stdout
    reader = threading.Thread(target=lambda: chunks.extend(iter(stdout.read1, b"")))
    try:
        wait_for_port(port, 30)
        long_id = "msg_stall_" + "x" * 180  # long ids make long lines: the pipe fills sooner
        for round_ in range(40):
            answers += asyncio.run(deliver_all(url, 100, f"{long_id}_{round_}"))
            dropped = metric_of(
                f"http://127.0.0.1:{admin_port}", "receiver_log_lines_dropped_total"
            )
            if dropped > 0:
                break
        health = httpx.get(f"{url}/healthz", timeout=5).status_code
        reader.start()  # the log collector reads again
        eventually(lambda: b'"log_lines_dropped"' in b"".join(chunks), what="the report line")
    finally:
        process.terminate()
        code = process.wait(30)
        if reader.is_alive():
            reader.join(10)
        stdout.close()
    lines = [orjson.loads(line) for line in b"".join(chunks).splitlines()]  # all whole
    [report] = [line for line in lines if line["event"] == "log_lines_dropped"]
    assert {202} == {status for _, status in answers}
    assert (True, 200, 0) == (dropped > 0, health, code)
    assert report["dropped"] >= dropped

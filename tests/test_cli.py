"""Process-level behaviour of the commands: start-up failures are one line and exit 1, and
each process needs only the settings it uses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port, wait_for_port
from tests.factories import base_env
from tests.helpers import eventually
from tests.servers import ServiceProcess


def run_cli(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("RECEIVER_TOLERANCE_SECONDS", "soon", id="tolerance"),
        pytest.param("RECEIVER_WEBHOOK_SECRET", "whsec_not*base64", id="secret"),
        pytest.param("RECEIVER_SINK", "ftp://user:hunter2@host/x", id="sink-scheme"),
        pytest.param("RECEIVER_LOG_LEVEL", "loud", id="log-level"),
        pytest.param("RECEIVER_RETENTION", "3s", id="retention-under-tolerance"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path, redis_url: str, variable: str, value: str
) -> None:
    """A bad value stops serve with exit 1 and one stderr line naming it, no traceback."""
    result = run_cli(base_env(tmp_path, redis_url, **{variable: value}), "serve")
    lines = result.stderr.strip().splitlines()
    assert (1, 1) == (result.returncode, len(lines)), result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "hunter2" not in result.stderr + result.stdout
    assert "not*base64" not in result.stderr


def test_port_in_use_exits_1(tmp_path: Path, redis_url: str) -> None:
    """A second serve on a taken port says so and exits 1 (SPEC §7), not uvicorn's 3."""
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:")
    with ServiceProcess(env, tmp_path / "first.log") as first:
        result = run_cli(env, "serve", "--port", str(first.port))
    assert 1 == result.returncode
    assert f"could not listen on 127.0.0.1:{first.port}" in result.stderr


def without_signing_secret(env: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key != "RECEIVER_WEBHOOK_SECRET"}


def test_serve_needs_the_signing_secret(tmp_path: Path, redis_url: str) -> None:
    """serve verifies deliveries: without a signing secret it exits 1 naming the variable."""
    result = run_cli(without_signing_secret(base_env(tmp_path, redis_url)), "serve")
    assert 1 == result.returncode
    assert result.stderr.startswith("receiver: configuration error: RECEIVER_WEBHOOK_SECRET:")
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("clean_redis")
def test_worker_and_ops_commands_run_without_the_signing_secret(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker pod and a read-only operator need Redis (and the worker its sink), not the
    signing secret; with an HTTP sink, listing events needs no forward secret either."""
    env = without_signing_secret(
        base_env(tmp_path, redis_url, RECEIVER_SINK="https://hooks.example/in")
    )
    listed = run_cli(env, "events", "list", "--json")
    assert (0, "[]") == (listed.returncode, listed.stdout.strip()), listed.stderr

    worker_env = without_signing_secret(base_env(tmp_path, redis_url, RECEIVER_SINK="log:"))
    with ServiceProcess(worker_env, tmp_path / "worker.log", "worker") as worker:
        assert worker.process is not None
        eventually(lambda: "worker_started" in worker.output(), what="the worker to start")
        assert worker.process.poll() is None, worker.output()


def test_worker_with_http_sink_needs_the_forward_secret(tmp_path: Path, redis_url: str) -> None:
    """The worker opens the HTTP sink, which cannot sign without RECEIVER_FORWARD_SECRET."""
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="https://hooks.example/in")
    result = run_cli(env, "worker")
    assert 1 == result.returncode
    assert "RECEIVER_FORWARD_SECRET: required" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_logs_a_warning_for_a_short_key(tmp_path: Path, redis_url: str) -> None:
    """serve starts with a 1-byte webhook key, and says at start-up that it is weak, by
    position and length only."""
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:", RECEIVER_WEBHOOK_SECRET="whsec_YQ")
    with ServiceProcess(env, tmp_path / "serve.log") as service:
        eventually(lambda: '"started"' in service.output(), what="serve to start")
    lines = [orjson.loads(line) for line in service.output().splitlines()]
    warnings = [line for line in lines if line["event"] == "config_warning"]
    assert [("warning", "RECEIVER_WEBHOOK_SECRET: key 1: only 1 byte of key material; "
             "use at least 16 (`receiver gen-secret` makes 32)")] == [
        (line["level"], line["detail"]) for line in warnings
    ]  # fmt: skip


def test_worker_metrics_port_in_use_exits_1(tmp_path: Path, redis_url: str) -> None:
    """A worker whose --metrics-port is taken says so in one line and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:")
        result = run_cli(env, "worker", "--metrics-port", str(port))
    assert 1 == result.returncode
    assert result.stderr.startswith(f"receiver: could not listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.usefixtures("clean_redis")
def test_worker_listener_answers_health_readiness_and_metrics(
    tmp_path: Path, redis_url: str
) -> None:
    """`receiver worker --metrics-port` serves /healthz, /readyz and /metrics, and stops
    cleanly on SIGTERM."""
    port = free_port()
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:")
    worker = ServiceProcess(env, tmp_path / "worker.log", "worker", "--metrics-port", str(port))
    with worker:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            return httpx.get(f"{url}/readyz").status_code == 200

        eventually(ready, what="the worker to be ready")
        health = httpx.get(f"{url}/healthz")
        exported = httpx.get(f"{url}/metrics").text
        code = worker.stop()
    assert (200, 0) == (health.status_code, code)
    assert "receiver_sink_up 1.0" in exported
    assert "receiver_sink_circuit_open 0.0" in exported


ROOT = Path(__file__).resolve().parent.parent


def embedded_env(**extra: str) -> dict[str, str]:
    """An environment with the embedded defaults: no Redis URL, no data dir, no sink."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "RECEIVER_LOG_LEVEL": "warning",
        **extra,
    }


@pytest.mark.parametrize(
    "args",
    [
        ["events", "list"],
        ["events", "show", "evt_x"],
        ["events", "audit"],
        ["replay", "--status", "dead", "--dry-run"],
    ],
    ids=["list", "show", "audit", "replay-dry-run"],
)
def test_ops_command_in_the_wrong_directory_exits_1(tmp_path: Path, args: list[str]) -> None:
    """Where no service runs and no store exists, an ops command says where it looked and
    what to set, exit 1, instead of starting an empty Redis and finding nothing."""
    result = run_cli(embedded_env(), *args, cwd=tmp_path)
    assert (1, "") == (result.returncode, result.stdout)
    [line] = result.stderr.splitlines()
    data_dir = tmp_path / "receiver-data"
    assert line.startswith(f"receiver: no receiver data in {data_dir}: ")
    assert str(data_dir / "redis" / "redis.sock") in line
    assert "RECEIVER_DATA_DIR" in line
    assert "RECEIVER_REDIS_URL" in line
    assert not (data_dir / "redis").exists()  # nothing was created


def run_long_running(env: dict[str, str], args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run a command that serves until stopped; if it is still up after 30 s it did not
    refuse: stop it with SIGTERM (so it stops any Redis it started) and fail."""
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", *args],
        env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
        pytest.fail(f"`receiver {' '.join(args)}` started instead of refusing: {stderr[-2000:]}")
    return process.returncode, stdout, stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        # A free port, so that a console that wrongly starts binds nothing anyone uses.
        pytest.param(["console"], {"RECEIVER_ADMIN_ADDR": "127.0.0.1:{port}"}, id="console"),
        # A key so the command gets past its own check, and an API nobody answers on.
        pytest.param(
            ["reconcile"],
            {
                "RECEIVER_RIVYA_API_KEY": "rvya_sk_test",
                "RECEIVER_RIVYA_API_URL": "http://127.0.0.1:1",
            },
            id="reconcile",
        ),
    ],
)
def test_long_running_ops_command_in_the_wrong_directory_exits_1(
    tmp_path: Path, args: list[str], extra: dict[str, str]
) -> None:
    """`receiver console` and `receiver reconcile` refuse a directory with no store like the
    read-only ops commands: one line saying where they looked and what to set, exit 1, and
    no receiver-data directory, instead of serving an empty embedded Redis."""
    env = embedded_env(**{key: value.format(port=free_port()) for key, value in extra.items()})
    code, stdout, stderr = run_long_running(env, args, tmp_path)
    assert (1, "") == (code, stdout)
    [line] = stderr.splitlines()
    data_dir = tmp_path / "receiver-data"
    assert line.startswith(f"receiver: no receiver data in {data_dir}: ")
    assert str(data_dir / "redis" / "redis.sock") in line
    assert "RECEIVER_DATA_DIR" in line
    assert "RECEIVER_REDIS_URL" in line
    assert [] == list(tmp_path.iterdir())  # nothing was created, not even receiver-data


def test_config_check_in_the_wrong_directory_creates_no_store(tmp_path: Path) -> None:
    """config check says no store exists here yet (and where it looked) instead of
    creating an empty one that later ops commands would take for the service's."""
    result = run_cli(embedded_env(), "config", "check", cwd=tmp_path)
    assert 0 == result.returncode, result.stdout + result.stderr
    redis_dir = tmp_path / "receiver-data" / "redis"
    assert (
        f"redis: embedded, not created yet: no running service and no stored data under {redis_dir}"
        in result.stdout
    )
    assert not redis_dir.exists()
    assert 1 == run_cli(embedded_env(), "events", "list", cwd=tmp_path).returncode


def test_make_run_hint_works_as_printed(tmp_path: Path) -> None:
    """The commands `make run` suggests work as printed from another directory: send-test
    delivers to the running service and events list finds the event in its store."""
    data_dir = tmp_path / "data"
    relative = os.path.relpath(data_dir, ROOT)  # as `make run` passes it: ./receiver-data
    hint = subprocess.run(
        ["sh", "-c", ". scripts/dev-secret.sh"],
        cwd=ROOT,
        env=embedded_env(RECEIVER_DATA_DIR=relative),
        capture_output=True,
        text=True,
        check=True,
    )
    commands = [line.strip() for line in hint.stderr.splitlines() if line.startswith("  ")]
    send_test, events_list = commands
    assert "send-test" in send_test
    assert "events list" in events_list
    secret_file = data_dir / "dev-webhook-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    serve_env = embedded_env(
        RECEIVER_DATA_DIR=str(data_dir), RECEIVER_WEBHOOK_SECRET_FILE=str(secret_file)
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ServiceProcess(serve_env, tmp_path / "serve.log") as service:
        sent = subprocess.run(
            ["sh", "-c", f"{send_test} --url {service.url}/webhooks/rivya"],
            cwd=elsewhere, env=embedded_env(), capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert 0 == sent.returncode, sent.stdout + sent.stderr
        event_id = sent.stdout.split(" event ", 1)[1].split()[0]

        def listed() -> bool:
            found = subprocess.run(
                ["sh", "-c", f"{events_list} -o name"],
                cwd=elsewhere, env=embedded_env(), capture_output=True, text=True, check=False,
            )  # fmt: skip
            return found.returncode == 0 and event_id in found.stdout.split()

        eventually(listed, what="events list (as printed) to show the test event")
    assert not (elsewhere / "receiver-data").exists()

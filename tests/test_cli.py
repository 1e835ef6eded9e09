"""Process-level behaviour of the commands: start-up failures are one line and exit 1, and
each process needs only the settings it uses."""

from __future__ import annotations

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


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
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

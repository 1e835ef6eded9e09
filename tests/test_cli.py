"""Process-level behaviour of `receiver serve`: start-up failures are one line and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import base_env
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

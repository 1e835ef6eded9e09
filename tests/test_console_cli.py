"""The console's commands and settings as processes: ``receiver console``, ``admin-token``,
``RECEIVER_ADMIN_ADDR`` and ``RECEIVER_ADMIN_USERS_FILE`` (SPEC §10)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from receiver.console.users import Role, hash_token
from receiver.errors import ConfigError
from receiver.settings import DEFAULT_ADMIN_ADDR, Settings
from tests.console_helpers import write_users
from tests.factories import base_env
from tests.servers import ServiceProcess
from tests.test_cli import ROOT, embedded_env, run_cli


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("127.0.0.1:9001", ("127.0.0.1", 9001), id="ipv4"),
        pytest.param("0.0.0.0:8081", ("0.0.0.0", 8081), id="all"),
        pytest.param("[::1]:8081", ("::1", 8081), id="ipv6"),
        pytest.param("admin.local:80", ("admin.local", 80), id="name"),
        pytest.param("", None, id="empty-disables"),
    ],
)
def test_admin_addr_values(value: str, expected: tuple[str, int] | None) -> None:
    """host:port (IPv6 in brackets) is the listener; set but empty turns it off."""
    assert expected == Settings.from_env({"RECEIVER_ADMIN_ADDR": value}).admin_addr


def test_admin_addr_defaults_to_loopback() -> None:
    """Unset, the admin listener is on 127.0.0.1:8081 (never reachable from outside)."""
    assert DEFAULT_ADMIN_ADDR == Settings.from_env({}).admin_addr == ("127.0.0.1", 8081)


@pytest.mark.parametrize("value", ["8081", "host", "127.0.0.1:99999", "a b:1", ":8081"])
def test_a_bad_admin_addr_names_the_variable(value: str) -> None:
    """A malformed address is a ConfigError naming RECEIVER_ADMIN_ADDR."""
    with pytest.raises(ConfigError, match="RECEIVER_ADMIN_ADDR"):
        Settings.from_env({"RECEIVER_ADMIN_ADDR": value})


def test_admin_token_prints_a_token_and_its_line(tmp_path: Path) -> None:
    """Line 1 is a fresh 32-byte token, line 2 the users-file line holding only its hash."""
    first = run_cli(base_env(tmp_path, None), "admin-token", "alice", "operator")
    second = run_cli(base_env(tmp_path, None), "admin-token", "alice", "operator")
    token, line = first.stdout.splitlines()
    assert 0 == first.returncode
    assert token.startswith("rcvadm_")
    assert len(token) >= len("rcvadm_") + 43
    assert f"alice operator {hash_token(token)}" == line
    assert token not in line
    assert second.stdout.splitlines()[0] != token, "a new token every time"


@pytest.mark.parametrize(("name", "role"), [("bad name", "viewer"), ("bob", "admin")])
def test_admin_token_refuses_bad_names_and_roles(tmp_path: Path, name: str, role: str) -> None:
    """A name with spaces or an unknown role is a usage error (exit 2), nothing printed."""
    result = run_cli(base_env(tmp_path, None), "admin-token", name, role)
    assert (2, "") == (result.returncode, result.stdout)


def test_a_bad_users_file_stops_start_up_with_one_line(tmp_path: Path, redis_url: str) -> None:
    """A users-file line holding a token instead of a hash: exit 1, the line number, no token."""
    users = tmp_path / "users"
    users.write_text("alice operator rcvadm_pastedTheTokenByMistake\n")
    env = base_env(
        tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(users), RECEIVER_ADMIN_ADDR="127.0.0.1:1"
    )
    result = run_cli(env, "console")
    assert 1 == result.returncode
    assert "RECEIVER_ADMIN_USERS_FILE: line 1" in result.stderr
    assert "pastedTheToken" not in result.stderr + result.stdout


def test_a_taken_admin_port_stops_serve_with_one_line(tmp_path: Path, redis_url: str) -> None:
    """serve exits 1 naming the admin address when it is taken; it does not half-start."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(tmp_path, redis_url, RECEIVER_ADMIN_ADDR=f"127.0.0.1:{port}")
        result = run_cli(env, "serve", "--port", "0")
    assert 1 == result.returncode
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_console_runs_alone_without_the_signing_secret(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """`receiver console` needs Redis only: it serves the API and metrics, no webhooks."""
    people = write_users(tmp_path / "users", ("olga", Role.OPERATOR))
    env = base_env(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(tmp_path / "users"))
    del env["RECEIVER_WEBHOOK_SECRET"]
    with ServiceProcess(env, tmp_path / "console.log", "console", admin=True) as console:
        events = httpx.get(
            f"{console.admin_url}/api/v1/events", headers=people["olga"].bearer, timeout=10
        )
        metrics = httpx.get(f"{console.admin_url}/metrics", timeout=10)
        webhook = httpx.post(f"{console.admin_url}/webhooks/rivya", content=b"{}", timeout=10)
    assert (200, 200, 404) == (events.status_code, metrics.status_code, webhook.status_code)


def test_console_alone_reads_records_from_the_sink(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """`receiver console` opens the configured sink to read records (no worker needed):
    the Records answer is the record as the SQLite sink holds it, in words."""
    import asyncio
    from datetime import UTC, datetime

    import orjson

    from receiver.rivya import map_event
    from receiver.settings import Settings
    from receiver.sinks.base import open_sink
    from tests.factories import envelope, generation

    people = write_users(tmp_path / "users", ("vic", Role.VIEWER))
    env = base_env(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(tmp_path / "users"))
    document = envelope(generation(task_id="task_alone"))

    async def write_record() -> None:
        sink = open_sink(Settings.from_env(env))
        await sink.setup()
        await sink.apply(map_event(document, "msg_alone", datetime.now(UTC)).record)
        await sink.aclose()

    asyncio.run(write_record())
    del env["RECEIVER_WEBHOOK_SECRET"]
    with ServiceProcess(env, tmp_path / "console.log", "console", admin=True) as console:
        answer = httpx.get(
            f"{console.admin_url}/api/v1/records/task_alone",
            headers=people["vic"].bearer,
            timeout=10,
        )
    assert 200 == answer.status_code, answer.text
    assert "succeeded: 1 credit charged; result ready" == answer.json()["words"]
    assert "msg_alone" == answer.json()["record"]["last_event_id"]
    assert orjson.loads(answer.content)["events"] == []


DEV_CONSOLE = ROOT / "scripts" / "dev-console.sh"


def run_sh(script: str, data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` (which sources make run's helpers) in ``sh``, as `make run` runs them."""
    return subprocess.run(
        ["sh", "-c", script], cwd=cwd, env=embedded_env(RECEIVER_DATA_DIR=str(data_dir)),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def source_dev_console(data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Source the script as `make run` does, then report what the next command would get."""
    return run_sh(
        f". '{DEV_CONSOLE}' && echo \"serve with $RECEIVER_ADMIN_USERS_FILE\"", data_dir, cwd
    )


def test_dev_console_makes_an_operator_once(tmp_path: Path) -> None:
    """`make run`'s console helper writes the token and its users-file line (mode 0600),
    exports the users file, and keeps the same operator on the next run."""
    data_dir = tmp_path / "data"
    first = source_dev_console(data_dir, ROOT)
    again = source_dev_console(data_dir, ROOT)
    users_file, token_file = data_dir / "dev-admin-users", data_dir / "dev-admin-token"
    assert (0, 0) == (first.returncode, again.returncode), first.stderr + again.stderr
    assert f"serve with {users_file}" == first.stdout.strip() == again.stdout.strip()
    assert "created a development console operator 'dev'" in first.stderr
    assert "created" not in again.stderr
    token = token_file.read_text().strip()
    assert f"dev operator {hash_token(token)}\n" == users_file.read_text()
    assert (0o600, 0o600) == (
        users_file.stat().st_mode & 0o777, token_file.stat().st_mode & 0o777,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        pytest.param("no-venv", "receiver: could not create a development console operator: "
                     "'.venv/bin/receiver admin-token dev operator' failed", id="no-venv"),
        pytest.param("data-dir-is-a-file", "receiver: cannot create ", id="data-dir-is-a-file"),
        pytest.param("token-path-taken", "receiver: could not write the development console "
                     "operator's files", id="token-path-taken"),
    ],
)  # fmt: skip
def test_dev_console_fails_loudly(tmp_path: Path, breakage: str, expected: str) -> None:
    """When the helper cannot make the operator (no venv where it runs, a data dir it cannot
    create, a file it cannot write) `make run` stops with one line and a nonzero status,
    instead of serving a console with an empty users file that nobody can sign in to."""
    data_dir, cwd = tmp_path / "data", ROOT
    if breakage == "no-venv":
        cwd = tmp_path  # `make run` from elsewhere: no .venv/bin/receiver here
    elif breakage == "data-dir-is-a-file":
        (tmp_path / "file").write_text("")
        data_dir = tmp_path / "file" / "data"
    else:
        (data_dir / "dev-admin-token" / "taken").mkdir(parents=True)
    result = source_dev_console(data_dir, cwd)
    assert (1, "") == (result.returncode, result.stdout), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(expected), line
    assert not (data_dir / "dev-admin-users").exists(), "no empty users file left behind"


DEV_SECRET = ROOT / "scripts" / "dev-secret.sh"


def test_dev_secret_fails_loudly_without_the_venv(tmp_path: Path) -> None:
    """`make run`'s secret helper, run where there is no venv, stops with one line and a
    nonzero status, and leaves no empty secret file for the next run to trust."""
    data_dir = tmp_path / "data"
    result = run_sh(f". '{DEV_SECRET}' && echo served", data_dir, tmp_path)
    assert (1, "") == (result.returncode, result.stdout), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("receiver: could not create a development signing secret: "), line
    assert not (data_dir / "dev-webhook-secret").exists()


def test_dev_helpers_use_the_venv_make_passes(tmp_path: Path) -> None:
    """With `make VENV=...` the venv is not ./.venv: both helpers take the receiver from
    VENV_BIN (what `make run` sets), so they work from a directory without ./.venv."""
    venv_bin = tmp_path / "other-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "receiver").symlink_to(Path(sys.executable).parent / "receiver")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / "data"
    script = (
        f"VENV_BIN='{venv_bin}'; . '{DEV_SECRET}' && . '{DEV_CONSOLE}' && "
        'echo "$RECEIVER_WEBHOOK_SECRET_FILE $RECEIVER_ADMIN_USERS_FILE"'
    )
    result = run_sh(script, data_dir, elsewhere)
    assert 0 == result.returncode, result.stderr
    assert f"{data_dir}/dev-webhook-secret {data_dir}/dev-admin-users" == result.stdout.strip()
    assert (data_dir / "dev-webhook-secret").read_text().startswith("whsec_")
    assert f"'{venv_bin}/receiver' send-test" in result.stderr
    assert not (elsewhere / ".venv").exists()

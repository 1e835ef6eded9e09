"""The Dockerfile's build and run steps, outside Docker (no Docker on the test machines).

Like the image: a fresh venv without pip gets requirements.lock, hash-checked and with
``--no-deps``; then our wheel, built from a copy of what the Dockerfile copies (with build
isolation, as ``docker build`` does), is installed with ``--no-deps`` too. The venv must
then hold every dependency the wheel declares, at a version it accepts, and nothing more;
and the console script runs from there: ``serve --help``, and ``serve`` on the embedded
Redis until SIGTERM. What passes here is what the image's two stages do, short of the base
image.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import TEST_SECRET, free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PIP_TIMEOUT_SECONDS = 600
STOP_TIMEOUT_SECONDS = 15


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path

    @property
    def receiver(self) -> str:
        return str(self.venv / "bin" / "receiver")


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment minus any receiver setting or Python path, plus ``extra``."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RECEIVER_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    environment.update(extra)
    return environment


def run(*command: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_SECONDS,
        env=clean_environment(),
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}")


def redis_server_alive(pid: int) -> bool:
    """True while ``pid`` is a running (not zombie) redis-server."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and b"redis-server" in command


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built as the Dockerfile's build stage does, installed in a fresh venv."""
    work = tmp_path_factory.mktemp("packaging")
    # The Dockerfile's COPY lines; building from a copy also keeps build/ and *.egg-info
    # out of the work tree.
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "receiver", source / "receiver", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy2(ROOT / "requirements.lock", source / "requirements.lock")
    dist = work / "dist"
    pip = (sys.executable, "-m", "pip")
    # The build stage's steps, in its order: a venv without pip of its own (this pip
    # installs into it with ``--python``), the lock, then our wheel. Only --no-compile
    # differs: bytecode written at install time matters for the image's read-only root,
    # not here (and costs seconds).
    venv = work / "venv"
    into_venv = (*pip, "--python", venv / "bin" / "python", "install", "--no-compile")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    run(*into_venv, "--require-hashes", "--no-deps", "-r", "requirements.lock", cwd=source)
    # Build isolation, as in the image: pyproject.toml asks for setuptools>=68 and wheel,
    # which need not be in the test environment (pip takes them from its index or cache).
    run(*pip, "wheel", "--no-deps", "-w", dist, source, cwd=work)
    (wheel,) = dist.glob("receiver-*.whl")
    run(*into_venv, "--no-deps", wheel, cwd=work)
    workdir = work / "app"  # the image's WORKDIR: nothing of the source tree around
    workdir.mkdir()
    return Installed(wheel=wheel, venv=venv, workdir=workdir)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir under /tmp: the embedded Redis's unix socket path must stay under 107 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="rcv", dir="/tmp"))
    yield directory / "data"
    shutil.rmtree(directory, ignore_errors=True)


class TestWheel:
    def test_wheel_holds_code_scripts_and_entry_point(self, installed: Installed) -> None:
        """The wheel carries every module and Lua script, py.typed and the console script."""
        with zipfile.ZipFile(installed.wheel) as wheel:
            names = set(wheel.namelist())
            (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
            scripts = wheel.read(entry_points).decode()
        expected = {
            path.relative_to(ROOT).as_posix()
            for pattern in ("*.py", "lua/*.lua", "py.typed")
            for path in (ROOT / "receiver").rglob(pattern)
            if "__pycache__" not in path.parts
        }
        assert expected - names == set()
        assert "receiver = receiver.cli:main" in scripts

    def test_lock_satisfies_every_dependency(self, installed: Installed) -> None:
        """With the lock and our wheel installed --no-deps, pip finds no requirement unmet."""
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--python", installed.venv / "bin" / "python", "check"],
            capture_output=True, text=True, env=clean_environment(), timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

    def test_lock_holds_nothing_the_service_does_not_need(self, installed: Installed) -> None:
        """Every package in the venv is receiver or one it requires, directly or through others."""
        (site_packages,) = installed.venv.glob("lib/python*/site-packages")
        installed_names = {
            canonicalize_name(dist.metadata["Name"]): dist
            for dist in metadata.distributions(path=[str(site_packages)])
        }
        needed: set[str] = set()
        # (name, extras asked for); markers evaluate as in the venv, same interpreter.
        pending: list[tuple[str, frozenset[str]]] = [("receiver", frozenset())]
        seen: set[tuple[str, frozenset[str]]] = set()
        while pending:
            name, extras = pending.pop()
            if (name, extras) in seen:
                continue
            seen.add((name, extras))
            needed.add(name)
            assert name in installed_names, f"{name} is required but not in the lock"
            for text in installed_names[name].requires or []:
                requirement = Requirement(text)
                marker = requirement.marker
                if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
                    pending.append(
                        (canonicalize_name(requirement.name), frozenset(requirement.extras))
                    )
        assert sorted(installed_names) == sorted(needed)

    def test_venv_runs_the_installed_package(self, installed: Installed) -> None:
        """The venv imports receiver from its own site-packages, not from the source tree."""
        result = subprocess.run(
            [installed.venv / "bin" / "python", "-c", "import receiver; print(receiver.__file__)"],
            cwd=installed.workdir,
            capture_output=True,
            text=True,
            env=clean_environment(),
            check=True,
        )
        assert Path(result.stdout.strip()).is_relative_to(installed.venv)


class TestServe:
    def test_serve_help_exits_zero(self, installed: Installed) -> None:
        """``receiver serve --help`` from the venv exits 0 and documents the image's options."""
        result = subprocess.run(
            [installed.receiver, "serve", "--help"],
            cwd=installed.workdir,
            capture_output=True,
            text=True,
            env=clean_environment(),
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        for option in ("--host", "--port", "--no-worker"):
            assert option in result.stdout

    def test_serve_on_embedded_redis_stops_cleanly_on_sigterm(
        self, installed: Installed, data_dir: Path
    ) -> None:
        """``receiver serve`` on its embedded Redis is healthy and ready, and exits 0 on SIGTERM."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        environment = clean_environment(
            RECEIVER_DATA_DIR=str(data_dir),
            RECEIVER_WEBHOOK_SECRET=TEST_SECRET,
            RECEIVER_SHUTDOWN_DRAIN="1s",
            RECEIVER_ADMIN_ADDR=f"127.0.0.1:{free_port()}",  # never the shared default 8081
            PYTHONDONTWRITEBYTECODE="1",
        )
        log_path = data_dir.parent / "serve.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [installed.receiver, "serve", "--port", str(port)],
                cwd=installed.workdir, env=environment, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        redis_pid_file = data_dir / "redis" / "redis.pid"
        redis_pid: int | None = None
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"receiver serve did not start:\n{log_path.read_text()[-3000:]}")
                try:
                    health = httpx.get(f"{url}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert health.status_code == 200
            # Ready means the embedded Redis and the default SQLite sink both answer.
            assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200
            redis_pid = int(redis_pid_file.read_text().strip())

            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                log_tail = log_path.read_text()[-3000:]
                pytest.fail(f"no exit {STOP_TIMEOUT_SECONDS}s after SIGTERM:\n{log_tail}")
            took = time.monotonic() - started
            assert code == 0, f"exit code {code} after {took:.1f}s:\n{log_path.read_text()[-3000:]}"
            assert not redis_server_alive(redis_pid), "the embedded Redis outlived serve"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            # serve stops the Redis it started; if it did not, this test must not leave it.
            if redis_pid is not None and redis_server_alive(redis_pid):
                os.kill(redis_pid, signal.SIGKILL)

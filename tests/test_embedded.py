"""The embedded Redis's own bookkeeping: why it stopped, and which pid is really ours."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from receiver.embedded import EmbeddedRedis, last_warning
from receiver.logs import REDACTED

# Lines as redis-server 6.2 writes them: start-up warnings, ready, then the fatal ones.
STARTED = """\
23176:C 01 Dec 2026 21:47:26.876 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo
23176:M 01 Dec 2026 21:47:26.877 # Server initialized
23176:M 01 Dec 2026 21:47:26.877 # WARNING Memory overcommit must be enabled!
23176:M 01 Dec 2026 21:47:26.877 * The server is now ready to accept connections at /d/redis.sock
"""
DISK_FULL = """\
23176:M 01 Dec 2026 21:47:27.406 # Short write while writing to the AOF file: (nwritten=4046, expected=5030)
23176:M 01 Dec 2026 21:47:27.406 # Can't recover from AOF write error when the AOF fsync policy is 'always'. Exiting...
"""  # noqa: E501
BAD_AOF = """\
1496:M 01 Dec 2026 22:11:33.821 # Server initialized
1496:M 01 Dec 2026 22:11:33.821 # WARNING Memory overcommit must be enabled!
1496:M 01 Dec 2026 22:11:33.824 # Bad file format reading the append only file: make a backup
"""


class TestLastWarning:
    @pytest.mark.parametrize(
        ("log", "reason"),
        [
            pytest.param(
                STARTED + DISK_FULL,
                "Can't recover from AOF write error when the AOF fsync policy is 'always'. "
                "Exiting...",
                id="disk-full",
            ),
            pytest.param(STARTED, "", id="killed-silently"),
            pytest.param(
                BAD_AOF, "Bad file format reading the append only file: make a backup", id="bad-aof"
            ),
            pytest.param("", "", id="empty"),
            pytest.param(
                STARTED + DISK_FULL[: DISK_FULL.index("AOF write error")],
                "Can't recover from",
                id="last-line-torn",  # the disk filled up in the middle of Redis's last line
            ),
        ],
    )
    def test_reason(self, log: str, reason: str) -> None:
        """The last warning after the server became ready (or of a start that never did);
        start-up warnings are not a reason to stop."""
        assert reason == last_warning(log)

    def test_reason_is_redacted(self) -> None:
        """A secret-looking value in Redis's own words is masked before it reaches a log line."""
        line = (
            "1:M 01 Dec 2026 22:11:33.824 # Error connecting to redis://default:hunter2@"
            "primary:6379 with whsec_c2VjcmV0c2VjcmV0\n"
        )
        reason = last_warning(line)
        assert ("hunter2" not in reason, "c2VjcmV0" not in reason) == (True, True)
        assert REDACTED in reason


class TestServerPid:
    @pytest.fixture
    def embedded(self, tmp_path: Path) -> EmbeddedRedis:
        directory = tmp_path / "redis"
        directory.mkdir()
        return EmbeddedRedis(directory)

    def test_a_pid_that_is_gone_is_not_ours(self, embedded: EmbeddedRedis) -> None:
        """A pid file naming an exited process (here one we reaped) names no server."""
        process = subprocess.Popen(["true"])
        process.wait()
        embedded.pid_file.write_text(f"{process.pid}\n")
        assert (None, False) == (embedded.server_pid(), embedded.alive())

    @pytest.mark.parametrize("content", ["", "garbage", "-1", "0"], ids=repr)
    def test_an_unreadable_pid_file_is_not_ours(
        self, embedded: EmbeddedRedis, content: str
    ) -> None:
        """An empty, torn or nonsensical pid file names no server (and never pid 0 or -1)."""
        embedded.pid_file.write_text(content)
        assert embedded.server_pid() is None

    def test_a_live_process_that_is_not_redis_is_not_ours(self, embedded: EmbeddedRedis) -> None:
        """A live process that reused the pid (not a redis-server in our directory) is not ours."""
        process = subprocess.Popen(["sleep", "30"], cwd=embedded.directory)
        try:
            embedded.pid_file.write_text(f"{process.pid}\n")
            assert embedded.server_pid() is None
        finally:
            process.kill()
            process.wait()

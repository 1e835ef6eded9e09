"""Run a command with its stdout on a real pseudo-terminal, so rich takes its terminal path."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

TERMINAL_ROWS = 50


@dataclass(frozen=True)
class TerminalRun:
    returncode: int
    raw: bytes  # exactly what reached the terminal
    stderr: str

    @property
    def text(self) -> str:
        """What reached the terminal, decoded, with the pty's CR LF turned back into LF."""
        return self.raw.decode("utf-8", "replace").replace("\r\n", "\n")


def open_terminal(columns: int) -> tuple[int, int]:
    """A pty pair (master, slave) whose window is ``columns`` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, columns, 0, 0))
    return master, slave


def run_on_terminal(
    env: dict[str, str],
    *args: str,
    columns: int = 80,
    timeout: float = 60,
    stop_when: Callable[[bytes], bool] | None = None,
) -> TerminalRun:
    """``python -m receiver ARGS`` with stdout on a pty of ``columns``; stderr captured.

    With ``stop_when``, the process gets SIGINT (Ctrl-C) once the output so far satisfies it.
    """
    master, slave = open_terminal(columns)
    env = {**env, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    with open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "receiver", *args],
            env=env,
            stdin=stdin,
            stdout=slave,
            stderr=stderr,
        )
        os.close(slave)
        raw = b""
        interrupted = False
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: every writer closed the terminal
                        break
                    if not chunk:
                        break
                    raw += chunk
                if stop_when is not None and not interrupted and stop_when(raw):
                    process.send_signal(signal.SIGINT)
                    interrupted = True
                if process.poll() is not None and not ready:
                    break
            else:
                process.kill()
                raise AssertionError(f"{args} did not finish in {timeout}s:\n{raw!r}")
            returncode = process.wait(timeout)
        finally:
            os.close(master)
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr.seek(0)
        return TerminalRun(returncode, raw, stderr.read().decode("utf-8", "replace"))

"""Structured JSON logs with one redaction step that every line passes (SPEC §8).

``configure_logging`` is called once per process. structlog lines and stdlib ``logging``
records (uvicorn, asyncio, libraries) go through the same chain, and exceptions are
rendered to text *before* redaction, so a signed URL inside an exception message is
masked too (PITFALLS: Logs).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import select
import socket
import stat
import sys
import threading
import time
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor

from receiver import metrics
from receiver.redaction import (
    PLAIN_TYPES,
    REDACTED,
    is_secret_key,
    may_hold_secret,
    redact_text,
    redact_value,
)


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last step before rendering, applied to every line."""
    texts: list[str] = []
    for key, value in event_dict.items():
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif type(value) is str:
            texts.append(value)
        elif type(value) not in PLAIN_TYPES:
            event_dict[key] = redact_value(value)
    # PERF: a line's plain strings (ids, types, names) are screened together, with one
    # pass of the marker tests instead of one per string. NUL keeps a marker from forming
    # across two strings; only a line with a marker goes through string by string.
    if texts and may_hold_secret("\0".join(texts)):
        for key, value in event_dict.items():
            if type(value) is str and not is_secret_key(key):
                event_dict[key] = redact_text(value)
    return event_dict


def _render_json(_logger: Any, _method: str, event_dict: EventDict) -> bytes:
    return orjson.dumps(event_dict, default=str, option=orjson.OPT_APPEND_NEWLINE)


def _shared_processors() -> list[Processor]:
    # No add_log_level: the lean logger sets ``level`` itself; stdlib records get it below.
    return [
        structlog.contextvars.merge_contextvars,
        add_timestamp,
        structlog.processors.format_exc_info,
    ]


class _SecondCache:
    """The formatted UTC second, recomputed only when the second changes."""

    second = -1
    text = ""


def add_timestamp(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """``timestamp``: ISO 8601 UTC with microseconds, e.g. ``2026-11-25T22:40:54.598036Z``.

    The same text as structlog's ``TimeStamper(fmt="iso", utc=True)`` at a third of the
    cost: the date and time of day are formatted once per second, not once per line.
    """
    now = time.time()
    second = int(now)
    if second != _SecondCache.second:
        _SecondCache.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SecondCache.second = second
    micros = min(int((now - second) * 1_000_000), 999_999)
    event_dict["timestamp"] = f"{_SecondCache.text}.{micros:06d}Z"
    return event_dict


def _drop_color_message(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


# While stdout does not take lines (a log collector that stopped reading), up to this much
# waits in memory, about 3,000 request lines; past it new lines are dropped and counted
# instead of blocking the event loop, and with it every request and health check.
MAX_BACKLOG_BYTES = 1 << 20
# At exit, how long a stalled stdout gets to take what is left before it is given up.
EXIT_FLUSH_SECONDS = 2.0


class _Output:
    """Where lines go. ``write`` takes what it can without blocking and says how much;
    ``fileno`` is what to wait on for more (None: it always takes everything)."""

    fileno: int | None = None

    def write(self, data: memoryview) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release what this output opened."""


class _StreamOutput(_Output):
    """A Python stream (a test's StringIO, a stream without a descriptor): whole writes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: memoryview) -> int:
        buffer = getattr(self._stream, "buffer", None)
        # A closed or broken stream cannot be reported anywhere, least of all in a log line.
        with contextlib.suppress(OSError, ValueError):
            if buffer is None:
                self._stream.write(bytes(data).decode())
            else:
                self._stream.flush()  # text written to the stream directly goes first
                buffer.write(data)
                buffer.flush()
            self._stream.flush()
        return len(data)


class _DescriptorOutput(_Output):
    """A file descriptor; non-blocking when it is a private one (a pipe or a terminal)."""

    def __init__(self, stream: Any, fd: int, *, private: bool) -> None:
        self._stream = stream
        self._fd = fd
        self._private = private
        self.fileno = fd if private else None

    def write(self, data: memoryview) -> int:
        try:
            self._stream.flush()  # text written to the stream directly goes first
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except (OSError, ValueError):  # a closed or broken stdout: the lines are lost
            return len(data)

    def close(self) -> None:
        if self._private:
            with contextlib.suppress(OSError):
                os.close(self._fd)


class _SocketOutput(_Output):
    """A socket (journald's stdout stream): sent with MSG_DONTWAIT, flags left alone."""

    def __init__(self, stream: Any, sock: socket.socket) -> None:
        self._stream = stream
        self._socket = sock
        self.fileno = sock.fileno()

    def write(self, data: memoryview) -> int:
        try:
            self._stream.flush()
            return self._socket.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except (OSError, ValueError):
            return len(data)

    def close(self) -> None:
        self._socket.close()


def _open_output(stream: Any, *, nonblocking: bool) -> _Output:
    """The output for ``stream``: a private non-blocking descriptor for a pipe or terminal,
    the socket itself for a socket, the descriptor as it is for a file.

    O_NONBLOCK belongs to an open file description, which our stdout shares with whoever
    started us (a shell, a container runtime): set on it, their reads and writes would fail
    with EAGAIN. Reopening ``/proc/self/fd/1`` gives a description of our own for a pipe or
    a terminal; a socket is sent to with MSG_DONTWAIT; a regular file never waits for a
    reader, so it is written as it is.
    """
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # no descriptor (StringIO, pytest capsys)
        return _StreamOutput(stream)
    if not nonblocking:
        return _DescriptorOutput(stream, fd, private=False)
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        with contextlib.suppress(OSError):
            return _DescriptorOutput(stream, os.open(f"/proc/self/fd/{fd}", flags), private=True)
    elif stat.S_ISSOCK(mode):
        with contextlib.suppress(OSError):
            return _SocketOutput(stream, socket.socket(fileno=os.dup(fd)))
    return _DescriptorOutput(stream, fd, private=False)


class _LineWriter:
    """Write rendered lines as bytes to stdout (or stderr); tests may swap ``sys.stdout``.

    Inside a running event loop, lines are collected and written with one ``write`` at the
    end of the loop iteration: under load a service logs one line per request, and a system
    call per line cost ~15 µs of the request's CPU. Lines from other threads go to the same
    loop. The write never blocks (services): what stdout does not take waits in a backlog,
    sent when the loop sees stdout writable again; past ``MAX_BACKLOG_BYTES`` new lines are
    dropped and counted (``receiver_log_lines_dropped_total``), and once the backlog is out
    one line says how many. Lines stay whole and in order. Outside a loop (start-up, the
    CLI) a line is written at once; at exit what is left gets ``EXIT_FLUSH_SECONDS``.
    """

    def __init__(self, to_stderr: bool) -> None:
        self._to_stderr = to_stderr
        self._pending: list[bytes] = []
        # Bytes stdout has not taken yet: whole lines, except that the first may be the rest
        # of a line whose start was written (it must follow before anything else).
        self._backlog = bytearray()
        self._dropped = 0  # lines dropped since stdout stalled, reported when it recovers
        self._lock = threading.Lock()
        # The loop whose next iteration will flush, and the last loop lines came from: lines
        # from other threads are handed to it, so writes happen on one thread.
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._stream: Any = None
        self._output: _Output = _StreamOutput(sys.stdout)
        atexit.register(self.close)

    def msg(self, message: bytes | str) -> None:
        if isinstance(message, str):
            message = (message if message.endswith("\n") else message + "\n").encode()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            self._pending.append(message)
            if running is not None:
                loop: asyncio.AbstractEventLoop | None = running
                self._loop = running
            else:  # another thread: hand the line to the loop that writes, if one runs
                loop = self._loop
                if loop is not None and (loop.is_closed() or not loop.is_running()):
                    loop = self._loop = None
            if loop is not None:
                if self._flush_loop is loop:
                    return
                self._flush_loop = loop
        if loop is None:
            self.flush()
        elif loop is running:
            loop.call_soon(self.flush)  # PERF: no self-pipe write, unlike call_soon_threadsafe
        else:
            try:
                loop.call_soon_threadsafe(self.flush)
            except RuntimeError:  # the loop closed meanwhile
                self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush_loop = None
            lines, self._pending = self._pending, []
            output = self._current_output()
            if self._backlog:  # stalled: behind what is waiting, or dropped
                self._keep_unwritten(lines, 0)
                if self._waiting is not None:
                    return  # the loop calls _on_writable when stdout takes more
            elif lines:
                data = b"".join(lines)
                with memoryview(data) as view:
                    taken = output.write(view)
                if taken >= len(data):
                    return
                self._keep_unwritten(lines, taken)
            else:
                return
            recovered = self._drain(output)
        self._report(recovered)

    def _current_output(self) -> _Output:
        stream = sys.stderr if self._to_stderr else sys.stdout
        if stream is not self._stream:  # first use, or a test swapped sys.stdout
            self._stop_waiting()
            self._output.close()
            self._backlog.clear()
            self._stream = stream
            self._output = _open_output(stream, nonblocking=not self._to_stderr)
        return self._output

    def _keep_unwritten(self, lines: list[bytes], taken: int) -> None:
        """Queue what of ``lines`` lies past byte ``taken``, within the bound."""
        offset, dropped = 0, 0
        for line in lines:
            end = offset + len(line)
            if end > taken:
                if offset < taken:  # half written: the rest must go out, whatever the bound
                    self._backlog += line[taken - offset :]
                elif len(self._backlog) + len(line) <= MAX_BACKLOG_BYTES:
                    self._backlog += line
                else:
                    dropped += 1
            offset = end
        if dropped:
            self._dropped += dropped
            metrics.LOG_LINES_DROPPED.inc(dropped)

    def _drain(self, output: _Output) -> int:
        """Write what the backlog holds; when it is all out, the number of lines dropped."""
        with memoryview(self._backlog) as view:
            taken = output.write(view)
        del self._backlog[:taken]
        if self._backlog:
            self._wait_writable(output)
            return 0
        self._stop_waiting()
        dropped, self._dropped = self._dropped, 0
        return dropped

    def _wait_writable(self, output: _Output) -> None:
        loop = self._loop
        if self._waiting is not None or output.fileno is None or loop is None:
            return  # no loop: the next line or the exit tries again
        try:
            loop.add_writer(output.fileno, self._on_writable)
        except (RuntimeError, ValueError, OSError):  # closed loop, descriptor not pollable
            return
        self._waiting = (loop, output.fileno)

    def _stop_waiting(self) -> None:
        if self._waiting is not None:
            loop, fd = self._waiting
            self._waiting = None
            with contextlib.suppress(RuntimeError, ValueError, OSError):
                loop.remove_writer(fd)

    def _on_writable(self) -> None:
        with self._lock:
            recovered = self._drain(self._output)
        self._report(recovered)

    def _report(self, dropped: int) -> None:
        if dropped:
            get_logger("receiver.logs").warning(
                "log_lines_dropped",
                dropped=dropped,
                detail="stdout did not take these lines in time; requests were still served",
            )

    def close(self) -> None:
        """At exit: write what is left, giving a stalled stdout a bounded time."""
        with self._lock:
            self._stop_waiting()
            self._loop = None  # no loop will serve stdout any more: wait here instead
        self.flush()
        deadline = time.monotonic() + EXIT_FLUSH_SECONDS
        while True:
            with self._lock:
                if not self._backlog:
                    return
                recovered = self._drain(self._output)
                fd = self._output.fileno
            self._report(recovered)  # written by the flush inside the log call
            if fd is None or time.monotonic() > deadline:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([], [fd], [], max(0.0, deadline - time.monotonic()))

    log = debug = info = warning = error = critical = exception = msg


class _LeanBoundLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, minus its layers (structlog's custom-wrapper hook).

    PERF: structlog's own wrapper re-packs the keyword arguments three times on their way
    to the processors (~8 µs of the ~17 µs a line costs); a service logs one line per
    request and one per applied event. Same processors, same output, same level filter.
    """

    min_level = logging.INFO  # set per configuration by _lean_logger_class()

    def _emit(self, method: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        event_dict: Any = {**self._context, **kw} if self._context else kw
        event_dict["event"] = event % args if args else event
        event_dict["level"] = method  # what add_log_level does for stdlib records
        try:
            for processor in self._processors:
                event_dict = processor(self._logger, method, event_dict)
        except structlog.DropEvent:
            return
        self._logger.msg(event_dict)

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.DEBUG:
            self._emit("debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.INFO:
            self._emit("info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.WARNING:
            self._emit("warning", event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.ERROR:
            self._emit("error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.ERROR:
            kw.setdefault("exc_info", True)
            self._emit("error", event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> None:
        if self.min_level <= logging.CRITICAL:
            self._emit("critical", event, args, kw)

    fatal = critical
    msg = info


def _lean_logger_class(min_level: int) -> type[_LeanBoundLogger]:
    return type("LeanBoundLogger", (_LeanBoundLogger,), {"min_level": min_level})


class _WriterHandler(logging.Handler):
    """Stdlib records through the same writer, so every line keeps its order."""

    def __init__(self, writer: _LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.msg(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "info", fmt: str = "json", *, to_stderr: bool = False) -> None:
    """Configure structlog and stdlib logging once for this process.

    Services log to stdout; CLI commands pass ``to_stderr`` so their log lines (an audit
    line, a library warning) never mix with the output a script parses.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    writer = _LineWriter(to_stderr)
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else _render_json
    )
    structlog.configure(
        processors=[*_shared_processors(), redact, renderer],
        wrapper_class=_lean_logger_class(numeric_level),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=True,
    )
    handler = _WriterHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # uvicorn's records carry a duplicate message with ANSI colours.
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                *_shared_processors(),
                _drop_color_message,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                _render_text_json if fmt == "json" else renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # We write our own canonical line per request; uvicorn's access line would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(max(numeric_level, logging.WARNING))


def _render_text_json(_logger: Any, _method: str, event_dict: EventDict) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)

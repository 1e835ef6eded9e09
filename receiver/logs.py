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
import sys
import threading
import time
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor

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


class _LineWriter:
    """Write rendered lines as bytes to stdout (or stderr); tests may swap ``sys.stdout``.

    Inside a running event loop, lines are collected and written with one ``write`` and
    one flush at the end of the loop iteration: under load a service logs one line per
    request, and a system call per line cost ~15 µs of the request's CPU. A line waits at
    most one iteration (never for I/O), and the buffer is flushed at exit. Outside a loop
    (start-up, the CLI's synchronous code) a line is written at once.
    """

    def __init__(self, to_stderr: bool) -> None:
        self._to_stderr = to_stderr
        self._pending: list[bytes] = []
        # The loop whose next iteration will flush. Lines may also come from other threads
        # (a library logging from its own thread, a second loop in tests): the lock keeps
        # every line, and a loop that finds lines pending for another loop schedules too.
        self._flush_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        atexit.register(self.flush)

    def msg(self, message: bytes | str) -> None:
        if isinstance(message, str):
            message = (message if message.endswith("\n") else message + "\n").encode()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self._lock:
                self._pending.append(message)
            self.flush()
            return
        with self._lock:
            self._pending.append(message)
            if self._flush_loop is loop:
                return
            self._flush_loop = loop
        loop.call_soon(self.flush)

    def flush(self) -> None:
        # Under the lock: lines from several threads go out whole and in the order taken.
        with self._lock:
            if not self._pending:
                return
            data, self._pending, self._flush_loop = b"".join(self._pending), [], None
            stream = sys.stderr if self._to_stderr else sys.stdout
            buffer = getattr(stream, "buffer", None)
            # A closed or broken stdout cannot be reported anywhere, least of all in a log
            # line; raising here would only fail the request that happened to log.
            with contextlib.suppress(OSError, ValueError):
                if buffer is None:
                    stream.write(data.decode())
                else:
                    stream.flush()  # text written to the stream directly goes first
                    buffer.write(data)
                    buffer.flush()
                stream.flush()

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

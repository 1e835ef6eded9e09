"""Structured JSON logs with one redaction step that every line passes (SPEC §8).

``configure_logging`` is called once per process. structlog lines and stdlib ``logging``
records (uvicorn, asyncio, libraries) go through the same chain, and exceptions are
rendered to text *before* redaction, so a signed URL inside an exception message is
masked too (PITFALLS: Logs).
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"secret|token|passw|authorization|signature|api_?key|cookie|credential|private",
    re.IGNORECASE,
)
# Values that look like a secret wherever they appear in a string.
_SECRET_VALUE = re.compile(
    r"whsec_[A-Za-z0-9+/=_-]*"
    r"|rvya_sk_[A-Za-z0-9_-]*"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=-]+"
    r"|(?<=[a-z]://)[^\s/:@]*:[^\s/@]*@"  # user:password@ in any URL
    r"|v1a?,[A-Za-z0-9+/]{20,}={0,2}"  # Standard Webhooks signature entries
    r"|v1=[0-9a-fA-F]{32,}"  # stripe-scheme signature entries
)
# The query string of any URL: signed file URLs carry their credentials there.
_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]*)\?[^\s#\"'<>]*")
_QUICK_CHECK = re.compile(r"whsec_|rvya_sk_|bearer|://|v1a?[,=]", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Mask secret-looking values and URL query strings in free text."""
    if not _QUICK_CHECK.search(text):
        return text
    text = _URL_QUERY.sub(r"\1?" + REDACTED, text)
    return _SECRET_VALUE.sub(REDACTED, text)


# PERF: most values on a log line are plain str/int/float/None; an exact-type test answers
# them before the ABC ``isinstance(value, Mapping)`` check (~1 µs each). Same results: every
# other type, subclasses included, still takes the full chain below.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def redact_value(value: Any) -> Any:
    """Redact strings, recursively through mappings and sequences."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind in _PLAIN_TYPES:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return REDACTED  # raw bytes are bodies or keys: never logged
    if isinstance(value, Mapping):
        return {
            key: REDACTED if _SECRET_KEY.search(str(key)) else redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact_text(str(value))


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    # PERF: log lines reuse a handful of field names; the regex runs once per name.
    return _SECRET_KEY.search(key) is not None


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last step before rendering, applied to every line."""
    for key, value in event_dict.items():
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


def _render_json(_logger: Any, _method: str, event_dict: EventDict) -> bytes:
    return orjson.dumps(event_dict, default=str, option=orjson.OPT_APPEND_NEWLINE)


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _drop_color_message,
    ]


def _drop_color_message(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn adds a duplicate of the message with ANSI colours.
    event_dict.pop("color_message", None)
    return event_dict


class _LineWriter:
    """Write rendered lines as bytes to stdout (or stderr); tests may swap ``sys.stdout``."""

    def __init__(self, to_stderr: bool) -> None:
        self._to_stderr = to_stderr

    def msg(self, message: bytes | str) -> None:
        stream = sys.stderr if self._to_stderr else sys.stdout
        if isinstance(message, bytes):
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                buffer.write(message)
                buffer.flush()
                return
            message = message.decode()
        stream.write(message if message.endswith("\n") else message + "\n")
        stream.flush()

    log = debug = info = warning = error = critical = exception = msg


def configure_logging(level: str = "info", fmt: str = "json", *, to_stderr: bool = False) -> None:
    """Configure structlog and stdlib logging once for this process.

    Services log to stdout; CLI commands pass ``to_stderr`` so their log lines (an audit
    line, a library warning) never mix with the output a script parses.
    """
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else _render_json
    )
    structlog.configure(
        processors=[*_shared_processors(), redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=lambda *_: _LineWriter(to_stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr if to_stderr else sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_shared_processors(),
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

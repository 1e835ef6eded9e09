"""Map a Rivya delivery body to the normalized record (SPEC §2, §5).

The key that holds the generation object is not documented, so we look for it at
``data``, ``data.object``, ``generation``, then take the body itself. Unknown fields are
ignored; anything that cannot become a record raises ``UnmappableEvent`` with a short
reason, and the event is stored as ``dead`` so ops can fix the mapping and replay.

A signed body is still untrusted input (PITFALLS "Recovery and edges"). The record's
values must fit every store that holds them, so the valid ranges are decided here, once,
for ingest (``identify``) and the worker (``map_event``) alike:

- credits: finite numbers from 0 to 2^53. Credits are small non-negative amounts; 2^53 is
  the bound below which every whole number is exact in an IEEE double, which is what SQLite
  REAL, PostgreSQL ``double precision`` and JSON readers in JavaScript hold. (Past 2^63 the
  SQLite driver cannot even bind the value; orjson turns integers past 2^64 into inexact
  floats and refuses ``1e400``.) Anything else: ``invalid_number``.
- text fields and URLs: at most ``MAX_TEXT_LENGTH`` characters, no NUL (PostgreSQL text and
  jsonb refuse it); at most ``MAX_RESULT_URLS`` result URLs. A record's size then does not
  grow with ``RECEIVER_MAX_BODY_BYTES``.
- nesting: orjson refuses bodies nested deeper than 1024 levels (``too_deep``); the mapping
  reads a fixed handful of paths, so no depth below that costs it anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from receiver.models import STATUS_RANK, ReasonCode, Record, parse_time

MAX_CREDITS = 2**53
MAX_TEXT_LENGTH = 8192
MAX_RESULT_URLS = 256
CREDIT_FIELDS = ("reserved_credits", "final_credits")
# orjson's own words for the two refusals that are not "this is not JSON".
_INFINITE_NUMBER = "number is infinity"
_TOO_DEEP = "depth limit exceeded"


class UnmappableEvent(Exception):
    """The body is authentic but does not describe a generation we can record.

    ``reason`` is a stable snake_case word; ``detail`` (optional) says which field, never
    its value (the body is not for logs).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    @property
    def last_error(self) -> str:
        """The dead event's ``last_error``: ``unmappable: <reason>[: <detail>]``."""
        return f"unmappable: {self.reason}" + (f": {self.detail}" if self.detail else "")

    @property
    def code(self) -> ReasonCode:
        """The dead event's reason code: ``not_json`` and ``invalid_number`` stand out,
        every other reason (no task id, unknown status, ...) is ``unmappable``."""
        if self.reason == ReasonCode.NOT_JSON:
            return ReasonCode.NOT_JSON
        if self.reason == ReasonCode.INVALID_NUMBER:
            return ReasonCode.INVALID_NUMBER
        return ReasonCode.UNMAPPABLE


@dataclass(frozen=True, slots=True)
class MappedEvent:
    event_type: str
    record: Record


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or UnmappableEvent('not_json' / 'not_an_object')."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if _INFINITE_NUMBER in exc.msg:  # e.g. 1e400: no double holds it
            raise UnmappableEvent("invalid_number", "a number is infinite as a double") from None
        if _TOO_DEEP in exc.msg:
            raise UnmappableEvent("too_deep", "nested deeper than 1024 levels") from None
        raise UnmappableEvent("not_json") from None
    if not isinstance(document, dict):
        raise UnmappableEvent("not_an_object")
    return document


def _looks_like_generation(value: object) -> bool:
    return isinstance(value, dict) and "status" in value and "id" in value


def find_generation(document: dict[str, Any]) -> dict[str, Any]:
    """The generation object inside an envelope, by the fallbacks of SPEC §2."""
    data = document.get("data")
    nested = [
        data,
        data.get("object") if isinstance(data, dict) else None,
        document.get("generation"),
    ]
    for candidate in (*nested, document):
        if _looks_like_generation(candidate):
            return candidate  # type: ignore[return-value]
    # Nothing complete: return the first partial one, so the dead event's reason says what
    # is missing (``missing_task_id``/``missing_status``) instead of "nothing found".
    for candidate in nested:
        if isinstance(candidate, dict) and ("id" in candidate or "status" in candidate):
            return candidate
    if "status" in document:
        return document
    raise UnmappableEvent("no_generation_object")


def event_type_of(document: dict[str, Any]) -> str:
    """The envelope ``type``; for a bare generation (or no ``type``), ``generation.<status>``.

    A bare generation's own ``type`` field (if Rivya has one, e.g. ``image``) describes the
    job, not the event, so SPEC §2 has the type derive from its status instead.
    """
    try:
        generation: dict[str, Any] | None = find_generation(document)
    except UnmappableEvent:
        generation = None
    return _event_type(document, generation)


def _event_type(document: dict[str, Any], generation: dict[str, Any] | None) -> str:
    declared = document.get("type")
    if generation is not document and isinstance(declared, str) and declared:
        return declared[:100]
    status = generation.get("status") if generation is not None else None
    return f"generation.{status}"[:100] if isinstance(status, str) and status else "unknown"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _number_fits(value: object) -> bool:
    number = _number(value)
    # ``0 <= x <= MAX`` is false for NaN too, which compares false with everything.
    return number is None or (math.isfinite(number) and 0 <= number <= MAX_CREDITS)


def _bad_text(value: object) -> bool:
    return isinstance(value, str) and (len(value) > MAX_TEXT_LENGTH or "\x00" in value)


def _text_refused(where: str) -> UnmappableEvent:
    return UnmappableEvent(
        "invalid_text", f"{where}: longer than {MAX_TEXT_LENGTH} characters or holds NUL"
    )


def _check_values(generation: dict[str, Any]) -> None:
    """Every value the record takes from ``generation`` fits the valid ranges above.

    PERF: runs at ingest for every event (under 1 µs for a typical one: identify went from
    ~1.2 to ~2.1 µs); small whole credits, the common case, are answered inline.
    """
    for name in CREDIT_FIELDS:
        value = generation.get(name)
        plain = value is None or (type(value) is int and 0 <= value <= MAX_CREDITS)
        if not plain and not _number_fits(value):
            raise UnmappableEvent("invalid_number", f"{name} is outside 0..2^53")
    for name in ("client_request_id", "model"):
        if _bad_text(generation.get(name)):
            raise _text_refused(name)
    result = generation.get("result")
    if isinstance(result, dict):
        if _bad_text(result.get("primary_url")):
            raise _text_refused("result.primary_url")
        urls = result.get("urls")
        if isinstance(urls, list):
            if len(urls) > MAX_RESULT_URLS:
                raise UnmappableEvent(
                    "too_many_urls", f"result.urls: more than {MAX_RESULT_URLS} URLs"
                )
            for url in urls:
                if _bad_text(url):
                    raise _text_refused("result.urls")
    error = generation.get("error")
    if isinstance(error, dict):
        for name in ("code", "message"):
            if _bad_text(error.get(name)):
                raise _text_refused(f"error.{name}")


def _updated_at(
    generation: dict[str, Any], document: dict[str, Any], fallback: datetime | None
) -> datetime | None:
    for candidate in (
        generation.get("updated_at"),
        generation.get("created_at"),
        document.get("created_at"),
    ):
        if isinstance(candidate, str) and candidate:
            try:
                return parse_time(candidate)
            # OverflowError: a valid ISO time near year 1 or 9999 that leaves range in UTC.
            except (ValueError, OverflowError):
                raise UnmappableEvent("bad_updated_at") from None
    return fallback


def _checked(
    document: dict[str, Any], received_at: datetime | None
) -> tuple[dict[str, Any], str, str, datetime | None]:
    """The generation, its task id, status and update time; UnmappableEvent if any is
    unusable. Every reason an event cannot be mapped is decided here, and only here.
    With ``received_at`` None, a missing update time stays None (no fallback needed)."""
    generation = find_generation(document)
    task_id = generation.get("id")
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        task_id = str(task_id)
    if not isinstance(task_id, str) or not task_id or len(task_id) > 255:
        raise UnmappableEvent("missing_task_id")
    status = generation.get("status")
    if not isinstance(status, str) or not status:
        raise UnmappableEvent("missing_status")
    if status not in STATUS_RANK:
        raise UnmappableEvent("unknown_status")
    updated_at = _updated_at(generation, document, received_at)
    _check_values(generation)
    return generation, task_id, status, updated_at


def identify(document: dict[str, Any]) -> tuple[str, str]:
    """``(event_type, record_key)`` of an event ``map_event`` can map, or the same
    UnmappableEvent it would raise. PERF: what ingest needs (its log line and the stored
    event), without building the record, which only the worker uses."""
    generation, task_id, _, _ = _checked(document, None)
    return _event_type(document, generation), task_id


def map_event(document: dict[str, Any], event_id: str, received_at: datetime) -> MappedEvent:
    """Build the record one event stands for; raise UnmappableEvent if it cannot."""
    generation, task_id, status, updated_at = _checked(document, received_at)
    result = _object(generation.get("result"))
    urls = result.get("urls")
    urls = urls if isinstance(urls, list) else []
    error = _object(generation.get("error"))
    record = Record(
        record_key=task_id,
        status=status,
        source_updated_at=updated_at or received_at,
        last_event_id=event_id,
        client_request_id=_text(generation.get("client_request_id")),
        model=_text(generation.get("model")),
        primary_url=_text(result.get("primary_url")),
        result_urls=tuple(url for url in urls if isinstance(url, str)),
        error_code=_text(error.get("code")),
        error_message=_text(error.get("message")),
        reserved_credits=_number(generation.get("reserved_credits")),
        final_credits=_number(generation.get("final_credits")),
    )
    return MappedEvent(event_type=_event_type(document, generation), record=record)

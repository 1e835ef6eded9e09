"""Map a Rivya delivery body to the normalized record (SPEC §2, §5).

The key that holds the generation object is not documented, so we look for it at
``data``, ``data.object``, ``generation``, then take the body itself. Unknown fields are
ignored; anything that cannot become a record raises ``UnmappableEvent`` with a short
reason, and the event is stored as ``dead`` so ops can fix the mapping and replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from receiver.models import STATUS_RANK, ReasonCode, Record, parse_time


class UnmappableEvent(Exception):
    """The body is authentic but does not describe a generation we can record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

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
    except orjson.JSONDecodeError:
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
    return generation, task_id, status, _updated_at(generation, document, received_at)


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

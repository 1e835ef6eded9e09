"""The record as a flat row, and the guarded upsert, shared by the SQL and Redis sinks.

One column per normalized-record field (SPEC §5, §9) plus ``status_rank``, which lets the
ordering guard compare statuses inside the store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from receiver.models import TERMINAL_RANK, Record, format_time

COLUMNS = (
    "record_key",
    "client_request_id",
    "status",
    "status_rank",
    "model",
    "primary_url",
    "result_urls",
    "error_code",
    "error_message",
    "reserved_credits",
    "final_credits",
    "source_updated_at",
    "last_event_id",
    "applied_at",
)


def flat_row(record: Record) -> dict[str, Any]:
    """Column values with the URL list as JSON text and times as fixed-width ISO 8601."""
    return {
        "record_key": record.record_key,
        "client_request_id": record.client_request_id,
        "status": record.status,
        "status_rank": record.status_rank,
        "model": record.model,
        "primary_url": record.primary_url,
        "result_urls": orjson.dumps(list(record.result_urls)).decode(),
        "error_code": record.error_code,
        "error_message": record.error_message,
        "reserved_credits": record.reserved_credits,
        "final_credits": record.final_credits,
        "source_updated_at": format_time(record.source_updated_at),
        "last_event_id": record.last_event_id,
        "applied_at": format_time(record.applied_at),
    }


@functools.lru_cache(maxsize=512)
def positional_upsert(rows: int, marker: str) -> str:
    """The guarded upsert of ``rows`` rows with positional parameters (``?`` for sqlite3,
    ``%s`` for psycopg), their values in COLUMNS order, row after row."""
    return guarded_upsert(lambda _name: marker, rows=rows)


def guarded_upsert(placeholder: Callable[[str], str], rows: int = 1) -> str:
    """The ordering guard (SPEC §4) as one ``INSERT … ON CONFLICT … WHERE`` statement.

    A row changes only for a newer event (``source_updated_at``, then ``status_rank``) and
    a terminal status never goes back to a non-terminal one. The event that produced the
    stored row, delivered again, also counts as written (its columns keep their values): the
    statement's row count is then the number of records applied, decided on the row as the
    upsert locked it. Deciding "redelivery" from a read beside the upsert is a race: in
    PostgreSQL that read sees the statement's snapshot, from before a concurrent worker
    committed the same event, and called an applied event stale.

    ``placeholder`` spells a parameter in the driver's style (``:name`` for sqlite3,
    ``%(name)s`` for psycopg); with ``rows`` > 1 the statement takes that many rows, each
    guarded (SQLite takes them one after another, so one key may appear twice; PostgreSQL
    refuses that).
    """
    row = f"({', '.join(placeholder(name) for name in COLUMNS)})"
    newer = (
        f"(NOT (generations.status_rank = {TERMINAL_RANK}"
        f" AND excluded.status_rank < {TERMINAL_RANK})"
        " AND (excluded.source_updated_at > generations.source_updated_at"
        " OR (excluded.source_updated_at = generations.source_updated_at"
        " AND excluded.status_rank > generations.status_rank)))"
    )
    assignments = ",\n    ".join(
        f"{name} = CASE WHEN {newer} THEN excluded.{name} ELSE generations.{name} END"
        for name in COLUMNS[1:]
    )
    return f"""
INSERT INTO generations ({", ".join(COLUMNS)})
VALUES {", ".join([row] * rows)}
ON CONFLICT (record_key) DO UPDATE SET
    {assignments}
WHERE {newer} OR generations.last_event_id = excluded.last_event_id
"""  # noqa: S608 - only our own column names are interpolated


# What a stale outcome reports the record held (``SinkResult.held``).
HELD_COLUMNS = ("status", "source_updated_at", "last_event_id")


def held_state(values: Mapping[str, Any]) -> dict[str, str]:
    """The held part of a stored row, as text."""
    return {name: _text(values[name]) for name in HELD_COLUMNS}


def record_json(values: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row or hash in the shape of ``Record.to_json()`` (``Sink.read``'s answer):
    the URL list as a list, credits as numbers, times as fixed-width ISO 8601."""
    record: dict[str, Any] = {}
    for name in COLUMNS:
        if name == "status_rank":
            continue
        value = values.get(name)
        if name == "result_urls":
            value = orjson.loads(value) if isinstance(value, str | bytes) else list(value or [])
        elif name in ("reserved_credits", "final_credits"):
            value = float(value) if value is not None else None
        elif value is not None:
            value = _text(value)
        record[name] = value
    return record


def _text(value: Any) -> str:
    if isinstance(value, datetime):
        return format_time(value)
    return value.decode() if isinstance(value, bytes) else str(value)

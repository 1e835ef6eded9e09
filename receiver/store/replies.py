"""One reply dialect: Redis answers turned into plain Python values in one place.

The store's commands come back in two shapes: raw RESP from the auto-pipeline's hiredis
reader (lists of bytes; RESP3 maps when the server speaks it) and redis-py's parsed
answers (a cluster pipeline, the blocking reads). Everything outside ``receiver.store``
sees neither: these helpers make dicts, text and queue entries of both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from receiver.keys import ShardKeys
from receiver.store.values import QueueEntry


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def as_dict(fields: Any) -> Any:
    """An HGETALL reply as a dict: RESP2 answers a flat list, RESP3 (and redis-py) a map."""
    if isinstance(fields, list):
        return dict(zip(fields[::2], fields[1::2], strict=True))
    return fields


def text_dict(fields: Any) -> dict[str, str]:
    """A hash reply (either shape) with names and values as text."""
    return {text(name): text(value) for name, value in (as_dict(fields) or {}).items()}


def stream_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """XRANGE/XREVRANGE answers (raw or parsed) as ``[(id, {field: value}), ...]``."""
    return [
        (text(entry_id), text_dict(fields) if fields else {}) for entry_id, fields in reply or []
    ]


def entries(streams: Mapping[str, ShardKeys], response: Any) -> list[QueueEntry]:
    """Queue entries from an XREADGROUP answer: ``[[stream, [(id, fields), ...]], ...]``."""
    return [
        QueueEntry(streams[text(stream)], text(entry_id), fields[b"m"].decode())
        for stream, stream_entries in response or []
        for entry_id, fields in stream_entries
        if fields  # a deleted entry still pending shows up with no fields
    ]


def stream_items(response: Any) -> list[tuple[Any, list[tuple[Any, dict[Any, Any]]]]]:
    """A raw XREADGROUP reply (RESP2 list or RESP3 map, flat field lists) in the shape
    redis-py's ``xreadgroup`` returns, for ``entries``."""
    items = response.items() if isinstance(response, dict) else response
    return [
        (
            stream,
            [
                (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {})
                for entry_id, fields in stream_entries
            ],
        )
        for stream, stream_entries in items
    ]


def scored(reply: Any) -> list[tuple[str, int]]:
    """A ``WITHSCORES`` range reply (flat RESP2 list, RESP3 pairs or redis-py tuples)."""
    if not reply:
        return []
    if isinstance(reply[0], list | tuple):
        return [(text(member), int(float(score))) for member, score in reply]
    return [
        (text(member), int(float(score)))
        for member, score in zip(reply[::2], reply[1::2], strict=True)
    ]


def pending_count(reply: Any) -> int:
    """How many entries an XPENDING summary counts (raw list or redis-py's dict)."""
    if isinstance(reply, dict):
        return int(reply.get("pending", 0))
    return int(reply[0]) if reply else 0

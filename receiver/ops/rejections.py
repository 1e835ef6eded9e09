"""Rejected deliveries, kept and explained (issue 14, item 3): the read side.

``receiver deliveries list --rejected``, the console's page and ``receiver verify
--rejected ID`` read what ``receiver.rejections.RejectionRecorder`` wrote: when, from
where, which status and code, which headers were present (names only), the attempted
event id, the timestamp skew, the body size and how many keys were tried. Never a body,
a signature or a header value, because none was ever stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.ops.events import FilterError, iso_ms
from receiver.redaction import redact_value
from receiver.store import EventStore, now_ms

_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")
# How many log entries one call reads at most to fill a page filtered by code.
SCAN_LIMIT = 5_000
READ_CHUNK = 200


@dataclass(frozen=True, slots=True)
class RejectedDelivery:
    """One rejected delivery as recorded."""

    id: str
    at_ms: int
    source: str
    status: int
    code: str
    client: str
    headers: tuple[str, ...]
    event_id: str
    skew_seconds: int | None
    body_bytes: int
    keys_tried: int
    scheme: str
    reason: str

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> RejectedDelivery:
        def number(name: str) -> int:
            text = fields.get(name, "")
            return int(text) if text.lstrip("-").isdigit() else 0

        skew = fields.get("skew", "")
        return cls(
            id=entry_id,
            at_ms=number("at_ms") or int(entry_id.partition("-")[0]),
            source=fields.get("source", ""),
            status=number("status"),
            code=fields.get("code", ""),
            client=fields.get("client", ""),
            headers=tuple(name for name in fields.get("headers", "").split(",") if name),
            event_id=fields.get("event_id", ""),
            skew_seconds=int(skew) if skew.lstrip("-").isdigit() else None,
            body_bytes=number("body_bytes"),
            keys_tried=number("keys_tried"),
            scheme=fields.get("scheme", ""),
            reason=fields.get("reason", ""),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = redact_value(
            {
                "id": self.id,
                "at": iso_ms(self.at_ms),
                "source": self.source,
                "status": self.status,
                "code": self.code,
                "reason": self.reason,
                "client": self.client,
                "headers": list(self.headers),
                "event_id": self.event_id,
                "skew_seconds": self.skew_seconds,
                "body_bytes": self.body_bytes,
                "keys_tried": self.keys_tried,
                "scheme": self.scheme,
            }
        )
        return data


@dataclass(frozen=True, slots=True)
class RejectedPage:
    deliveries: tuple[RejectedDelivery, ...]
    # Pass back as ``before`` for older entries; None when the log has no more.
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "deliveries": [delivery.to_json() for delivery in self.deliveries],
            "next_cursor": self.next_cursor,
        }


def _check_id(value: str, option: str) -> str:
    if not _STREAM_ID.fullmatch(value):
        raise FilterError(f"{option}: not a rejected-delivery id (like 1767225600000-0)")
    return value


async def list_rejected(
    store: EventStore,
    *,
    since_ms: int | None = None,
    code: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> RejectedPage:
    """Recorded rejections newest first, at most ``limit``, optionally of one ``code``
    (``invalid_signature``, ``timestamp_out_of_tolerance``, … or a status like ``401``)."""
    if limit < 1:
        raise FilterError("--limit: must be at least 1")
    cursor = _check_id(before, "--before") if before else None
    found: list[RejectedDelivery] = []
    scanned = 0
    exhausted = False
    while len(found) < limit and scanned < SCAN_LIMIT:
        entries = await store.rejections.newest(
            before=cursor, since_ms=since_ms, count=READ_CHUNK if code else limit - len(found)
        )
        if not entries:
            exhausted = True
            break
        scanned += len(entries)
        for entry_id, fields in entries:
            cursor = entry_id
            delivery = RejectedDelivery.from_fields(entry_id, fields)
            if code is None or code in (delivery.code, str(delivery.status)):
                found.append(delivery)
                if len(found) >= limit:
                    break
    return RejectedPage(tuple(found), None if exhausted or cursor is None else cursor)


async def get_rejected(store: EventStore, rejection_id: str) -> RejectedDelivery | None:
    """One recorded rejection by id, or None if unknown or trimmed away."""
    fields = await store.rejections.get(_check_id(rejection_id, "--rejected"))
    return RejectedDelivery.from_fields(rejection_id, fields) if fields is not None else None


async def rejected_counts(store: EventStore, *, window_seconds: int = 3600) -> dict[str, int]:
    """Rejections by code over the window (per minute), sampled-out ones included."""
    minutes = max(1, (window_seconds + 59) // 60)
    return await store.rejections.counts(minutes)


def since(seconds: float) -> int:
    return now_ms() - int(seconds * 1000)

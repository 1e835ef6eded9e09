"""Which stored events an operator means, and how they read: filters, listing, one event.

The queries behind ``receiver events list`` and ``events show`` (SPEC §7, §9), also used
to select events for a bulk replay. Printable output comes out redacted unless asked raw.
"""

from __future__ import annotations

import fnmatch
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.keys import ShardKeys, all_shards, member_of
from receiver.models import EventState, format_time, parse_time
from receiver.redaction import redact_text, redact_value
from receiver.settings import DEFAULT_SOURCE, parse_duration
from receiver.store import EventStore, StoredEvent, now_ms

# Members fetched per ZREVRANGEBYSCORE page, and hashes per pipelined HGETALL round trip.
PAGE_SIZE = 500

# Called as ``progress(done, total)`` by long operations (replay, reencrypt).
Progress = Callable[[int, int], None]


class FilterError(ValueError):
    """An event filter option is malformed; the message names the option."""


# -- filters -----------------------------------------------------------------------------


def parse_time_bound(text: str, now: int, option: str) -> int:
    """Milliseconds for ``2h``/``30m``/``7d`` (that long ago) or an ISO 8601 time."""
    text = text.strip()
    try:
        return now - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        return int(parse_time(text).timestamp() * 1000)
    except (ValueError, OverflowError):
        raise FilterError(
            f"{option}: not a duration (30m, 2h, 7d) or an ISO 8601 time: {text[:40]!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which stored events a list or bulk replay covers; all criteria must hold."""

    source: str | None = DEFAULT_SOURCE
    state: EventState | None = None
    event_type: str | None = None
    record_key: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise FilterError("--limit: must be at least 1")
        if (
            self.since_ms is not None
            and self.until_ms is not None
            and self.since_ms > self.until_ms
        ):
            raise FilterError("--since: is after --until")

    @property
    def selects(self) -> bool:
        """True when something narrows the events beyond their source."""
        return any(
            value is not None
            for value in (
                self.state,
                self.event_type,
                self.record_key,
                self.since_ms,
                self.until_ms,
            )
        )

    def matches(self, event: StoredEvent) -> bool:
        # ``--type`` takes shell patterns (``generation.*``); a plain name matches itself.
        return (
            (self.state is None or event.state is self.state)
            and (self.event_type is None or fnmatch.fnmatchcase(event.event_type, self.event_type))
            and (self.record_key is None or event.record_key == self.record_key)
        )

    def describe(self) -> dict[str, Any]:
        """The filter as JSON-ready values (times as ISO 8601), for audit entries."""
        described: dict[str, Any] = {
            "source": self.source,
            "status": self.state.value if self.state else None,
            "type": self.event_type,
            "record": self.record_key,
            "since": iso_ms(self.since_ms) if self.since_ms is not None else None,
            "until": iso_ms(self.until_ms) if self.until_ms is not None else None,
            "limit": self.limit,
        }
        return {key: value for key, value in described.items() if value is not None}


def iso_ms(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC))


# -- listing -----------------------------------------------------------------------------


async def list_events(store: EventStore, event_filter: EventFilter) -> list[StoredEvent]:
    """Matching events, newest first, at most ``limit``; expired index entries are skipped."""
    # Fix the upper bound now: events arriving while we page land above it and cannot
    # shift the offsets of the pages still to come.
    upper = event_filter.until_ms if event_filter.until_ms is not None else now_ms()
    per_shard = [
        await _scan_shard(store, shard, event_filter, upper) for shard in all_shards(store.shards)
    ]
    merged = heapq.merge(*per_shard, key=lambda event: -event.received_ms)
    events = list(merged)
    return events[: event_filter.limit] if event_filter.limit is not None else events


async def _scan_shard(
    store: EventStore, shard: ShardKeys, event_filter: EventFilter, upper: int
) -> list[StoredEvent]:
    # The dead set is far smaller than the index: walk it when only dead events qualify.
    zset = shard.dead if event_filter.state is EventState.DEAD else shard.index
    lower: int | str = event_filter.since_ms if event_filter.since_ms is not None else "-inf"
    prefix = f"{event_filter.source}|" if event_filter.source is not None else ""
    found: list[StoredEvent] = []
    seen: set[str] = set()
    offset = 0
    while event_filter.limit is None or len(found) < event_filter.limit:
        page = await store.client.zrevrangebyscore(zset, upper, lower, start=offset, num=PAGE_SIZE)
        if not page:
            break
        offset += len(page)
        members = [
            member
            for member in (raw.decode() for raw in page)
            if member.startswith(prefix) and member not in seen
        ]
        seen.update(members)
        for event in await load_many(store, members):
            if event is not None and event_filter.matches(event):
                found.append(event)
    return found[: event_filter.limit] if event_filter.limit is not None else found


async def load_many(store: EventStore, members: Sequence[str]) -> list[StoredEvent | None]:
    """The stored events for ``members`` in one pipelined round trip (None where gone)."""
    if not members:
        return []
    pipe = store.client.pipeline(transaction=False)
    for member in members:
        pipe.hgetall(store.keys(member).event(member))
    replies = await pipe.execute()
    return [
        StoredEvent.from_hash(member, fields) if fields else None
        for member, fields in zip(members, replies, strict=True)
    ]


def summary(event: StoredEvent) -> dict[str, Any]:
    """The fields ``events list --json`` prints (SPEC §9), not yet redacted."""
    return {
        "event_id": event.event_id,
        "source": event.source,
        "state": event.state.value,
        "type": event.event_type,
        "record_key": event.record_key,
        "received_at": iso_ms(event.received_ms),
        "attempts": event.attempts,
        "reason_code": event.reason_code,
        "last_error": event.last_error,
    }


# -- one event ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One stored event with its history and its body (decrypted, if a key opens it)."""

    event: StoredEvent
    history: list[dict[str, Any]]
    body: bytes | None
    body_error: str | None = None

    def to_json(self, *, raw: bool = False) -> dict[str, Any]:
        """Everything about the event; redacted like the logs unless ``raw``."""
        data: dict[str, Any] = {
            **summary(self.event),
            "signed_at": iso_ms(self.event.signed_ts * 1000) if self.event.signed_ts else None,
            "content_type": self.event.content_type,
            "encrypted": self.event.encrypted,
            "body_sha256": self.event.body_sha256,
            "history": [
                {"at": iso_ms(int(entry.get("at_ms", 0))), **entry} for entry in self.history
            ],
        }
        if self.body_error is not None:
            data["body_error"] = self.body_error
        if raw:
            data["body"] = self.body.decode("utf-8", "replace") if self.body is not None else None
            return data
        data["body"] = redacted_body(self.body) if self.body is not None else None
        redacted: dict[str, Any] = redact_value(data)
        return redacted


def redacted_body(body: bytes) -> Any:
    """The body as JSON passed through the log redaction, or redacted text if not JSON."""
    try:
        return redact_value(orjson.loads(body))
    except orjson.JSONDecodeError:
        return redact_text(body.decode("utf-8", "replace"))


async def show_event(
    store: EventStore, cipher: BodyCipher, source: str, event_id: str
) -> EventDetail | None:
    """The event ``event_id`` of ``source``, or None if unknown or expired."""
    member = member_of(source, event_id)
    event = await store.load(member)
    if event is None:
        return None
    history = await store.history(member)
    try:
        return EventDetail(event, history, cipher.open(event.body, event.encrypted))
    except BodyDecryptError as exc:
        return EventDetail(event, history, None, str(exc))

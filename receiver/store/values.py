"""The values the event store takes and answers: events, queue entries, outcomes, attempts.

Plain frozen dataclasses with no Redis in them, so the worker, ingest and the ops layer
can build and read them without knowing how they are stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from receiver.keys import ShardKeys, member_of
from receiver.models import EventState


class Vanished(StrEnum):
    """What vanished.lua found for an entry whose event hash was gone."""

    PRESENT = "present"  # stored again meanwhile (a sender's retry): its own entry carries it
    EXPIRED = "expired"  # retention ran out first
    LOST = "lost"  # gone while it should still be stored


class AcceptResult(IntEnum):
    """What the accept script found (its return values)."""

    DUPLICATE = 0
    NEW = 1
    CONFLICT = 2


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified delivery, ready to store. ``body`` is already sealed if encryption is on."""

    source: str
    event_id: str
    body: bytes
    body_sha256: str
    encrypted: bool
    received_ms: int
    signed_ts: int
    event_type: str
    record_key: str
    state: EventState
    last_error: str = ""
    reason_code: str = ""
    content_type: str = ""
    # Fingerprint of the signing key that verified it (``signing.key_fingerprint``).
    signing_key: str = ""
    # Who stored it, for its history: "ingest" (a webhook) or "reconcile" (a poll, issue 16).
    by: str = "ingest"

    @property
    def member(self) -> str:
        return member_of(self.source, self.event_id)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from Redis."""

    member: str
    source: str
    event_id: str
    event_type: str
    record_key: str
    state: EventState
    attempts: int
    last_error: str
    reason_code: str
    received_ms: int
    signed_ts: int
    body: bytes
    encrypted: bool
    body_sha256: str
    content_type: str
    signing_key: str = ""
    updated_ms: int = 0
    # Set when an operator resolved the event (state ``resolved``).
    resolved_reason: str = ""
    resolved_by: str = ""
    resolved_ms: int = 0
    # When its first transient failure happened (0: none yet): the retry budget's start.
    first_failed_ms: int = 0

    @property
    def is_tombstone(self) -> bool:
        """The trace of a lost event (vanished.lua): no body, nothing to apply."""
        return not self.body_sha256

    @classmethod
    def from_hash(cls, member: str, fields: Mapping[bytes, bytes]) -> StoredEvent:
        def text(name: bytes) -> str:
            return fields.get(name, b"").decode()

        return cls(
            member=member,
            source=text(b"source"),
            event_id=text(b"event_id"),
            event_type=text(b"type"),
            record_key=text(b"record_key"),
            state=EventState(text(b"state") or "pending"),
            attempts=int(text(b"attempts") or 0),
            last_error=text(b"last_error"),
            reason_code=text(b"reason_code"),
            received_ms=int(text(b"received_ms") or 0),
            signed_ts=int(text(b"signed_ts") or 0),
            body=fields.get(b"body", b""),
            encrypted=text(b"encrypted") == "1",
            body_sha256=text(b"body_sha256"),
            content_type=text(b"content_type"),
            signing_key=text(b"signing_key"),
            updated_ms=int(text(b"updated_ms") or 0),
            resolved_reason=text(b"resolved_reason"),
            resolved_by=text(b"resolved_by"),
            resolved_ms=int(text(b"resolved_ms") or 0),
            first_failed_ms=int(text(b"first_failed_ms") or 0),
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message read from a shard's stream."""

    shard: ShardKeys
    entry_id: str
    member: str
    # How often the queue has handed this entry out (1 unless reclaimed).
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call of the sink for one event, as its history keeps it (issue 14, item 4).

    ``outcome`` is one short word: ``applied``, ``stale``, ``rejected`` (a permanent sink
    error), ``failed`` (transient), ``timeout`` or ``error`` (a sink bug). HTTP sinks add
    the answer's ``status`` and the first bytes of its body (``answer``, redacted); a stale
    outcome adds what the record held (``held``: status, source_updated_at, last_event_id).
    """

    duration_ms: float
    outcome: str
    status: int | None = None
    answer: str | None = None
    held: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"duration_ms": self.duration_ms, "outcome": self.outcome}
        if self.status is not None:
            data["status"] = self.status
        if self.answer is not None:
            data["answer"] = self.answer
        if self.held is not None:
            data["held"] = dict(self.held)
        return data


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What became of one event, for ``finish_many`` to record."""

    entry: QueueEntry | None
    member: str
    state: EventState
    attempts: int
    last_error: str = ""
    by: str = "worker"
    reason_code: str = ""
    attempt: Attempt | None = None

    def history_line(self) -> bytes:
        extra: dict[str, Any] = {}
        if self.reason_code:
            extra["reason_code"] = self.reason_code
        if self.last_error:
            extra["error"] = self.last_error
        if self.attempt is not None:
            extra["attempt"] = self.attempt.to_json()
        return history_entry(self.state.value, self.by, attempts=self.attempts, **extra)


def history_entry(state: str, by: str, **extra: Any) -> bytes:
    """One line of an event's state history."""
    return orjson.dumps({"at_ms": now_ms(), "state": state, "by": by, **extra})


def now_ms() -> int:
    return time.time_ns() // 1_000_000

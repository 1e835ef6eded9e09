"""Domain values shared by ingest, the worker, the sinks and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class EventState(StrEnum):
    """Where a stored event is in its life (SPEC §4)."""

    PENDING = "pending"
    APPLIED = "applied"
    STALE = "stale"
    DEAD = "dead"
    # A dead event an operator closed with a reason (SPEC §10): kept and showable, not
    # counted as dead, not picked by ``replay --status dead``.
    RESOLVED = "resolved"


class ReasonCode(StrEnum):
    """Why an event is dead, in one short word ops can filter and alert on (SPEC §10).

    ``last_error`` keeps the full text beside it; this is the part a dashboard groups by.
    """

    UNMAPPABLE = "unmappable"  # signed, JSON, but not a generation we can record
    NOT_JSON = "not_json"
    INVALID_NUMBER = "invalid_number"  # a number the record cannot hold (2^63, NaN)
    SINK_REJECTED = "sink_rejected"  # the sink answered with a permanent error
    RETRIES_EXHAUSTED = "retries_exhausted"
    POISON = "poison"  # taken by workers again and again, never finished (crash or hang)
    UNKNOWN_TASK = "unknown_task"  # Rivya's status API does not know the task
    LOST = "lost"  # queued, but its stored event vanished from Redis (eviction)
    EXPIRED = "expired"  # retention ran out before it was applied
    UNDECRYPTABLE = "undecryptable"  # no configured encryption key opens the body
    GAVE_UP = "gave_up"  # reconciliation stopped watching a task that never finished
    UNEXPECTED = "unexpected"  # a bug: see last_error and the log


class ApplyOutcome(StrEnum):
    """What a sink did with a record."""

    APPLIED = "applied"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class SinkResult:
    """An outcome with what the sink can tell about it, for the event's attempt history.

    A sink may answer ``apply`` with this instead of a bare ``ApplyOutcome``: ``held`` is
    what the record held when the guard kept it (a stale outcome: its ``status``,
    ``source_updated_at`` and ``last_event_id``); ``status`` and ``answer`` are an HTTP
    downstream's answer (its status, the first bytes of its body, already redacted).
    """

    outcome: ApplyOutcome
    held: dict[str, str] | None = None
    status: int | None = None
    answer: str | None = None


def outcome_of(result: ApplyOutcome | SinkResult) -> ApplyOutcome:
    """The plain outcome of what a sink answered."""
    return result if isinstance(result, ApplyOutcome) else result.outcome


# SPEC §4: queued < processing < succeeded = failed; rank 2 is terminal.
STATUS_RANK: dict[str, int] = {"queued": 0, "processing": 1, "succeeded": 2, "failed": 2}
TERMINAL_RANK = 2


def format_time(value: datetime) -> str:
    """ISO 8601 in UTC with fixed microsecond precision, so strings sort like times."""
    # isoformat pads the year to four digits where strftime's %Y does not.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(value: str) -> datetime:
    """Parse an ISO 8601 time; naive values are taken as UTC. Raises ValueError."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Record:
    """The normalized product record one event produces (SPEC §5)."""

    record_key: str
    status: str
    source_updated_at: datetime
    last_event_id: str
    client_request_id: str | None = None
    model: str | None = None
    primary_url: str | None = None
    result_urls: tuple[str, ...] = ()
    error_code: str | None = None
    error_message: str | None = None
    reserved_credits: float | None = None
    final_credits: float | None = None
    applied_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def status_rank(self) -> int:
        return STATUS_RANK[self.status]

    def is_newer_than(self, status: str, source_updated_at: datetime) -> bool:
        """The ordering guard (SPEC §4), for sinks that cannot express it in their store."""
        current_rank = STATUS_RANK.get(status, -1)
        if current_rank == TERMINAL_RANK and self.status_rank < TERMINAL_RANK:
            return False
        if self.source_updated_at != source_updated_at:
            return self.source_updated_at > source_updated_at
        return self.status_rank > current_rank

    def to_json(self) -> dict[str, Any]:
        """The record as a flat JSON object: times as ISO 8601, credits as numbers."""
        return {**self.event_json(), "applied_at": format_time(self.applied_at)}

    def event_json(self) -> dict[str, Any]:
        """``to_json`` without ``applied_at``: the fields that come from the event alone.

        They are the same on every attempt and replay of one event (the mapping is a pure
        function of the stored body, its id and receive time), so the HTTP sink sends the
        same bytes under one ``webhook-id`` (SPEC §9).
        """
        return {
            "record_key": self.record_key,
            "client_request_id": self.client_request_id,
            "status": self.status,
            "model": self.model,
            "primary_url": self.primary_url,
            "result_urls": list(self.result_urls),
            "error_code": self.error_code,
            "error_message": self.error_message,
            "reserved_credits": self.reserved_credits,
            "final_credits": self.final_credits,
            "source_updated_at": format_time(self.source_updated_at),
            "last_event_id": self.last_event_id,
        }

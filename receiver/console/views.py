"""What the pages and the API say about ops results, in one place: filters read from a
query string, dead letters grouped by cause, and the words a support person reads.

Nothing here queries anything: the ops layer does (``receiver.ops``); this module turns a
request's parameters into the ops layer's arguments and its answers into plain values.
Every value stays text; the templates escape it (Jinja2 autoescape) and the API encodes
it as JSON. Redaction is the ops layer's ``to_json()``/``redact_value``, as for the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver import ops
from receiver.models import EventState, ReasonCode
from receiver.redaction import redact_text
from receiver.settings import DEFAULT_SOURCE
from receiver.store import StoredEvent, now_ms

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A bulk action from the console covers at most this many events; the count it shows
# first is exact, and a larger selection is said to be larger.
MAX_BULK_EVENTS = 1_000
MAX_REASON_LENGTH = 500
_STATUS_IN_ERROR = re.compile(r"answered (\d{3})")

REASON_WORDS: dict[str, str] = {
    ReasonCode.UNMAPPABLE: "the event is not a generation we can record",
    ReasonCode.NOT_JSON: "the body is not JSON",
    ReasonCode.INVALID_NUMBER: "a number in the event does not fit the record",
    ReasonCode.SINK_REJECTED: "the sink refused the record",
    ReasonCode.RETRIES_EXHAUSTED: "the sink kept failing until the retries ran out",
    ReasonCode.POISON: "processing it stopped a worker again and again",
    ReasonCode.UNKNOWN_TASK: "Rivya does not know the task",
    ReasonCode.LOST: "the stored event vanished from Redis",
    ReasonCode.EXPIRED: "retention ran out before it was applied",
    ReasonCode.UNDECRYPTABLE: "no configured key opens the stored body",
    ReasonCode.GAVE_UP: "reconciliation stopped watching the task",
    ReasonCode.UNEXPECTED: "an unexpected error; see the log",
}

# What a failed generation's error code means to a support person (Rivya's codes).
ERROR_WORDS: dict[str, str] = {
    "content_policy": "the prompt was refused",
    "timeout": "the job took too long",
    "insufficient_credits": "the account had too few credits",
    "invalid_request": "the request was not valid",
    "internal_error": "Rivya failed internally",
}


def source_param(query: Mapping[str, str]) -> str:
    return query.get("source") or DEFAULT_SOURCE


def page_size(query: Mapping[str, str]) -> int:
    raw = query.get("limit", "")
    if not raw:
        return DEFAULT_PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise ops.FilterError(f"limit: a whole number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def event_filter(query: Mapping[str, str], *, limit: int | None) -> ops.EventFilter:
    """The ops filter for ``state``, ``type``, ``record``, ``reason``, ``since``, ``until``."""
    now = now_ms()
    state_text = query.get("state", "")
    try:
        state = EventState(state_text) if state_text else None
    except ValueError:
        raise ops.FilterError(
            f"state: one of {', '.join(state.value for state in EventState)}"
        ) from None
    since = query.get("since", "")
    until = query.get("until", "")
    reason = query.get("reason", "")
    if reason and reason not in tuple(ReasonCode):
        raise ops.FilterError(f"reason: one of {', '.join(ReasonCode)}")
    fields: dict[str, Any] = {
        "source": source_param(query),
        "state": state,
        "event_type": query.get("type") or None,
        "record_key": query.get("record") or None,
        "since_ms": ops.parse_time_bound(since, now, "since") if since else None,
        "until_ms": ops.parse_time_bound(until, now, "until") if until else None,
        "limit": limit,
    }
    if reason:
        fields["reason_code"] = reason
    return _make_filter(fields)


def _make_filter(fields: dict[str, Any]) -> ops.EventFilter:
    reason = fields.pop("reason_code", None)
    if reason is not None:
        if "reason_code" in ops.EventFilter.__dataclass_fields__:
            fields["reason_code"] = reason
        else:  # until the ops layer filters by reason itself, only dead events have one
            fields["state"] = fields["state"] or EventState.DEAD
            return _ReasonFilter(**fields, reason=reason)
    return ops.EventFilter(**fields)


@dataclass(frozen=True, slots=True)
class _ReasonFilter(ops.EventFilter):
    reason: str = ""

    def matches(self, event: StoredEvent) -> bool:
        return super(_ReasonFilter, self).matches(event) and event.reason_code == self.reason

    def describe(self) -> dict[str, Any]:
        return {**super(_ReasonFilter, self).describe(), "error": self.reason}


def filter_query(query: Mapping[str, str]) -> dict[str, str]:
    """The filter parameters worth keeping in links (pagination, bulk actions)."""
    names = ("source", "state", "type", "record", "reason", "since", "until")
    return {name: query[name] for name in names if query.get(name)}


def sink_status(event: StoredEvent) -> int | None:
    match = _STATUS_IN_ERROR.search(event.last_error)
    return int(match.group(1)) if match else None


def cause_words(reason_code: str, status: int | None) -> str:
    if reason_code == ReasonCode.SINK_REJECTED and status is not None:
        return f"sink answered {status}"
    return REASON_WORDS.get(reason_code, reason_code or "no reason recorded")


@dataclass(slots=True)
class FailureGroup:
    """Dead letters with one cause: "3 events: sink answered 400 since 14:02"."""

    reason_code: str
    status: int | None
    count: int = 0
    since_ms: int = 0
    latest_ms: int = 0
    example_error: str = ""
    event_ids: list[str] = field(default_factory=list)

    @property
    def words(self) -> str:
        return cause_words(self.reason_code, self.status)

    def to_json(self) -> dict[str, Any]:
        return {
            "reason_code": self.reason_code,
            "sink_status": self.status,
            "cause": self.words,
            "count": self.count,
            "since": ops.iso_ms(self.since_ms),
            "latest": ops.iso_ms(self.latest_ms),
            "example_error": redact_text(self.example_error),
        }


def group_failures(events: Sequence[StoredEvent]) -> list[FailureGroup]:
    """Dead events grouped by reason code (and the sink's status), largest group first."""
    groups: dict[tuple[str, int | None], FailureGroup] = {}
    for event in events:
        status = sink_status(event) if event.reason_code == ReasonCode.SINK_REJECTED else None
        key = (event.reason_code, status)
        group = groups.get(key)
        if group is None:
            group = groups[key] = FailureGroup(event.reason_code, status)
            group.since_ms = group.latest_ms = event.received_ms
            group.example_error = event.last_error
        group.count += 1
        group.since_ms = min(group.since_ms, event.received_ms)
        if event.received_ms >= group.latest_ms:
            group.latest_ms, group.example_error = event.received_ms, event.last_error
        if len(group.event_ids) < 5:
            group.event_ids.append(event.event_id)
    return sorted(groups.values(), key=lambda group: (-group.count, group.reason_code))


def record_words(record: Mapping[str, Any] | None) -> str:
    """The record in one sentence a support person understands."""
    if record is None:
        return "the sink holds no record with this task id"
    status = str(record.get("status") or "unknown")
    reserved = record.get("reserved_credits")
    final = record.get("final_credits")
    credits = ""
    if reserved is not None:
        charged = final if final is not None else 0
        credits = f"; {_number(charged)} of {_number(reserved)} reserved credits charged"
    if status == "failed":
        code = str(record.get("error_code") or "unknown_error")
        meaning = ERROR_WORDS.get(code) or str(record.get("error_message") or "no reason given")
        return f"failed: {code} — {meaning}{credits}"
    if status == "succeeded":
        return f"succeeded{credits}"
    return f"{status}: the job is not finished yet{credits}"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def clean_reason(text: str) -> str:
    """A resolution reason as typed, or FilterError when blank or too long."""
    reason = " ".join(text.split())
    if not reason:
        raise ops.FilterError("reason: say why these events are resolved")
    if len(reason) > MAX_REASON_LENGTH:
        raise ops.FilterError(f"reason: at most {MAX_REASON_LENGTH} characters")
    return reason

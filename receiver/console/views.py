"""What the pages and the API say about ops results, in one place: filters read from a
query string, dead letters grouped by cause, and the words a support person reads.

Nothing here queries anything: the ops layer does (``receiver.ops``); this module turns a
request's parameters into the ops layer's arguments and its answers into plain values.
Every value stays text; the templates escape it (Jinja2 autoescape, control characters
shown, see ``console.app.templates``) and the API encodes it as JSON. Redaction is the ops
layer's ``to_json()``/``redact_value``, as for the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from receiver import ops
from receiver.models import EventState, ReasonCode, parse_time
from receiver.redaction import redact_text
from receiver.settings import DEFAULT_SOURCE
from receiver.store import StoredEvent, now_ms

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# A bulk action from the console covers at most this many events; the count it shows
# first is exact, and a larger selection is said to be larger.
MAX_BULK_EVENTS = 1_000
# Dead letters one Failed jobs view groups at most (newest first).
FAILED_SCAN = 2_000
_STATUS_IN_ERROR = re.compile(r"answered (\d{3})")
FILTER_NAMES = ("source", "state", "type", "record", "reason", "since", "until")

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

# What to look at next for a rejected delivery, by code (the verify explanation).
REJECTION_HINTS: dict[str, str] = {
    "invalid_signature": (
        "The signature matches none of the keys tried. The sender signs with a secret this "
        "receiver does not have: check the endpoint's secret in Rivya (a rotation not "
        "finished?) against RECEIVER_WEBHOOK_SECRET, by fingerprint in receiver status."
    ),
    "timestamp_out_of_tolerance": (
        "The signed time is too far from this receiver's clock: the sender's or this "
        "host's clock is off, or this is an old delivery sent again (a replay)."
    ),
    "invalid_timestamp": "The timestamp header is not a number of seconds.",
    "missing_signature_header": (
        "A header the source's signature scheme needs was not sent: check the scheme "
        "(RECEIVER_SIGNATURE_SCHEME) and any proxy that may drop headers."
    ),
    "unknown_source": "Nothing is configured under this source name (the URL's last part).",
    "payload_too_large": "The body is over RECEIVER_MAX_BODY_BYTES.",
    "unsupported_media_type": "The content type is not JSON.",
}


def resolve_reason(text: str) -> str:
    """A resolution reason as it will be stored and shown: checked by the ops layer
    (``FilterError`` when blank or too long) and redacted like the logs, so a token
    pasted into the box never reaches Redis, the audit or a page."""
    return redact_text(ops.check_reason(text))


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
    reason = query.get("reason", "") or None
    if reason is not None:
        if reason not in tuple(ReasonCode):
            raise ops.FilterError(f"reason: one of {', '.join(ReasonCode)}")
        if state not in (None, EventState.DEAD, EventState.RESOLVED):
            raise ops.FilterError("reason: only dead or resolved events have a reason code")
    return ops.EventFilter(
        source=source_param(query),
        state=state,
        event_type=query.get("type") or None,
        record_key=query.get("record") or None,
        reason_code=reason,
        since_ms=ops.parse_time_bound(since, now, "since") if since else None,
        until_ms=ops.parse_time_bound(until, now, "until") if until else None,
        limit=limit,
    )


def filter_query(query: Mapping[str, str]) -> dict[str, str]:
    """The filter parameters worth keeping in links (pagination, bulk actions)."""
    return {name: query[name] for name in FILTER_NAMES if query.get(name)}


def status_in_error(last_error: str) -> int | None:
    """The HTTP status an error text names ("answered 400"), for events without history."""
    match = _STATUS_IN_ERROR.search(last_error)
    return int(match.group(1)) if match else None


def attempt_status(line: Mapping[str, Any] | None) -> int | None:
    """The sink's HTTP status in a history line's attempt, if it has one."""
    attempt = line.get("attempt") if line else None
    status = attempt.get("status") if isinstance(attempt, Mapping) else None
    return status if isinstance(status, int) and not isinstance(status, bool) else None


def sink_status(history: Sequence[Mapping[str, Any]], last_error: str = "") -> int | None:
    """What the sink last answered: the newest attempt's status, else the error's words."""
    for line in reversed(history):
        status = attempt_status(line)
        if status is not None:
            return status
    return status_in_error(last_error)


def cause_words(reason_code: str, statuses: Sequence[int] = ()) -> str:
    """A reason code in words; the sink's answers make a sink failure concrete."""
    shown = " or ".join(str(status) for status in sorted(set(statuses)))
    if shown and reason_code == ReasonCode.SINK_REJECTED:
        return f"sink answered {shown}"
    if shown and reason_code == ReasonCode.RETRIES_EXHAUSTED:
        return f"sink kept answering {shown} until the retries ran out"
    return REASON_WORDS.get(reason_code, reason_code or "no reason recorded")


@dataclass(slots=True)
class FailureGroup:
    """Dead letters with one reason code: "3 events: sink answered 400 since 14:02"."""

    reason_code: str
    count: int = 0
    since_ms: int = 0
    latest_ms: int = 0
    example_error: str = ""
    statuses: dict[int, int] = field(default_factory=dict)  # sink's answer -> events
    event_ids: list[str] = field(default_factory=list)

    @property
    def words(self) -> str:
        return cause_words(self.reason_code, list(self.statuses))

    @property
    def headline(self) -> str:
        plural = "s" if self.count != 1 else ""
        return f"{self.count} event{plural}: {self.words}"

    def to_json(self) -> dict[str, Any]:
        return {
            "reason_code": self.reason_code,
            "cause": self.words,
            "count": self.count,
            "sink_statuses": {str(status): n for status, n in sorted(self.statuses.items())},
            "since": ops.iso_ms(self.since_ms),
            "latest": ops.iso_ms(self.latest_ms),
            "example_error": redact_text(self.example_error),
        }


def group_failures(
    events: Sequence[StoredEvent], last_lines: Sequence[Mapping[str, Any] | None]
) -> list[FailureGroup]:
    """Dead events grouped by reason code, largest group first; ``last_lines`` (each
    event's newest history line) give the sink's HTTP answer where there was one."""
    groups: dict[str, FailureGroup] = {}
    for event, line in zip(events, last_lines, strict=True):
        group = groups.get(event.reason_code)
        if group is None:
            group = groups[event.reason_code] = FailureGroup(event.reason_code)
            group.since_ms = group.latest_ms = event.received_ms
            group.example_error = event.last_error
        group.count += 1
        group.since_ms = min(group.since_ms, event.received_ms)
        if event.received_ms >= group.latest_ms:
            group.latest_ms, group.example_error = event.received_ms, event.last_error
        status = attempt_status(line) or status_in_error(event.last_error)
        if status is not None:
            group.statuses[status] = group.statuses.get(status, 0) + 1
        if len(group.event_ids) < 5:
            group.event_ids.append(event.event_id)
    return sorted(groups.values(), key=lambda group: (-group.count, group.reason_code))


def clock(ms: int, now: int | None = None) -> str:
    """A time as people say it: ``14:02 UTC`` today, ``2026-11-30 14:02 UTC`` before."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    today = datetime.fromtimestamp((now if now is not None else now_ms()) / 1000, UTC).date()
    if moment.date() == today:
        return moment.strftime("%H:%M UTC")
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _credits(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _since(text: Any) -> str:
    try:
        return clock(int(parse_time(str(text)).timestamp() * 1000))
    except (ValueError, OverflowError):
        return str(text)


def record_words(record: Mapping[str, Any] | None) -> str:
    """The record in one sentence a support person understands."""
    if record is None:
        return "the sink holds no record with this task id"
    status = str(record.get("status") or "unknown")
    reserved = record.get("reserved_credits")
    final = record.get("final_credits")
    charged = final if final is not None else 0
    if status == "failed":
        code = str(record.get("error_code") or "unknown_error")
        meaning = ERROR_WORDS.get(code) or str(record.get("error_message") or "no reason given")
        credits = (
            f"; {_credits(charged)} of {_credits(reserved)} reserved credits charged"
            if reserved is not None
            else ""
        )
        return f"failed: {code} — {meaning}{credits}"
    if status == "succeeded":
        credits = f"{_credits(charged)} credit{'s' if charged != 1 else ''} charged; "
        ready = record.get("primary_url") or record.get("result_urls")
        return f"succeeded: {credits}{'result ready' if ready else 'no result link'}"
    updated = record.get("source_updated_at")
    since = f" since {_since(updated)}" if updated else ""
    reserve = f"; {_credits(reserved)} credits reserved" if reserved is not None else ""
    return f"{status}{since}: the job is not finished yet{reserve}"


def sink_health(status: ops.Status) -> tuple[str, str]:
    """(``good``/``bad``/``unknown``, words) for the sink, as the live workers see it.

    Read from their heartbeats (each carries its circuit breaker's state): the console
    never probes the sink itself, which would be a request to it per page view."""
    live = [worker for worker in status.workers if worker.live]
    told = [worker for worker in live if worker.sink_circuit]
    if not live:
        return "unknown", (
            "unknown: no live worker (the sink's health comes from the workers' heartbeats; "
            "the console does not probe the sink)"
        )
    if not told:
        return "unknown", "unknown: the live workers do not report their circuit"
    failing = [worker for worker in told if worker.sink_circuit == "open"]
    if failing:
        return "bad", (
            f"failing: the circuit is open on {len(failing)} of {len(told)} live worker"
            f"{'s' if len(told) != 1 else ''} (events wait in the queue, nothing is lost)"
        )
    return "good", (
        f"answers: the circuit is closed on {len(told)} live worker{'s' if len(told) != 1 else ''}"
    )


def skew_words(skew: int | None, tolerance: int | None) -> str:
    """How far the delivery's timestamp was from the receiver's clock."""
    if skew is None:
        return ""
    where = " in the past" if skew > 0 else " in the future" if skew < 0 else ""
    if tolerance is None:
        return f"{abs(skew)} s{where}"
    within = "within" if abs(skew) <= tolerance else "outside"
    return f"{abs(skew)} s{where} ({within} the {tolerance} s tolerance)"

"""Which stored events an operator means, and how they read: filters, pages, one event.

The queries behind ``receiver events list`` and ``events show`` (SPEC §7, §9), the
console's event pages, and the selection of a bulk replay or resolve. Everything is read
through the ``EventStore``; printable output comes out redacted unless asked raw.

A listing walks the smallest sorted set that holds every candidate: the dead or resolved
set for those states (and for ``--error``), the record's own index for ``--record``, the
whole index otherwise. Pages are newest first and continue from an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import collections
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import orjson

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.keys import member_of
from receiver.models import EventState, ReasonCode, format_time, parse_time
from receiver.redaction import MAX_DEPTH, nesting_depth, redact_text, redact_value
from receiver.settings import DEFAULT_SOURCE, parse_duration
from receiver.store import EventStore, StoredEvent, now_ms

# Members fetched per range read, and hashes per pipelined load.
PAGE_SIZE = 500
# What the console lets one page view walk at most (index members examined).
CONSOLE_SCAN_BUDGET = 5_000
# Members counted at most for a page's "of N" when the count needs a walk.
COUNT_BUDGET = 20_000

# Called as ``progress(done, total)`` by long operations (replay, reencrypt).
Progress = Callable[[int, int], None]


class FilterError(ValueError):
    """An event filter option is malformed; the message names the option."""


class CursorError(FilterError):
    """A page cursor that this receiver did not hand out."""


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
    """Which stored events a list, bulk replay or resolve covers; all criteria must hold."""

    source: str | None = DEFAULT_SOURCE
    state: EventState | None = None
    event_type: str | None = None
    record_key: str | None = None
    # ``--error CODE``: dead events with this reason code (resolved ones with --status
    # resolved); one of ``ReasonCode``.
    reason_code: str | None = None
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
        if self.reason_code is not None:
            if self.reason_code not in set(ReasonCode):
                known = ", ".join(code.value for code in ReasonCode)
                raise FilterError(
                    f"--error: unknown reason code {self.reason_code[:40]!r} ({known})"
                )
            if self.state not in (None, EventState.DEAD, EventState.RESOLVED):
                raise FilterError("--error: only dead or resolved events carry a reason code")

    @property
    def selects(self) -> bool:
        """True when something narrows the events beyond their source."""
        return any(
            value is not None
            for value in (
                self.state,
                self.event_type,
                self.record_key,
                self.reason_code,
                self.since_ms,
                self.until_ms,
            )
        )

    @property
    def effective_state(self) -> EventState | None:
        """``--error`` alone means dead events."""
        if self.state is None and self.reason_code is not None:
            return EventState.DEAD
        return self.state

    def matches(self, event: StoredEvent) -> bool:
        # ``--type`` takes shell patterns (``generation.*``); a plain name matches itself.
        state = self.effective_state
        return (
            (state is None or event.state is state)
            and (self.event_type is None or fnmatch.fnmatchcase(event.event_type, self.event_type))
            and (self.record_key is None or event.record_key == self.record_key)
            and (self.reason_code is None or event.reason_code == self.reason_code)
            and (self.source is None or event.source == self.source)
        )

    def describe(self) -> dict[str, Any]:
        """The filter as JSON-ready values (times as ISO 8601), for audit entries."""
        described: dict[str, Any] = {
            "source": self.source,
            "status": self.state.value if self.state else None,
            "type": self.event_type,
            "record": self.record_key,
            "error": self.reason_code,
            "since": iso_ms(self.since_ms) if self.since_ms is not None else None,
            "until": iso_ms(self.until_ms) if self.until_ms is not None else None,
            "limit": self.limit,
        }
        return {key: value for key, value in described.items() if value is not None}


def iso_ms(ms: int) -> str:
    return format_time(datetime.fromtimestamp(ms / 1000, UTC))


# -- pages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last event's receive time (ms) and member."""

    score: int
    member: str

    def encode(self) -> str:
        raw = orjson.dumps([self.score, self.member])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            score, member = orjson.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise CursorError("cursor: not a cursor from this receiver") from None
        if not isinstance(score, int) or not isinstance(member, str):
            raise CursorError("cursor: not a cursor from this receiver")
        return cls(score, member)


@dataclass(frozen=True, slots=True)
class EventPage(Sequence[StoredEvent]):
    """One page of matching events, newest first; it is the sequence of its events too."""

    events: tuple[StoredEvent, ...]
    # Pass back as ``cursor`` for the next, older page; None when nothing is left.
    next_cursor: str | None
    # Every match of the filter (not only this page) when known; None when counting would
    # need more than a bounded walk.
    total: int | None
    # The walk stopped at the scan budget before the page was full.
    scanned_out: bool = False

    # A page is a sequence of its events, so code written for the list ``list_events``
    # once answered keeps working.
    def __iter__(self) -> Iterator[StoredEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    @overload
    def __getitem__(self, index: int) -> StoredEvent: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[StoredEvent]: ...

    def __getitem__(self, index: int | slice) -> StoredEvent | Sequence[StoredEvent]:
        return self.events[index]

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [summary_json(event) for event in self.events],
            "next_cursor": self.next_cursor,
            "total": self.total,
            "scanned_out": self.scanned_out,
        }


class _Walk:
    """One shard's sorted set, read newest first a page at a time."""

    def __init__(self, store: EventStore, zset: str, upper: int, lower: int | str) -> None:
        self._store = store
        self._zset = zset
        self._upper = upper
        self._lower = lower
        self._offset = 0
        self._done = False
        self.buffer: collections.deque[tuple[int, str]] = collections.deque()

    async def head(self) -> tuple[int, str] | None:
        if not self.buffer and not self._done:
            page = await self._store.newest_first(
                self._zset, self._upper, self._lower, self._offset, PAGE_SIZE
            )
            self._offset += len(page)
            self._done = len(page) < PAGE_SIZE
            self.buffer.extend((score, member) for member, score in page)
        return self.buffer[0] if self.buffer else None


def _zsets(store: EventStore, event_filter: EventFilter) -> list[str]:
    # The smallest set that holds every candidate: the dead set is far smaller than the
    # index, and a record's own index holds a handful of events.
    state = event_filter.effective_state
    if state is EventState.DEAD:
        return store.index_keys("dead")
    if state is EventState.RESOLVED:
        return store.index_keys("resolved")
    if event_filter.record_key is not None:
        return store.index_keys("record", event_filter.record_key)
    return store.index_keys("index")


def _lower_bound(store: EventStore, event_filter: EventFilter, now: int) -> int | str:
    lower: int | str = event_filter.since_ms if event_filter.since_ms is not None else "-inf"
    if event_filter.record_key is not None and event_filter.effective_state is None:
        # A record index keeps members until its newest event expires: skip older ones.
        horizon = now - store.retention_ms
        lower = max(lower, horizon) if isinstance(lower, int) else horizon
    return lower


async def list_events(
    store: EventStore,
    event_filter: EventFilter,
    *,
    cursor: str | None = None,
    scan_budget: int | None = None,
) -> EventPage:
    """A page of matching events, newest first, at most ``filter.limit`` (all if None).

    ``cursor`` continues after the page that handed it out. ``scan_budget`` bounds how
    many index members one call examines (the console passes ``CONSOLE_SCAN_BUDGET``);
    when it runs out first, the page is short, ``scanned_out`` is set and the cursor
    continues from where the walk stopped. Expired index entries are skipped.
    """
    now = now_ms()
    position = Position.decode(cursor) if cursor else None
    # Fix the upper bound now: events arriving while we page land above it and cannot
    # shift the offsets of the pages still to come.
    upper = event_filter.until_ms if event_filter.until_ms is not None else now
    if position is not None:
        upper = min(upper, position.score)
    lower = _lower_bound(store, event_filter, now)
    walks = [_Walk(store, zset, upper, lower) for zset in _zsets(store, event_filter)]
    prefix = f"{event_filter.source}|" if event_filter.source is not None else ""
    limit = event_filter.limit
    found: list[StoredEvent] = []
    last: Position | None = None  # the last member examined
    scanned = 0
    exhausted = False
    scanned_out = False
    while limit is None or len(found) < limit:
        if scan_budget is not None and scanned >= scan_budget:
            scanned_out = True
            break
        chunk: list[tuple[int, str]] = []
        want = PAGE_SIZE if scan_budget is None else min(PAGE_SIZE, scan_budget - scanned)
        while len(chunk) < want:
            item = await _next(walks)
            if item is None:
                exhausted = True
                break
            if position is not None and (item[0], item[1]) >= (position.score, position.member):
                continue  # shown on an earlier page
            chunk.append(item)
        if not chunk:
            break
        scanned += len(chunk)
        wanted = [(score, member) for score, member in chunk if member.startswith(prefix)]
        events = await store.load_many([member for _, member in wanted])
        stopped_early = False
        for (score, member), event in zip(wanted, events, strict=True):
            last = Position(score, member)
            if event is not None and event_filter.matches(event):
                found.append(event)
                if limit is not None and len(found) >= limit:
                    stopped_early = True
                    break
        if not stopped_early:
            last = Position(*chunk[-1])
        else:
            # Nothing left after this page only if the walk ended at its last event.
            exhausted = exhausted and last == Position(*chunk[-1])
            break
        if exhausted:
            break
    more = not exhausted or scanned_out
    next_cursor = last.encode() if more and last is not None else None
    total = await _total(store, event_filter, lower) if cursor is None else None
    return EventPage(tuple(found), next_cursor, total, scanned_out)


async def _next(walks: list[_Walk]) -> tuple[int, str] | None:
    """The newest head of all shards' walks (score, then member, descending), taken."""
    best: _Walk | None = None
    best_item: tuple[int, str] | None = None
    for walk in walks:
        item = await walk.head()
        if item is not None and (best_item is None or item > best_item):
            best, best_item = walk, item
    if best is not None:
        best.buffer.popleft()
    return best_item


async def _total(store: EventStore, event_filter: EventFilter, lower: int | str) -> int | None:
    """How many events match in all, when that is cheap: the filter narrows by state,
    time and source only. A source filter needs the members, so they are counted up to
    ``COUNT_BUDGET``; beyond that the total is unknown (None)."""
    if (
        event_filter.event_type is not None
        or event_filter.record_key is not None
        or event_filter.reason_code is not None
        or event_filter.state in (EventState.PENDING, EventState.APPLIED, EventState.STALE)
    ):
        return None
    upper = event_filter.until_ms if event_filter.until_ms is not None else now_ms()
    zsets = _zsets(store, event_filter)
    if event_filter.source is None:
        return await store.count_between(zsets, lower, upper)
    prefix = f"{event_filter.source}|"
    counted = 0
    for zset in zsets:
        offset = 0
        while True:
            page = await store.newest_first(zset, upper, lower, offset, PAGE_SIZE)
            offset += len(page)
            counted += sum(1 for member, _ in page if member.startswith(prefix))
            if offset > COUNT_BUDGET:
                return None
            if len(page) < PAGE_SIZE:
                break
    return counted


async def select_all(
    store: EventStore, event_filter: EventFilter, *, scan_budget: int | None = None
) -> list[StoredEvent]:
    """Every matching event (up to ``limit``), newest first: what a bulk action covers.

    ``scan_budget`` bounds the walk as for ``list_events`` (the console's bulk actions)."""
    page = await list_events(store, event_filter, scan_budget=scan_budget)
    return list(page.events)


def summary(event: StoredEvent) -> dict[str, Any]:
    """The fields ``events list --json`` prints (SPEC §9), not yet redacted."""
    data: dict[str, Any] = {
        "event_id": event.event_id,
        "source": event.source,
        "state": event.state.value,
        "type": event.event_type,
        "record_key": event.record_key,
        "received_at": iso_ms(event.received_ms),
        "attempts": event.attempts,
        "reason_code": event.reason_code,
        "last_error": event.last_error,
        "signing_key": event.signing_key,
    }
    if event.state is EventState.RESOLVED:
        data["resolved_reason"] = event.resolved_reason
        data["resolved_by"] = event.resolved_by
        data["resolved_at"] = iso_ms(event.resolved_ms) if event.resolved_ms else None
    return data


def summary_json(event: StoredEvent) -> dict[str, Any]:
    """``summary`` redacted like the logs: what a front end prints or serves."""
    redacted: dict[str, Any] = redact_value(summary(event))
    return redacted


# -- one event ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One stored event with its history and its body (decrypted, if a key opens it).

    The history is the event's timeline, oldest first: received, each sink attempt (with
    its duration, outcome, the sink's answer and a stale record's held state), retries,
    replays and the resolution.
    """

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
        redacted: dict[str, Any] = redact_value(data)
        # Redacted on its own: walked inside ``data`` it would count one level deeper.
        redacted["body"] = redacted_body(self.body) if self.body is not None else None
        return redacted


def redacted_body(body: bytes) -> Any:
    """The body as JSON passed through the log redaction; redacted text if it is not JSON
    or nests deeper than the redaction walks (a signed body is untrusted input)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return redact_text(body.decode("utf-8", "replace"))
    if nesting_depth(parsed) > MAX_DEPTH:
        return redact_text(body.decode("utf-8", "replace"))
    return redact_value(parsed)


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


async def load_many(store: EventStore, members: list[str]) -> list[StoredEvent | None]:
    """The stored events for ``members`` (None where gone): the store's one load path."""
    return await store.load_many(members)

"""Credits per model and day: jobs, succeeded, failed, reserved and final credits, and the
credits not charged for failed jobs, over the retention window (issue 15, Credits).

Bounded in cost: a page view never scans the store. The ledger keeps running sums per day
in Redis and brings them up to date incrementally: each call reads at most ``budget`` new
index entries after a per-shard cursor, maps each event's body to its record, and counts
the task's latest state (by the ordering guard's rule: ``updated_at``, then status rank),
replacing what that task counted before. A report then reads one hash per day.

A job is a task id; its day is the generation's ``created_at`` (else the day its event was
received), so every event of one task lands on the same day. Unmappable events count for
nothing. Entries younger than ``settle_seconds`` wait for the next call, so an event stored
a moment late by another replica (received earlier, written later) is not skipped; clocks
further apart than that can make an event be missed. Replays re-apply stored events and
change nothing here. Several processes may catch up at once: each commits its batch and the
cursor in one script that first checks the cursor is still the one it read (compare and
set, ``EventStore.credits``), so a batch is counted once. Every read and write goes
through the event store.

All keys share the ``{credits}`` hash tag (``receiver/keys.py``); per task ~100 bytes for as
long as its day is within retention.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from receiver.bodies import BodyCipher, BodyDecryptError
from receiver.keys import CREDITS_EXTRA_TTL_SECONDS, all_shards
from receiver.models import STATUS_RANK, TERMINAL_RANK, parse_time
from receiver.ops.events import load_many
from receiver.rivya import UnmappableEvent, find_generation, map_event, parse_body
from receiver.store import EventStore, StoredEvent, now_ms

DEFAULT_BUDGET = 2_000
SETTLE_SECONDS = 2.0
MAX_REPORT_DAYS = 400
METRICS = ("jobs", "succeeded", "failed", "reserved", "final", "uncharged")
SEPARATOR = "\x1f"  # between model and metric in a day hash's field names


@dataclass(frozen=True, slots=True)
class TaskState:
    """What one task counts for: its latest state as the ledger has seen it."""

    model: str
    status: str
    updated_at: str
    reserved: float
    final: float

    def newer_than(self, other: TaskState) -> bool:
        """The ordering guard's rule (SPEC §4), on what the ledger holds."""
        rank, other_rank = STATUS_RANK.get(self.status, -1), STATUS_RANK.get(other.status, -1)
        if other_rank == TERMINAL_RANK and rank < TERMINAL_RANK:
            return False  # a terminal state never goes back
        if self.updated_at != other.updated_at:
            return self.updated_at > other.updated_at
        return rank > other_rank

    def counts(self) -> dict[str, float]:
        failed = self.status == "failed"
        return {
            "jobs": 1,
            "succeeded": 1 if self.status == "succeeded" else 0,
            "failed": 1 if failed else 0,
            "reserved": self.reserved,
            "final": self.final,
            "uncharged": max(0.0, self.reserved - self.final) if failed else 0.0,
        }

    def dumps(self) -> bytes:
        return orjson.dumps([self.model, self.status, self.updated_at, self.reserved, self.final])

    @classmethod
    def loads(cls, raw: bytes) -> TaskState:
        model, status, updated_at, reserved, final = orjson.loads(raw)
        return cls(model, status, updated_at, float(reserved), float(final))


@dataclass(frozen=True, slots=True)
class CreditRow:
    day: str
    model: str
    jobs: int
    succeeded: int
    failed: int
    reserved: float
    final: float
    uncharged: float

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "model": self.model,
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "reserved_credits": self.reserved,
            "final_credits": self.final,
            "uncharged_credits": self.uncharged,
        }


@dataclass(frozen=True, slots=True)
class CreditReport:
    rows: tuple[CreditRow, ...]
    totals: dict[str, float]
    pending: bool  # events are still waiting to be counted
    counted_now: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [row.to_json() for row in self.rows],
            "totals": self.totals,
            "catching_up": self.pending,
        }


@dataclass(slots=True)
class _Batch:
    states: dict[tuple[str, str], TaskState] = field(default_factory=dict)  # (day, task)
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)  # day -> field -> +x
    received: dict[str, int] = field(default_factory=dict)  # day -> latest receive (s)


def _day_of(document: dict[str, Any], event: StoredEvent) -> str:
    try:
        created = find_generation(document).get("created_at")
        if isinstance(created, str) and created:
            return parse_time(created).date().isoformat()
    except (UnmappableEvent, ValueError, OverflowError):
        pass
    return datetime.fromtimestamp(event.received_ms / 1000, UTC).date().isoformat()


def _state_of(event: StoredEvent, cipher: BodyCipher) -> tuple[str, str, TaskState, int] | None:
    """(day, task id, state) of a mappable event; None for anything else."""
    try:
        body = cipher.open(event.body, event.encrypted)
        document = parse_body(body)
        record = map_event(
            document, event.event_id, datetime.fromtimestamp(event.received_ms / 1000, UTC)
        ).record
    except (UnmappableEvent, BodyDecryptError):
        return None
    state = TaskState(
        model=(record.model or "unknown")[:100],
        status=record.status,
        updated_at=record.source_updated_at.isoformat(),
        reserved=float(record.reserved_credits or 0),
        final=float(record.final_credits or 0) if record.status_rank == TERMINAL_RANK else 0.0,
    )
    return _day_of(document, event), record.record_key, state, event.received_ms // 1000


class CreditLedger:
    """Per-day credit sums, kept current by ``catch_up`` and read by ``report``."""

    def __init__(
        self,
        store: EventStore,
        cipher: BodyCipher,
        *,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self.settle_ms = int(settle_seconds * 1000)

    async def catch_up(self, budget: int = DEFAULT_BUDGET) -> tuple[int, bool]:
        """Count up to ``budget`` new events; (how many were read, whether more wait)."""
        read, more = 0, False
        for shard in all_shards(self.store.shards):
            if read >= budget:
                return read, True
            done, left = await self._catch_up_shard(shard.shard, shard.index, budget - read)
            read += done
            more = more or left
        return read, more

    async def _catch_up_shard(self, shard: int, index: str, budget: int) -> tuple[int, bool]:
        upper = now_ms() - self.settle_ms
        seen = await self.store.credits.cursor(shard)
        score, _, last = (seen or "0:").partition(":")
        entries = await self.store.oldest_first(index, int(score), upper, budget + 1)
        # The first entries may share the cursor's score: skip those already counted
        # (members of one score come in lexicographic order).
        fresh = [(member, at) for member, at in entries if at > int(score) or member > last]
        more = len(entries) > budget
        fresh = fresh[:budget]
        if not fresh:
            return 0, False
        batch = await self._count(fresh)
        member, at = fresh[-1]
        committed = await self.store.credits.commit(
            shard, seen, f"{at}:{member}", self._days(batch)
        )
        if not committed:
            return 0, True  # another process counted this batch first
        return len(fresh), more

    async def _count(self, fresh: list[tuple[str, int]]) -> _Batch:
        batch = _Batch()
        events = await load_many(self.store, [member for member, _ in fresh])
        found = [
            found for event in events if event is not None
            for found in [_state_of(event, self.cipher)] if found is not None
        ]  # fmt: skip
        by_day: dict[str, list[str]] = {}
        for day, task, _, _ in found:
            if task not in by_day.setdefault(day, []):
                by_day[day].append(task)
        previous: dict[tuple[str, str], TaskState | None] = {}
        for day, tasks in by_day.items():  # one HMGET per day the batch touches
            states = await self.store.credits.task_states(day, tasks)
            for task, raw in zip(tasks, states, strict=True):
                previous[(day, task)] = TaskState.loads(raw) if raw else None
        for day, task, state, received in found:
            batch.received[day] = max(batch.received.get(day, 0), received)
            old = batch.states.get((day, task)) or previous[(day, task)]
            if old is not None and not state.newer_than(old):
                continue
            deltas = batch.deltas.setdefault(day, {})
            for name, value in state.counts().items():
                key = f"{state.model}{SEPARATOR}{name}"
                deltas[key] = deltas.get(key, 0.0) + value
            if old is not None:
                for name, value in old.counts().items():
                    key = f"{old.model}{SEPARATOR}{name}"
                    deltas[key] = deltas.get(key, 0.0) - value
            batch.states[(day, task)] = state
        return batch

    def _days(self, batch: _Batch) -> dict[str, tuple[int, dict[str, bytes], dict[str, float]]]:
        """Per day the batch touched: its expiry, task states and sum deltas."""
        retention = self.store.retention_ms // 1000
        days: dict[str, tuple[int, dict[str, bytes], dict[str, float]]] = {}
        for day in sorted(set(batch.deltas) | {day for day, _ in batch.states}):
            # Kept while its events may be: a day (by creation) ends, or an event of it was
            # received, less than the retention ago. Batches move forward in receive time,
            # so the latest write carries the latest expiry.
            expires = (
                max(_day_end(day), batch.received.get(day, 0))
                + retention
                + CREDITS_EXTRA_TTL_SECONDS
            )
            tasks = {task: state.dumps() for (d, task), state in batch.states.items() if d == day}
            days[day] = (expires, tasks, batch.deltas.get(day, {}))
        return days

    async def report(self, *, budget: int = DEFAULT_BUDGET) -> CreditReport:
        """Catch up (bounded), then the sums for every day within retention."""
        counted, pending = await self.catch_up(budget)
        await self.store.credits.forget_days_before(now_ms() // 1000)
        # Latest expiry first is the most recent days first; the cap bounds the read.
        days = sorted(await self.store.credits.days(MAX_REPORT_DAYS), reverse=True)
        sums = await self.store.credits.sums(days)
        rows = [row for day, day_sums in zip(days, sums, strict=True)
                for row in _rows(day, day_sums)]  # fmt: skip
        totals = dict.fromkeys(METRICS, 0.0)
        for row in rows:
            for name in METRICS:
                totals[name] += getattr(row, name)
        return CreditReport(tuple(rows), totals, pending, counted)


def _day_end(day: str) -> int:
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    return int((start + timedelta(days=1)).timestamp())


def _rows(day: str, sums: dict[str, str]) -> Iterable[CreditRow]:
    by_model: dict[str, dict[str, float]] = {}
    for key, value in sums.items():
        model, _, name = key.rpartition(SEPARATOR)
        by_model.setdefault(model, {})[name] = round(float(value), 6)
    for model in sorted(by_model):
        values = by_model[model]
        if not values.get("jobs"):
            continue
        yield CreditRow(
            day=day,
            model=model,
            jobs=int(values.get("jobs", 0)),
            succeeded=int(values.get("succeeded", 0)),
            failed=int(values.get("failed", 0)),
            reserved=values.get("reserved", 0.0),
            final=values.get("final", 0.0),
            uncharged=values.get("uncharged", 0.0),
        )

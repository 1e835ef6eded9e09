"""Replay that tells the truth (SPEC §7, issue 14 item 6): plan, queue, follow, audit.

``plan_replay`` says exactly what would be queued (the dry run, the console's "this will
queue N events"); ``execute_replay`` queues them through the ordering guard, paced, can
follow them to their outcomes, and always leaves one audit entry, also when interrupted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from receiver.models import EventState
from receiver.ops.audit import AuditEntry, audit_filter, write_audit
from receiver.ops.events import Progress, summary_json
from receiver.ops.selection import Selection, selected
from receiver.store import EventStore, StoredEvent

WAIT_POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """What a replay would do: the members selected, and those no longer stored."""

    selection: Selection
    members: tuple[str, ...]
    missing: tuple[str, ...]
    # For a filter: the events it selected (what a dry run shows).
    events: tuple[StoredEvent, ...] = ()

    @property
    def count(self) -> int:
        """How many events the replay would queue."""
        return len(self.members) - len(self.missing)

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": len(self.members),
            "would_queue": self.count,
            "missing": [member.partition("|")[2] for member in self.missing],
            "events": [summary_json(event) for event in self.events],
        }


@dataclass(frozen=True, slots=True)
class ReplayOutcomes:
    """Where replayed events ended up (after ``wait_for_outcomes``)."""

    applied: int = 0
    stale: int = 0
    dead: int = 0
    pending: int = 0
    resolved: int = 0
    missing: int = 0
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "stale": self.stale,
            "dead": self.dead,
            "pending": self.pending,
            "resolved": self.resolved,
            "missing": self.missing,
            "timed_out": self.timed_out,
        }

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in self.to_json().items() if isinstance(v, int) and k != "timed_out"}


@dataclass(slots=True)
class ReplayResult:
    """How a replay went; ``missing`` names events no longer stored. Filled while it runs,
    so an interrupted replay still reports (and audits) how far it got."""

    total: int
    queued: int = 0
    missing: list[str] = field(default_factory=list)
    completed: bool = False
    outcomes: ReplayOutcomes | None = None
    audit_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "queued": self.queued,
            "missing": [member.partition("|")[2] for member in self.missing],
            "completed": self.completed,
            "outcomes": self.outcomes.to_json() if self.outcomes is not None else None,
            "audit_id": self.audit_id,
        }


async def existing(store: EventStore, members: Sequence[str]) -> list[bool]:
    """Whether each member is still stored."""
    return await store.exists_many(members)


async def plan_replay(
    store: EventStore, selection: Selection, *, scan_budget: int | None = None
) -> ReplayPlan:
    """What replaying ``selection`` would queue; changes nothing. ``scan_budget`` bounds a
    filter's walk (the console passes ``CONSOLE_SCAN_BUDGET``)."""
    members, events = await selected(store, selection, scan_budget=scan_budget)
    present = await store.exists_many(members)
    missing = tuple(m for m, ok in zip(members, present, strict=True) if not ok)
    return ReplayPlan(selection, tuple(members), missing, tuple(events))


async def replay(
    store: EventStore,
    members: Sequence[str],
    *,
    by: str,
    rate: float | None = None,
    progress: Progress | None = None,
    result: ReplayResult | None = None,
) -> ReplayResult:
    """Requeue each member through the ordering guard, at most ``rate`` per second.

    Pass ``result`` to keep the counts of an interrupted replay (for its audit entry).
    """
    result = result if result is not None else ReplayResult(total=len(members))
    started = time.monotonic()
    for done, member in enumerate(members):
        if rate is not None:
            # Pace against the start, not the previous event, so slow calls do not add up.
            delay = started + done / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if await store.requeue(member, by=by):
            result.queued += 1
        else:
            result.missing.append(member)
        if progress is not None:
            progress(done + 1, len(members))
    result.completed = True
    return result


async def execute_replay(
    store: EventStore,
    plan: ReplayPlan,
    *,
    actor: str,
    rate: float | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    wait_seconds: float | None = None,
    on_outcomes: Callable[[ReplayOutcomes], None] | None = None,
) -> ReplayResult:
    """Queue the plan's events (unless ``dry_run``), follow them for up to
    ``wait_seconds`` if given, and write one audit entry however it ends.

    Raises whatever interrupted it (cancellation, a Redis failure) after auditing what
    was done.
    """
    selection = plan.selection
    result = ReplayResult(total=len(plan.members))
    try:
        if dry_run:
            result.missing = list(plan.missing)
            result.completed = True
            return result
        await replay(
            store, plan.members, by=f"replay:{actor}", rate=rate, progress=progress, result=result
        )
        if wait_seconds is not None:
            missing = set(result.missing)
            queued = [member for member in plan.members if member not in missing]
            result.outcomes = await wait_for_outcomes(
                store, queued, wait_seconds, on_progress=on_outcomes
            )
        return result
    finally:
        # Audited even when interrupted or a dry run, with what was actually done.
        result.audit_id = await write_audit(
            store,
            AuditEntry(
                actor=actor,
                source=selection.source,
                filter=audit_filter(
                    selection.event_filter if selection.bulk else None, list(selection.event_ids)
                ),
                ids=len(selection.event_ids),
                matched=len(plan.members),
                queued=result.queued,
                missing=len(result.missing),
                dry_run=dry_run,
                completed=result.completed,
                outcomes=result.outcomes.counts() if result.outcomes is not None else None,
            ),
        )


async def wait_for_outcomes(
    store: EventStore,
    members: Sequence[str],
    timeout_seconds: float,
    *,
    poll_seconds: float = WAIT_POLL_SECONDS,
    on_progress: Callable[[ReplayOutcomes], None] | None = None,
) -> ReplayOutcomes:
    """Follow queued events until none is pending or ``timeout_seconds`` pass.

    A requeue sets an event pending before this starts, so any other state is the
    replay's own outcome. Transient failures keep an event pending (waiting for a retry):
    it counts as pending, and ``timed_out`` says the wait ended with some undecided.
    """
    deadline = time.monotonic() + timeout_seconds
    undecided = list(members)
    decided: dict[str, int] = {}
    while True:
        states = await store.states(undecided)
        still: list[str] = []
        for member, state in zip(undecided, states, strict=True):
            if state is EventState.PENDING:
                still.append(member)
            else:
                name = state.value if state is not None else "missing"
                decided[name] = decided.get(name, 0) + 1
        undecided = still
        outcomes = ReplayOutcomes(
            applied=decided.get("applied", 0),
            stale=decided.get("stale", 0),
            dead=decided.get("dead", 0),
            resolved=decided.get("resolved", 0),
            missing=decided.get("missing", 0),
            pending=len(undecided),
            timed_out=bool(undecided) and time.monotonic() >= deadline,
        )
        if on_progress is not None:
            on_progress(outcomes)
        if not undecided or time.monotonic() >= deadline:
            return outcomes
        await asyncio.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

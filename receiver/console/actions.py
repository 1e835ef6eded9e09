"""The console's actions, shared by the pages and the API: each is one ops call, audited
with the person's name as the actor (SPEC §10), never a second implementation.

Bulk selections walk at most ``ops.CONSOLE_SCAN_BUDGET`` index members and cover at most
``views.MAX_BULK_EVENTS`` events, so a click can never turn into a scan of the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver import ops
from receiver.console import views
from receiver.console.auth import Principal
from receiver.models import EventState
from receiver.runtime import Runtime

# How long ``POST /api/v1/replays`` may follow its events when asked to (``wait``).
MAX_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Preview:
    """What a bulk action would cover now: the exact count, and whether more match."""

    count: int
    more: bool
    # The walk stopped at the scan budget: the count is of what one look covers.
    scanned_out: bool


def capped(event_filter: ops.EventFilter) -> ops.EventFilter:
    """The filter a console bulk action runs with: at most ``MAX_BULK_EVENTS``."""
    return dataclasses.replace(event_filter, limit=views.MAX_BULK_EVENTS)


def dead_only(event_filter: ops.EventFilter) -> ops.EventFilter:
    return dataclasses.replace(event_filter, state=EventState.DEAD)


async def preview(runtime: Runtime, event_filter: ops.EventFilter) -> Preview:
    """How many events a bulk action with ``event_filter`` would touch (bounded)."""
    probe = dataclasses.replace(event_filter, limit=views.MAX_BULK_EVENTS + 1)
    page = await ops.list_events(runtime.store, probe, scan_budget=ops.CONSOLE_SCAN_BUDGET)
    count = min(len(page), views.MAX_BULK_EVENTS)
    return Preview(count, len(page) > views.MAX_BULK_EVENTS, page.scanned_out)


def selection(
    source: str,
    *,
    event_filter: ops.EventFilter | None = None,
    event_ids: Sequence[str] = (),
) -> ops.Selection:
    if event_filter is not None:
        return ops.Selection(source, event_filter=capped(event_filter))
    return ops.Selection(source, event_ids=tuple(dict.fromkeys(event_ids))[: views.MAX_BULK_EVENTS])


async def plan(runtime: Runtime, chosen: ops.Selection) -> ops.ReplayPlan:
    return await ops.plan_replay(runtime.store, chosen, scan_budget=ops.CONSOLE_SCAN_BUDGET)


async def replay(
    runtime: Runtime,
    who: Principal,
    planned: ops.ReplayPlan,
    *,
    dry_run: bool = False,
    wait_seconds: float | None = None,
) -> ops.ReplayResult:
    """Requeue a plan's events through the ordering guard (or count them), audited; a
    bulk replay's members are kept for an hour so its page can follow them."""
    result = await ops.execute_replay(
        runtime.store, planned, actor=who.name, dry_run=dry_run, wait_seconds=wait_seconds
    )
    if not dry_run and planned.selection.bulk:
        missing = set(planned.missing)
        queued = [member for member in planned.members if member not in missing]
        await runtime.store.console.remember_replay(result.audit_id, queued)
    return result


def replay_answer(
    planned: ops.ReplayPlan, result: ops.ReplayResult, *, dry_run: bool, more: bool = False
) -> dict[str, Any]:
    """What the API answers for a replay (part 1's shape, plus the outcomes)."""
    return {
        "dry_run": dry_run,
        "matched": len(planned.members),
        "more": more,
        "would_queue": planned.count if dry_run else None,
        "queued": result.queued,
        "missing": len(result.missing),
        "completed": result.completed,
        "outcomes": result.outcomes.to_json() if result.outcomes is not None else None,
        "audit_id": result.audit_id,
    }


async def resolve(
    runtime: Runtime, who: Principal, chosen: ops.Selection, reason: str
) -> ops.ResolveResult:
    """Close the dead events of the selection with ``reason``, audited with the name."""
    return await ops.resolve(
        runtime.store,
        chosen,
        reason=reason,
        actor=who.name,
        scan_budget=ops.CONSOLE_SCAN_BUDGET,
    )


async def progress(runtime: Runtime, audit_id: str) -> tuple[int, ops.ReplayOutcomes | None]:
    """Where a bulk replay's events stand now: (how many, their outcomes so far), or
    (0, None) once its members are forgotten (after an hour)."""
    members = await runtime.store.console.replay_members(audit_id, views.MAX_BULK_EVENTS)
    if not members:
        return 0, None
    # One look (no waiting): the page reloads itself while some are pending.
    return len(members), await ops.wait_for_outcomes(runtime.store, members, 0)

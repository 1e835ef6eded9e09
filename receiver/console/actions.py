"""The console's actions, shared by the pages and the API: each is one ops call, audited
with the person's name as the actor (SPEC §10), never a second implementation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver import ops
from receiver.console.auth import Principal
from receiver.keys import CONSOLE_REPLAY_TTL_SECONDS, console_replay, member_of
from receiver.runtime import Runtime
from receiver.store import StoredEvent


@dataclass(frozen=True, slots=True)
class Selected:
    """What a bulk action covers: the exact members, and whether the filter matched more."""

    source: str
    members: tuple[str, ...]
    more: bool
    events: tuple[StoredEvent, ...] = ()
    event_filter: ops.EventFilter | None = None
    event_ids: tuple[str, ...] = ()


async def select(
    runtime: Runtime,
    source: str,
    *,
    event_filter: ops.EventFilter | None = None,
    event_ids: Sequence[str] = (),
    cap: int,
) -> Selected:
    """The events a bulk action would touch (at most ``cap``; ``more`` if others match)."""
    if event_filter is not None:
        probe = dataclasses.replace(event_filter, limit=cap + 1)
        found = await ops.list_events(runtime.store, probe)
        events = tuple(found[:cap])
        return Selected(
            source, tuple(e.member for e in events), len(found) > cap, events, event_filter
        )
    unique = tuple(dict.fromkeys(event_ids))[:cap]
    members = tuple(member_of(source, event_id) for event_id in unique)
    present = await ops.existing(runtime.store, members)
    kept = tuple(m for m, ok in zip(members, present, strict=True) if ok)
    return Selected(source, kept, len(dict.fromkeys(event_ids)) > cap, event_ids=unique)


async def replay(
    runtime: Runtime, who: Principal, selected: Selected, *, dry_run: bool = False
) -> dict[str, Any]:
    """Requeue the selection through the ordering guard (or count it), audited."""
    result = ops.ReplayResult(total=len(selected.members))
    try:
        if dry_run:
            result.completed = True
        else:
            await ops.replay(
                runtime.store, list(selected.members), by=f"replay:{who.name}", result=result
            )
    finally:
        audit_id = await ops.write_audit(
            runtime.store,
            ops.AuditEntry(
                actor=who.name,
                source=selected.source,
                filter=ops.audit_filter(selected.event_filter, list(selected.event_ids)),
                ids=len(selected.event_ids),
                matched=len(selected.members),
                queued=result.queued,
                missing=len(result.missing),
                dry_run=dry_run,
                completed=result.completed,
            ),
        )
    return {
        "dry_run": dry_run,
        "matched": len(selected.members),
        "more": selected.more,
        "queued": result.queued,
        "would_queue": len(selected.members) if dry_run else None,
        "missing": len(result.missing),
        "completed": result.completed,
        "audit_id": audit_id,
    }


async def outcomes(runtime: Runtime, members: Sequence[str]) -> dict[str, int]:
    """How the events of a replay stand now: a count per state (bounded by the caller)."""
    counts: dict[str, int] = {}
    for event in await ops.load_many(runtime.store, list(members)):
        state = event.state.value if event is not None else "missing"
        counts[state] = counts.get(state, 0) + 1
    return counts


async def remember_replay(runtime: Runtime, audit_id: str, members: Sequence[str]) -> None:
    """Keep a bulk replay's members for an hour, so its page can show their outcomes."""
    if not members:
        return
    key = console_replay(audit_id)
    pipe = runtime.client.pipeline(transaction=True)
    pipe.rpush(key, *members)
    pipe.expire(key, CONSOLE_REPLAY_TTL_SECONDS)
    await pipe.execute()


async def replay_members(runtime: Runtime, audit_id: str) -> list[str]:
    raw = await runtime.client.lrange(console_replay(audit_id), 0, -1)
    return [item.decode() for item in raw]

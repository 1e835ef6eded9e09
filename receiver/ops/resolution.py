"""Resolve dead events (SPEC §10, issue 14 item 5): close them with a reason, audited.

A resolved event stays stored and showable (with its reason, who and when) but leaves
the dead set: the dead-letter gauge stops counting it and ``replay --status dead`` no
longer picks it up, so an event that can never apply (unmappable, a task the product
deleted) no longer keeps the alert red for the whole retention.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any

from receiver.models import EventState
from receiver.ops.audit import AuditEntry, audit_filter, write_audit
from receiver.ops.events import FilterError
from receiver.ops.selection import Selection, selected
from receiver.store import EventStore

MAX_REASON = 500
# Resolve scripts sent together (they share the auto-pipeline's round trips).
RESOLVE_CHUNK = 200


@dataclass(frozen=True, slots=True)
class ResolveResult:
    """What a resolve did: how many it matched and resolved, and which it left alone."""

    matched: int
    resolved: int
    not_dead: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    dry_run: bool = False
    audit_id: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "resolved": self.resolved,
            "not_dead": [member.partition("|")[2] for member in self.not_dead],
            "missing": [member.partition("|")[2] for member in self.missing],
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
        }


def check_reason(reason: str) -> str:
    """The reason as stored; FilterError if blank, too long or not printable."""
    text = reason.strip()
    if not text:
        raise FilterError("--reason: say why these events are resolved")
    if len(text) > MAX_REASON:
        raise FilterError(f"--reason: at most {MAX_REASON} characters")
    if any(not ch.isprintable() for ch in text):
        raise FilterError("--reason: printable text only")
    return text


async def resolve(
    store: EventStore,
    selection: Selection,
    *,
    reason: str,
    actor: str,
    dry_run: bool = False,
    scan_budget: int | None = None,
) -> ResolveResult:
    """Resolve the dead events ``selection`` covers; anything not dead is left alone.

    A filter is narrowed to dead events (resolving is only for them); ``scan_budget``
    bounds its walk. Always audited.
    """
    text = check_reason(reason)
    if selection.event_filter is not None and selection.bulk:
        narrowed = dataclasses.replace(selection.event_filter, state=EventState.DEAD)
        selection = dataclasses.replace(selection, event_filter=narrowed)
    resolved = 0
    not_dead: list[str] = []
    missing: list[str] = []
    members: list[str] = []
    completed = False
    try:
        members, _ = await selected(store, selection, scan_budget=scan_budget)
        if dry_run:
            states = await store.states(members)
            missing = [m for m, state in zip(members, states, strict=True) if state is None]
            not_dead = [
                m
                for m, state in zip(members, states, strict=True)
                if state is not None and state is not EventState.DEAD
            ]
        else:
            for start in range(0, len(members), RESOLVE_CHUNK):
                chunk = members[start : start + RESOLVE_CHUNK]
                answers = await asyncio.gather(
                    *(store.resolve(member, reason=text, actor=actor) for member in chunk)
                )
                for member, answer in zip(chunk, answers, strict=True):
                    if answer == 1:
                        resolved += 1
                    elif answer == 0:
                        missing.append(member)
                    else:
                        not_dead.append(member)
        completed = True
    finally:
        audit_id = await write_audit(
            store,
            AuditEntry(
                actor=actor,
                source=selection.source,
                filter=audit_filter(
                    selection.event_filter if selection.bulk else None, list(selection.event_ids)
                ),
                ids=len(selection.event_ids),
                matched=len(members),
                queued=0,
                missing=len(missing),
                dry_run=dry_run,
                completed=completed,
                action="resolve",
                resolved=resolved,
                skipped=len(not_dead),
                reason=text,
            ),
        )
    return ResolveResult(len(members), resolved, tuple(not_dead), tuple(missing), dry_run, audit_id)

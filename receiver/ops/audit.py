"""The audit trail of operator actions: who replayed or resolved what, when, how it ended.

Every replay (dry runs and interrupted ones included) and every resolve appends one entry
to a capped Redis stream (``EventStore.audit``) and logs it; ``receiver events audit``
and the console list them back (SPEC §7, issue 14 item 10).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from receiver.logs import get_logger
from receiver.ops.events import EventFilter, iso_ms
from receiver.settings import Settings
from receiver.store import EventStore, now_ms

# Still named after the old single ``receiver.ops`` module: audit log lines keep their logger.
log = get_logger("receiver.ops")

# Audit entries name at most this many event ids; the count is always exact.
AUDIT_MAX_IDS = 50
MAX_ACTOR = 100


def current_user() -> str:
    """The OS user running the command, for audit entries without ``--actor``."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry
        return "unknown"


def resolve_actor(option: str | None, settings: Settings | None = None) -> str:
    """Who acts: ``--actor``, else ``RECEIVER_ACTOR``, else the OS user (bounded)."""
    actor = (option or "").strip() or (settings.actor if settings is not None else None)
    return (actor or current_user())[:MAX_ACTOR]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action: who, when, what it selected, how many, and how it ended.

    ``action`` is ``replay`` or ``resolve``. ``completed`` is False for an action that was
    interrupted (its counts say how far it got). A replay that waited for its events
    carries their ``outcomes`` (applied, stale, dead, pending, …); a resolve carries its
    ``reason`` and how many it ``resolved`` and ``skipped`` (not dead).
    """

    actor: str
    source: str
    filter: dict[str, Any]
    ids: int
    matched: int
    queued: int
    missing: int
    dry_run: bool
    completed: bool = True
    action: str = "replay"
    resolved: int = 0
    skipped: int = 0
    reason: str = ""
    outcomes: Mapping[str, int] | None = None
    at_ms: int = field(default_factory=now_ms)
    entry_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "at_ms": str(self.at_ms),
            "action": self.action,
            "actor": self.actor,
            "source": self.source,
            "filter": orjson.dumps(self.filter).decode(),
            "ids": str(self.ids),
            "matched": str(self.matched),
            "queued": str(self.queued),
            "missing": str(self.missing),
            "resolved": str(self.resolved),
            "skipped": str(self.skipped),
            "reason": self.reason,
            "outcomes": orjson.dumps(dict(self.outcomes)).decode() if self.outcomes else "",
            "dry_run": "1" if self.dry_run else "0",
            "completed": "1" if self.completed else "0",
        }

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[str, str]) -> AuditEntry:
        def number(name: str) -> int:
            text = fields.get(name, "0") or "0"
            return int(text) if text.isdigit() else 0

        audit_filter = _json(fields.get("filter", "{}"), {"unreadable": fields.get("filter", "")})
        outcomes = _json(fields.get("outcomes", ""), None) if fields.get("outcomes") else None
        return cls(
            actor=fields.get("actor", ""),
            source=fields.get("source", ""),
            filter=audit_filter if isinstance(audit_filter, dict) else {"value": audit_filter},
            ids=number("ids"),
            matched=number("matched"),
            queued=number("queued"),
            missing=number("missing"),
            dry_run=fields.get("dry_run") == "1",
            completed=fields.get("completed", "1") == "1",
            action=fields.get("action", "replay") or "replay",
            resolved=number("resolved"),
            skipped=number("skipped"),
            reason=fields.get("reason", ""),
            outcomes=outcomes if isinstance(outcomes, dict) else None,
            at_ms=number("at_ms"),
            entry_id=entry_id,
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.entry_id,
            "at": iso_ms(self.at_ms),
            "action": self.action,
            "actor": self.actor,
            "source": self.source,
            "filter": self.filter,
            "ids": self.ids,
            "matched": self.matched,
            "queued": self.queued,
            "missing": self.missing,
            "dry_run": self.dry_run,
            "completed": self.completed,
        }
        if self.action == "resolve":
            data.update(resolved=self.resolved, skipped=self.skipped, reason=self.reason)
        if self.outcomes is not None:
            data["outcomes"] = dict(self.outcomes)
        return data


def _json(text: str, default: Any) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return default


def audit_filter(event_filter: EventFilter | None, event_ids: Sequence[str]) -> dict[str, Any]:
    """What an action selected, for its audit entry: the filter, or the ids (capped)."""
    if event_filter is not None:
        return event_filter.describe()
    described: dict[str, Any] = {"event_ids": list(event_ids[:AUDIT_MAX_IDS])}
    if len(event_ids) > AUDIT_MAX_IDS:
        described["event_ids_omitted"] = len(event_ids) - AUDIT_MAX_IDS
    return described


async def write_audit(store: EventStore, entry: AuditEntry) -> str:
    """Append ``entry`` to the audit log and log it; returns its id."""
    entry_id = await store.audit.append(entry.fields())
    fields = {key: value for key, value in entry.to_json().items() if key != "id"}
    log.info(f"{entry.action}_audited", audit_id=entry_id, **fields)
    return entry_id


async def list_audit(
    store: EventStore, limit: int, *, before: str | None = None
) -> list[AuditEntry]:
    """The newest ``limit`` audit entries older than id ``before``, newest first."""
    return [
        AuditEntry.from_fields(entry_id, fields)
        for entry_id, fields in await store.audit.newest(limit, before)
    ]

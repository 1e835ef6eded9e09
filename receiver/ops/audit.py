"""The audit trail of replays: who replayed what, when, and how many (SPEC §7).

Every replay, dry run included, appends one entry to a capped Redis stream and logs it;
``receiver events audit`` lists them back.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from receiver.keys import AUDIT_MAX_ENTRIES, AUDIT_STREAM
from receiver.logs import get_logger
from receiver.ops.events import EventFilter, iso_ms
from receiver.store import now_ms

# Still named after the old single ``receiver.ops`` module: audit log lines keep their logger.
log = get_logger("receiver.ops")

# Audit entries name at most this many event ids; the count is always exact.
AUDIT_MAX_IDS = 50


def current_user() -> str:
    """The OS user running the command, for audit entries without ``--actor``."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name and no passwd entry
        return "unknown"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited replay (or dry run): who, when, what filter, how many."""

    actor: str
    source: str
    filter: dict[str, Any]
    ids: int
    matched: int
    queued: int
    missing: int
    dry_run: bool
    completed: bool = True
    at_ms: int = field(default_factory=now_ms)
    entry_id: str = ""

    def fields(self) -> dict[str, str]:
        return {
            "at_ms": str(self.at_ms),
            "actor": self.actor,
            "source": self.source,
            "filter": orjson.dumps(self.filter).decode(),
            "ids": str(self.ids),
            "matched": str(self.matched),
            "queued": str(self.queued),
            "missing": str(self.missing),
            "dry_run": "1" if self.dry_run else "0",
            "completed": "1" if self.completed else "0",
        }

    @classmethod
    def from_fields(cls, entry_id: str, raw: dict[bytes, bytes]) -> AuditEntry:
        fields = {key.decode(): value.decode() for key, value in raw.items()}
        try:
            audit_filter = orjson.loads(fields.get("filter", "{}"))
        except orjson.JSONDecodeError:
            audit_filter = {"unreadable": fields.get("filter", "")}
        return cls(
            actor=fields.get("actor", ""),
            source=fields.get("source", ""),
            filter=audit_filter if isinstance(audit_filter, dict) else {"value": audit_filter},
            ids=int(fields.get("ids", 0) or 0),
            matched=int(fields.get("matched", 0) or 0),
            queued=int(fields.get("queued", 0) or 0),
            missing=int(fields.get("missing", 0) or 0),
            dry_run=fields.get("dry_run") == "1",
            completed=fields.get("completed", "1") == "1",
            at_ms=int(fields.get("at_ms", 0) or 0),
            entry_id=entry_id,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.entry_id,
            "at": iso_ms(self.at_ms),
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


def audit_filter(event_filter: EventFilter | None, event_ids: Sequence[str]) -> dict[str, Any]:
    """What a replay selected, for its audit entry: the filter, or the ids (capped)."""
    if event_filter is not None:
        return event_filter.describe()
    described: dict[str, Any] = {"event_ids": list(event_ids[:AUDIT_MAX_IDS])}
    if len(event_ids) > AUDIT_MAX_IDS:
        described["event_ids_omitted"] = len(event_ids) - AUDIT_MAX_IDS
    return described


async def write_audit(client: Any, entry: AuditEntry) -> str:
    """Append ``entry`` to the audit stream (trimmed approximately) and log it."""
    entry_id = await client.xadd(
        AUDIT_STREAM, entry.fields(), maxlen=AUDIT_MAX_ENTRIES, approximate=True
    )
    text_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    fields = {key: value for key, value in entry.to_json().items() if key != "id"}
    log.info("replay_audited", audit_id=text_id, **fields)
    return text_id


async def list_audit(client: Any, limit: int) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, newest first."""
    raw = await client.xrevrange(AUDIT_STREAM, count=limit)
    return [AuditEntry.from_fields(entry_id.decode(), fields) for entry_id, fields in raw]


# -- re-encryption -----------------------------------------------------------------------

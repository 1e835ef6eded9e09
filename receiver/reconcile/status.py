"""What reconciliation looks like right now: the watch list and the gate, for ``status``,
the console and the gauges (``receiver_reconcile_watched_tasks``,
``receiver_reconcile_oldest_watched_age_seconds``, ``receiver_reconcile_key_refused``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from receiver import metrics
from receiver.models import format_time
from receiver.store import EventStore, now_ms


def _iso(ms: int | None) -> str | None:
    return None if ms is None else format_time(datetime.fromtimestamp(ms / 1000, UTC))


@dataclass(frozen=True, slots=True)
class WatchStatus:
    watched: int  # tasks watched (not yet terminal as far as we know)
    due_now: int  # due for a check now (tasks a reconciler holds are not due)
    oldest_age_seconds: float | None  # how long the oldest has been watched
    next_due_ms: int | None  # the soonest next check (a lease end while one is polled)
    paused_seconds: float  # every reconciler waits this long (429 or refused key)
    pause_reason: str  # "rate_limited" | "refused" | ""
    key_refused: bool
    refused_status: int | None  # 401 or 403 while the key is refused

    def to_json(self) -> dict[str, Any]:
        return {
            "watched": self.watched,
            "due_now": self.due_now,
            "oldest_age_seconds": self.oldest_age_seconds,
            "next_due_at": _iso(self.next_due_ms),
            "paused_seconds": self.paused_seconds,
            "pause_reason": self.pause_reason,
            "key_refused": self.key_refused,
            "refused_status": self.refused_status,
        }


async def watch_status(store: EventStore) -> WatchStatus:
    """The watch list and the shared gate, read from Redis (a few commands, bounded)."""
    now = now_ms()
    stats = await store.watch.stats(now)
    gate = await store.poll_gate.state()
    oldest = stats.oldest_since_ms
    return WatchStatus(
        watched=stats.watched,
        due_now=stats.due_now,
        oldest_age_seconds=None if oldest is None else max(0.0, (now - oldest) / 1000),
        next_due_ms=stats.next_due_ms,
        paused_seconds=gate.paused_ms / 1000,
        pause_reason=gate.pause_reason,
        key_refused=gate.refused_status is not None,
        refused_status=gate.refused_status,
    )


async def refresh_gauges(store: EventStore) -> WatchStatus:
    """Read the status and set the reconciliation gauges from it."""
    status = await watch_status(store)
    metrics.RECONCILE_WATCHED.set(status.watched)
    metrics.RECONCILE_OLDEST_AGE.set(status.oldest_age_seconds or 0)
    metrics.RECONCILE_KEY_REFUSED.set(1 if status.key_refused else 0)
    return status

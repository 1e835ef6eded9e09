"""``receiver status`` (issue 14, item 7): is anything consuming, backed up, failing?

Live workers from their heartbeats, the queue (backlog, its oldest entry, retries), dead
letters by reason code, resolved ones, rejections of the last hour by code, the last
accepted delivery, the signing keys by fingerprint with how many deliveries each
verified in the last hour, so a rotation shows when the old key stops being used, and
reconciliation (issue 16): the watch list, a pause or refused API key, the last poll.
Every read is bounded; nothing here needs a signing secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from receiver.keys import WORKER_STALE_SECONDS
from receiver.ops.events import iso_ms
from receiver.ops.rejections import rejected_counts
from receiver.reconcile.status import WatchStatus, watch_status
from receiver.redaction import redact_value
from receiver.settings import POLL_SOURCE, Settings
from receiver.signing import key_fingerprint
from receiver.store import EventStore, now_ms
from receiver.store.workers import is_live

# Dead events whose reason code is read at most, per shard (newest first).
DEAD_REASONS_LIMIT = 5_000
KEY_USE_MINUTES = 60


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker as its heartbeat describes it."""

    consumer: str
    host: str
    pid: int
    started_ms: int
    beat_ms: int
    concurrency: int
    in_flight: int
    live: bool
    # ``open`` or ``closed``: the worker's circuit breaker, i.e. whether the sink answers
    # it; '' from a worker that does not say.
    sink_circuit: str = ""

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], now: int) -> WorkerInfo:
        def number(name: str) -> int:
            text = fields.get(name, "")
            return int(text) if text.isdigit() else 0

        return cls(
            consumer=fields.get("consumer", ""),
            host=fields.get("host", ""),
            pid=number("pid"),
            started_ms=number("started_ms"),
            beat_ms=number("beat_ms"),
            concurrency=number("concurrency"),
            in_flight=number("in_flight"),
            live=is_live(fields, now),
            sink_circuit=fields.get("sink_circuit", "")
            if fields.get("sink_circuit") in ("open", "closed")
            else "",
        )

    def age_seconds(self, now: int) -> float:
        return max(0.0, (now - self.beat_ms) / 1000)

    def to_json(self, now: int | None = None) -> dict[str, Any]:
        now = now if now is not None else now_ms()
        return {
            "consumer": self.consumer,
            "host": self.host,
            "pid": self.pid,
            "started_at": iso_ms(self.started_ms) if self.started_ms else None,
            "last_beat_at": iso_ms(self.beat_ms) if self.beat_ms else None,
            "heartbeat_age_seconds": round(self.age_seconds(now), 1),
            "concurrency": self.concurrency,
            "in_flight": self.in_flight,
            "live": self.live,
            "sink_circuit": self.sink_circuit or None,
        }


@dataclass(frozen=True, slots=True)
class KeyUse:
    """A signing key by fingerprint and how much it verified lately."""

    source: str
    fingerprint: str
    # In this process's settings (False: seen in Redis only, or no secret loaded here).
    configured: bool
    verified_last_hour: int
    # Start of the newest minute it verified a delivery in (within the last hour).
    last_verified_ms: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "configured": self.configured,
            "verified_last_hour": self.verified_last_hour,
            "last_verified_at": iso_ms(self.last_verified_ms) if self.last_verified_ms else None,
        }


@dataclass(frozen=True, slots=True)
class Status:
    workers: tuple[WorkerInfo, ...]
    backlog: int
    pending: int
    oldest_pending_age_seconds: float | None
    retrying: int
    dead: int
    dead_by_reason: Mapping[str, int]
    # False when there were more dead events than ``DEAD_REASONS_LIMIT`` per shard.
    dead_by_reason_exact: bool
    resolved: int
    rejected_last_hour: Mapping[str, int]
    last_accepted_at_ms: int | None
    signing_keys: tuple[KeyUse, ...]
    at_ms: int
    # Reconciliation (issue 16): the watch list and the gate, and the newest polled event
    # (polled events do not count as accepted deliveries above).
    reconcile: WatchStatus | None = None
    last_polled_at_ms: int | None = None

    @property
    def live_workers(self) -> int:
        return sum(1 for worker in self.workers if worker.live)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = redact_value(
            {
                "at": iso_ms(self.at_ms),
                "workers": [worker.to_json(self.at_ms) for worker in self.workers],
                "live_workers": self.live_workers,
                "worker_stale_after_seconds": WORKER_STALE_SECONDS,
                "queue": {
                    "backlog": self.backlog,
                    "pending": self.pending,
                    "oldest_pending_age_seconds": self.oldest_pending_age_seconds,
                    "retrying": self.retrying,
                },
                "dead": self.dead,
                "dead_by_reason_exact": self.dead_by_reason_exact,
                "resolved": self.resolved,
                "last_accepted_at": iso_ms(self.last_accepted_at_ms)
                if self.last_accepted_at_ms
                else None,
                "signing_keys": [key.to_json() for key in self.signing_keys],
                "reconcile": {
                    **(self.reconcile.to_json() if self.reconcile is not None else {}),
                    "last_polled_at": iso_ms(self.last_polled_at_ms)
                    if self.last_polled_at_ms
                    else None,
                },
            }
        )
        # Counts keyed by our own codes: not redacted by key, since a code such as
        # ``invalid_signature`` looks like a secret's name to the redaction and holds none.
        data["dead_by_reason"] = {_code(c): int(n) for c, n in self.dead_by_reason.items()}
        data["rejected_last_hour"] = {_code(c): int(n) for c, n in self.rejected_last_hour.items()}
        return data


def _code(text: str) -> str:
    """A code as stored (written by this receiver), kept to the characters codes use."""
    return "".join(ch for ch in text if ch.isalnum() or ch in "_-")[:64]


async def live_workers(store: EventStore) -> list[WorkerInfo]:
    """Workers whose heartbeat is recent (the replay's "no live worker" warning)."""
    now = now_ms()
    known = [WorkerInfo.from_fields(fields, now) for fields in await store.workers.known()]
    return [worker for worker in known if worker.live]


async def dead_by_reason(store: EventStore) -> tuple[dict[str, int], bool]:
    """Dead events counted by reason code, newest ``DEAD_REASONS_LIMIT`` per shard."""
    counts: dict[str, int] = {}
    exact = True
    for zset in store.index_keys("dead"):
        page = await store.newest_first(zset, "+inf", "-inf", 0, DEAD_REASONS_LIMIT + 1)
        if len(page) > DEAD_REASONS_LIMIT:
            exact = False
            page = page[:DEAD_REASONS_LIMIT]
        codes = await store.reason_codes([member for member, _ in page])
        for code in codes:
            if code is not None:
                name = code or "unknown"
                counts[name] = counts.get(name, 0) + 1
    return counts, exact


async def status(store: EventStore, settings: Settings | None = None) -> Status:
    """Everything ``receiver status`` shows, read now."""
    now = now_ms()
    watching = asyncio.ensure_future(watch_status(store))
    try:
        stats, known, reasons, rejected, (last, polled), usage = await asyncio.gather(
            store.queue_stats(),
            store.workers.known(),
            dead_by_reason(store),
            rejected_counts(store, window_seconds=KEY_USE_MINUTES * 60),
            store.newest_by_origin(POLL_SOURCE),
            store.key_use(KEY_USE_MINUTES),
        )
    except BaseException:
        watching.cancel()
        raise
    configured: dict[tuple[str, str], bool] = {}
    if settings is not None:
        for name, source in settings.sources.items():
            for key in source.keys:
                configured[(name, key_fingerprint(key.reveal(), source.scheme))] = True
    keys = [
        KeyUse(
            source,
            fingerprint,
            (source, fingerprint) in configured,
            usage.get((source, fingerprint), (0, 0))[0],
            usage.get((source, fingerprint), (0, 0))[1] or None,
        )
        for source, fingerprint in sorted(set(configured) | set(usage))
    ]
    oldest = stats["oldest_ms"]
    return Status(
        workers=tuple(WorkerInfo.from_fields(fields, now) for fields in known),
        backlog=stats["backlog"],
        pending=stats["pending"],
        oldest_pending_age_seconds=round((now - oldest) / 1000, 1) if oldest else None,
        retrying=stats["retrying"],
        dead=stats["dead"],
        dead_by_reason=reasons[0],
        dead_by_reason_exact=reasons[1],
        resolved=stats["resolved"],
        rejected_last_hour=rejected,
        last_accepted_at_ms=last,
        signing_keys=tuple(keys),
        at_ms=now,
        reconcile=await watching,
        last_polled_at_ms=polled,
    )

"""The event store on Redis: atomic accept, queue reads, outcomes, retries and replays.

Every write is one Lua script run by SHA (``lua/*.lua``), so each state change and its
queue/index bookkeeping happen together or not at all. Key names come from ``keys``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import ResponseError

from receiver.batching import AutoPipeline, Script
from receiver.keys import (
    CONSUMER_GROUP,
    MEMBER_SEPARATOR,
    ShardKeys,
    all_shards,
    keys_for,
    member_of,
)
from receiver.models import EventState
from receiver.redis_client import is_cluster

# How often an idle worker polls the shards of a Redis Cluster (no cross-slot BLOCK there).
CLUSTER_POLL_MS = 50
# Events one finish script records at most (Lua's unpack and Redis's latency both like it short).
MAX_FINISH_BATCH = 128
# A hash gone with more than this left of its retention was lost, not expired: margin for
# clock skew between this host and Redis, which set the hash's TTL (a tenth of a short
# retention at most).
LOST_SLACK_MS = 60_000
# The Lua scripts under lua/, each loaded once and run by SHA.
SCRIPTS = ("accept", "finish", "retry", "promote", "requeue", "release", "vanished", "consumers")
# Entries of its own pending list a worker takes back per read after a Redis failure.
HELD_PAGE = 100


class Vanished(StrEnum):
    """What vanished.lua found for an entry whose event hash was gone."""

    PRESENT = "present"  # stored again meanwhile (a sender's retry): its own entry carries it
    EXPIRED = "expired"  # retention ran out first
    LOST = "lost"  # gone while it should still be stored


class AcceptResult(IntEnum):
    """What the accept script found (its return values)."""

    DUPLICATE = 0
    NEW = 1
    CONFLICT = 2


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A verified delivery, ready to store. ``body`` is already sealed if encryption is on."""

    source: str
    event_id: str
    body: bytes
    body_sha256: str
    encrypted: bool
    received_ms: int
    signed_ts: int
    event_type: str
    record_key: str
    state: EventState
    last_error: str = ""
    reason_code: str = ""
    content_type: str = ""

    @property
    def member(self) -> str:
        return member_of(self.source, self.event_id)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from Redis."""

    member: str
    source: str
    event_id: str
    event_type: str
    record_key: str
    state: EventState
    attempts: int
    last_error: str
    reason_code: str
    received_ms: int
    signed_ts: int
    body: bytes
    encrypted: bool
    body_sha256: str
    content_type: str
    # When its first transient failure happened (0: none yet): the retry budget's start.
    first_failed_ms: int = 0

    @property
    def is_tombstone(self) -> bool:
        """The trace of a lost event (vanished.lua): no body, nothing to apply."""
        return not self.body_sha256

    @classmethod
    def from_hash(cls, member: str, fields: Mapping[bytes, bytes]) -> StoredEvent:
        def text(name: bytes) -> str:
            return fields.get(name, b"").decode()

        return cls(
            member=member,
            source=text(b"source"),
            event_id=text(b"event_id"),
            event_type=text(b"type"),
            record_key=text(b"record_key"),
            state=EventState(text(b"state") or "pending"),
            attempts=int(text(b"attempts") or 0),
            last_error=text(b"last_error"),
            reason_code=text(b"reason_code"),
            received_ms=int(text(b"received_ms") or 0),
            signed_ts=int(text(b"signed_ts") or 0),
            body=fields.get(b"body", b""),
            encrypted=text(b"encrypted") == "1",
            body_sha256=text(b"body_sha256"),
            content_type=text(b"content_type"),
            first_failed_ms=int(text(b"first_failed_ms") or 0),
        )


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One message read from a shard's stream."""

    shard: ShardKeys
    entry_id: str
    member: str
    # How often the queue has handed this entry out (1 unless reclaimed).
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class EventOutcome:
    """What became of one event, for ``finish_many`` to record."""

    entry: QueueEntry | None
    member: str
    state: EventState
    attempts: int
    last_error: str = ""
    by: str = "worker"
    reason_code: str = ""

    def history_line(self) -> bytes:
        extra: dict[str, str] = {}
        if self.reason_code:
            extra["reason_code"] = self.reason_code
        if self.last_error:
            extra["error"] = self.last_error
        return history_entry(self.state.value, self.by, attempts=self.attempts, **extra)


def history_entry(state: str, by: str, **extra: Any) -> bytes:
    """One line of an event's state history."""
    return orjson.dumps({"at_ms": now_ms(), "state": state, "by": by, **extra})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _entries(streams: Mapping[str, ShardKeys], response: Any) -> list[QueueEntry]:
    """Queue entries from an XREADGROUP answer: ``[[stream, [(id, fields), ...]], ...]``."""
    return [
        QueueEntry(streams[_text(stream)], _text(entry_id), fields[b"m"].decode())
        for stream, stream_entries in response or []
        for entry_id, fields in stream_entries
        if fields  # a deleted entry still pending shows up with no fields
    ]


def _stream_items(response: Any) -> list[tuple[Any, list[tuple[Any, dict[Any, Any]]]]]:
    """A raw XREADGROUP reply (RESP2 list or RESP3 map, flat field lists) in the shape
    redis-py's ``xreadgroup`` returns, for ``_entries``."""
    items = response.items() if isinstance(response, dict) else response
    return [
        (
            stream,
            [
                (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {})
                for entry_id, fields in stream_entries
            ],
        )
        for stream, stream_entries in items
    ]


def _as_dict(fields: Any) -> Any:
    """An HGETALL reply as a dict: RESP2 answers a flat list, RESP3 a map."""
    if isinstance(fields, list):
        return dict(zip(fields[::2], fields[1::2], strict=True))
    return fields


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def load_lua(name: str) -> str:
    return resources.files("receiver").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class EventStore:
    """All reads and writes of stored events. One instance per process, sharing a client."""

    def __init__(self, client: Any, *, retention_seconds: int, shards: int = 1) -> None:
        self.client = client
        self.retention_ms = retention_seconds * 1000
        self._retention_text = str(self.retention_ms)
        self.shards = shards
        self.pipeline = AutoPipeline(client)
        self._next_shard = 0
        self._backlog_seen = False  # the last read found entries: try the cheap read first
        self._scripts = {name: Script(self.pipeline, load_lua(name)) for name in SCRIPTS}

    def keys(self, member: str) -> ShardKeys:
        return keys_for(member, self.shards)

    async def prepare(self) -> None:
        """Load the scripts and create the consumer groups (idempotent)."""
        for script in self._scripts.values():
            await script.load()
        for shard in all_shards(self.shards):
            try:
                await self.client.xgroup_create(shard.stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- ingest ---------------------------------------------------------------------------

    async def accept(self, event: IncomingEvent) -> AcceptResult:
        """Deduplicate, store and enqueue in one Redis command (one round trip)."""
        member = event.member
        keys = self.keys(member)
        note = (
            {"reason_code": event.reason_code, "error": event.last_error}
            if event.last_error
            else {}
        )
        # PERF: numbers go as text. hiredis converts an int at ~0.35 µs, str() costs a
        # fifth of that, and the receive time is used three times.
        received = str(event.received_ms)
        state = event.state.value
        result = await self._scripts["accept"](
            (keys.event(member), keys.history(member), keys.stream, keys.index, keys.dead),
            (
                event.body_sha256,
                received,
                self._retention_text,
                member,
                state,
                history_entry(state, "ingest", **note),
                event.body,
                # The event hash's fields, as name/value pairs.
                "source", event.source,
                "event_id", event.event_id,
                "type", event.event_type,
                "record_key", event.record_key,
                "state", state,
                "attempts", "0",
                "last_error", event.last_error,
                "reason_code", event.reason_code,
                "received_ms", received,
                "updated_ms", received,
                "signed_ts", str(event.signed_ts),
                "body_sha256", event.body_sha256,
                "encrypted", "1" if event.encrypted else "0",
                "content_type", event.content_type,
            ),
        )  # fmt: skip
        return AcceptResult(int(result))

    # -- worker ---------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """New entries for this consumer across all shards (waits up to ``block_ms``)."""
        if not is_cluster(self.client):
            streams = {shard.stream: shard for shard in all_shards(self.shards)}
            # PERF: while there is a backlog, a non-blocking read on the shared pipeline
            # finds entries at a fraction of the cost of a pooled redis-py command. After a
            # read that found nothing, go straight to the blocking read (which must not hold
            # up the pipeline's other commands), so an idle worker pays one round trip.
            if self._backlog_seen:
                response = await self.pipeline.execute(
                    "XREADGROUP", "GROUP", CONSUMER_GROUP, consumer, "COUNT", count,
                    "STREAMS", *streams, *[">"] * len(streams),
                )  # fmt: skip
                if response:
                    return _entries(streams, _stream_items(response))
            response = await self.client.xreadgroup(
                CONSUMER_GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
            found = _entries(streams, response)
            self._backlog_seen = bool(found)
            return found
        # On a cluster the shards live in different slots and one XREADGROUP may not span
        # them: poll the shards in turn without blocking (starting one further each call,
        # so none starves), and pause briefly when all are empty.
        shards = all_shards(self.shards)
        self._next_shard = (self._next_shard + 1) % len(shards)
        entries: list[QueueEntry] = []
        for shard in shards[self._next_shard :] + shards[: self._next_shard]:
            response = await self.client.xreadgroup(
                CONSUMER_GROUP, consumer, {shard.stream: ">"}, count=count - len(entries)
            )
            entries += _entries({shard.stream: shard}, response)
            if len(entries) >= count:
                break
        if not entries:
            await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
        return entries

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[QueueEntry]:
        """Entries another consumer took and did not finish within the visibility timeout."""
        claimed: list[QueueEntry] = []
        for shard in all_shards(self.shards):
            response = await self.client.xautoclaim(
                shard.stream, CONSUMER_GROUP, consumer, min_idle_ms, "0-0", count=count
            )
            for entry_id, fields in response[1]:
                if not fields:  # trimmed away by retention: nothing left to do
                    await self.client.xack(shard.stream, CONSUMER_GROUP, entry_id)
                    continue
                # The delivery count tells a poison event (one that kills its worker every
                # time) from an unlucky one; the worker gives up on it past a limit.
                [pending] = await self.client.xpending_range(
                    shard.stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
                )
                claimed.append(
                    QueueEntry(
                        shard,
                        entry_id.decode(),
                        fields[b"m"].decode(),
                        deliveries=int(pending["times_delivered"]),
                    )
                )
        return claimed

    async def held_by(self, consumer: str) -> list[QueueEntry]:
        """Every entry pending under ``consumer``: its own history (``XREADGROUP … 0``).

        After a Redis failure a worker takes back what it held at once, instead of waiting
        for another consumer to reclaim it after the visibility timeout; this also finds
        entries of a read whose reply was lost with the connection. Each entry's delivery
        count goes up by one, as for any redelivery, and comes back with it, so an entry
        that fails its worker every time is still told apart as poison.
        """
        held: list[QueueEntry] = []
        for shard in all_shards(self.shards):
            after = "0"
            while True:
                response = await self.client.xreadgroup(
                    CONSUMER_GROUP, consumer, {shard.stream: after}, count=HELD_PAGE
                )
                page = [item for _, items in response or [] for item in items]
                if not page:
                    break
                deliveries = {
                    _text(pending["message_id"]): int(pending["times_delivered"])
                    for pending in await self.client.xpending_range(
                        shard.stream, CONSUMER_GROUP, min=page[0][0], max=page[-1][0],
                        count=len(page), consumername=consumer,
                    )
                }  # fmt: skip
                for raw_id, fields in page:
                    if not fields:  # trimmed away by retention: nothing left to do
                        await self.client.xack(shard.stream, CONSUMER_GROUP, raw_id)
                        continue
                    entry_id = _text(raw_id)
                    member = fields[b"m"].decode()
                    held.append(QueueEntry(shard, entry_id, member, deliveries.get(entry_id, 1)))
                if len(page) < HELD_PAGE:
                    break
                after = _text(page[-1][0])
        return held

    async def touch(self, entry: QueueEntry, consumer: str) -> None:
        """Reset the idle time of an entry this consumer keeps holding (the circuit's probe
        event), so no other worker reclaims it; JUSTID leaves its delivery count alone."""
        await self.client.xclaim(
            entry.shard.stream, CONSUMER_GROUP, consumer, 0, [entry.entry_id], justid=True
        )

    async def remove_idle_consumers(self, keep: str, min_idle_ms: int, limit: int) -> list[str]:
        """Delete consumers that hold nothing and were idle ``min_idle_ms`` (at most
        ``limit`` per shard); the names removed."""
        removed: list[str] = []
        for shard in all_shards(self.shards):
            names = await self._scripts["consumers"](
                (shard.stream,), (CONSUMER_GROUP, min_idle_ms, keep, limit)
            )
            removed += [_text(name) for name in names]
        return removed

    async def vanished(self, entry: QueueEntry, *, last_error: str, history: bytes) -> Vanished:
        """Record an entry whose event hash is gone (expired, or a lost event's tombstone)
        and acknowledge it; see ``lua/vanished.lua``."""
        member = entry.member
        keys = entry.shard
        source, _, event_id = member.partition(MEMBER_SEPARATOR)
        result = await self._scripts["vanished"](
            (keys.event(member), keys.history(member), keys.stream, keys.index, keys.dead),
            (
                entry.entry_id, CONSUMER_GROUP, member, now_ms(), self.retention_ms,
                min(LOST_SLACK_MS, self.retention_ms // 10), source, event_id, last_error,
                history,
            ),
        )  # fmt: skip
        return Vanished(_text(result))

    async def load(self, member: str) -> StoredEvent | None:
        """The stored event, or None if unknown or expired."""
        [event] = await self.load_many([member])
        return event

    async def load_many(self, members: Sequence[str]) -> list[StoredEvent | None]:
        """Stored events (None where unknown or expired), one round trip for all.

        PERF: through the auto-pipeline, the commands share one round trip and skip
        redis-py's per-command checkout and packing (~100 µs each)."""
        futures = [self.pipeline.execute("HGETALL", self.keys(m).event(m)) for m in members]
        replies = await asyncio.gather(*futures)
        return [
            StoredEvent.from_hash(member, _as_dict(fields)) if fields else None
            for member, fields in zip(members, replies, strict=True)
        ]

    async def finish(
        self,
        entry: QueueEntry | None,
        member: str,
        state: EventState,
        attempts: int,
        last_error: str = "",
        by: str = "worker",
        reason_code: str = "",
    ) -> None:
        """Record an outcome and acknowledge the entry, atomically."""
        await self.finish_many(
            [EventOutcome(entry, member, state, attempts, last_error, by, reason_code)]
        )

    async def finish_many(self, outcomes: Sequence[EventOutcome]) -> None:
        """Record a batch of outcomes and acknowledge their entries: one script per shard.

        Each shard's part is atomic; should a call fail, its entries stay pending and are
        applied again after the visibility timeout, which the sink's guard makes harmless.
        """
        by_shard: dict[ShardKeys, list[EventOutcome]] = {}
        for outcome in outcomes:
            by_shard.setdefault(self.keys(outcome.member), []).append(outcome)
        now = now_ms()
        calls = []
        for shard, group in by_shard.items():
            for start in range(0, len(group), MAX_FINISH_BATCH):
                keys = [shard.stream, shard.dead]
                args: list[Any] = [CONSUMER_GROUP, now]
                for outcome in group[start : start + MAX_FINISH_BATCH]:
                    member = outcome.member
                    keys += (shard.event(member), shard.history(member))
                    args += (
                        outcome.entry.entry_id if outcome.entry else "",
                        outcome.state.value,
                        outcome.attempts,
                        outcome.last_error,
                        outcome.history_line(),
                        member,
                        outcome.reason_code,
                    )
                calls.append(self._scripts["finish"](keys, args))
        if len(calls) == 1:
            await calls[0]
        else:
            await asyncio.gather(*calls)

    async def schedule_retry(
        self,
        entry: QueueEntry,
        attempts: int,
        last_error: str,
        delay_seconds: float,
        first_failed_ms: int = 0,
    ) -> None:
        keys = entry.shard
        member = entry.member
        now = now_ms()
        await self._scripts["retry"](
            (keys.event(member), keys.history(member), keys.stream, keys.retry),
            (
                entry.entry_id,
                CONSUMER_GROUP,
                attempts,
                last_error,
                now,
                history_entry(
                    "pending",
                    "worker",
                    attempts=attempts,
                    error=last_error,
                    retry_in_s=round(delay_seconds, 3),
                ),
                member,
                now + int(delay_seconds * 1000),
                first_failed_ms or now,
            ),
        )

    async def promote_due(self, limit: int = 500) -> int:
        """Queue every retry that is due, trim the indexes; returns how many were queued."""
        moved = 0
        for shard in all_shards(self.shards):
            moved += int(
                await self._scripts["promote"](
                    (shard.stream, shard.retry, shard.index, shard.dead),
                    (now_ms(), limit, self.retention_ms),
                )
            )
        return moved

    async def requeue(self, member: str, by: str) -> bool:
        """Replay one event through the queue; False if it is not stored (any more)."""
        keys = self.keys(member)
        result = await self._scripts["requeue"](
            (keys.event(member), keys.history(member), keys.stream, keys.dead, keys.retry),
            (member, now_ms(), history_entry("pending", by)),
        )
        return bool(int(result))

    async def release(self, entry: QueueEntry) -> None:
        """Hand an unprocessed entry back to the queue (graceful shutdown)."""
        await self._scripts["release"](
            (entry.shard.stream,), (entry.entry_id, CONSUMER_GROUP, entry.member)
        )

    async def history(self, member: str) -> list[dict[str, Any]]:
        raw = await self.client.lrange(self.keys(member).history(member), 0, -1)
        return [orjson.loads(item) for item in raw]

    async def queue_stats(self) -> dict[str, int]:
        """Backlog (entries not yet acknowledged), pending (being worked), retries, dead."""
        totals = {"backlog": 0, "pending": 0, "retrying": 0, "dead": 0}
        for shard in all_shards(self.shards):
            totals["backlog"] += int(await self.client.xlen(shard.stream))
            try:
                pending = await self.client.xpending(shard.stream, CONSUMER_GROUP)
                totals["pending"] += int(pending["pending"])
            except ResponseError:  # the group does not exist yet
                pass
            totals["retrying"] += int(await self.client.zcard(shard.retry))
            totals["dead"] += int(await self.client.zcard(shard.dead))
        return totals

    async def aclose(self) -> None:
        await self.pipeline.aclose()

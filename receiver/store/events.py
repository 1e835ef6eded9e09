"""The event store on Redis: atomic accept, queue reads, outcomes, retries and replays.

Every write is one Lua script run by SHA (``lua/*.lua``), so each state change and its
queue/index bookkeeping happen together or not at all. Key names come from ``keys``.
Every read the worker and the ops layer make is a method here, answering our own values
(``replies`` turns Redis's answers into them), so nothing else drives the Redis client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

import orjson
from redis.exceptions import ResponseError

from receiver.batching import AutoPipeline, Script
from receiver.keys import (
    CONSUMER_GROUP,
    COUNTER_TTL_MS,
    MEMBER_SEPARATOR,
    MINUTE_MS,
    ShardKeys,
    all_shards,
    keys_for,
)
from receiver.models import EventState
from receiver.redis_client import is_cluster
from receiver.store import replies
from receiver.store.audit import AuditLog
from receiver.store.console import ConsoleData
from receiver.store.credits import CreditSums
from receiver.store.pollgate import PollGate
from receiver.store.rejections import RejectionLog
from receiver.store.values import (
    AcceptResult,
    Attempt,
    EventOutcome,
    IncomingEvent,
    QueueEntry,
    StoredEvent,
    Vanished,
    history_entry,
    now_ms,
)
from receiver.store.watch import WatchList
from receiver.store.workers import WorkerRegistry

# How often an idle worker polls the shards of a Redis Cluster (no cross-slot BLOCK there).
CLUSTER_POLL_MS = 50
# Events one finish script records at most (Lua's unpack and Redis's latency both like it short).
MAX_FINISH_BATCH = 128
# A hash gone with more than this left of its retention was lost, not expired: margin for
# clock skew between this host and Redis, which set the hash's TTL (a tenth of a short
# retention at most).
LOST_SLACK_MS = 60_000
# The Lua scripts under lua/, each loaded once and run by SHA (accept.lua too, below).
SCRIPTS = (
    "finish", "retry", "promote", "requeue", "release", "vanished", "consumers",
    "resolve", "reencrypt",
)  # fmt: skip
# Entries of its own pending list a worker takes back per read after a Redis failure.
HELD_PAGE = 100


# Commands sent together by the reads that take many members (one round trip each).
READ_CHUNK = 500

# Which sorted set of a shard a range read walks.
INDEXES = ("index", "dead", "resolved", "retry")


def load_lua(name: str) -> str:
    return resources.files("receiver").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


class EventStore:
    """All reads and writes of stored events. One instance per process, sharing a client.

    The rejected-delivery log, the worker heartbeats and the audit log are parts of it
    (``rejections``, ``workers``, ``audit``) sharing its pipeline.
    """

    def __init__(
        self,
        client: Any,
        *,
        retention_seconds: int,
        shards: int = 1,
        redis_timeout_seconds: float | None = None,
    ) -> None:
        self.client = client
        # A blocking read must return before the client's socket timeout fails it.
        self._max_block_ms = (
            None if redis_timeout_seconds is None else max(1, int(redis_timeout_seconds * 500))
        )
        self.retention_ms = retention_seconds * 1000
        self._retention_text = str(self.retention_ms)
        self.shards = shards
        self.pipeline = AutoPipeline(client)
        self._next_shard = 0
        self._backlog_seen = False  # the last read found entries: try the cheap read first
        self._scripts = {name: Script(self.pipeline, load_lua(name)) for name in SCRIPTS}
        # The counters' lifetime is a constant of keys.py, written into the script once.
        accept = load_lua("accept").replace("COUNTER_TTL_MS", str(COUNTER_TTL_MS))
        self._scripts["accept"] = Script(self.pipeline, accept)
        self.rejections = RejectionLog(self.pipeline, Script(self.pipeline, load_lua("reject")))
        self.workers = WorkerRegistry(self.pipeline, Script(self.pipeline, load_lua("heartbeat")))
        self.audit = AuditLog(self.pipeline)
        # Reconciliation (issue 16): the watch list and the reconcilers' shared gate.
        self.watch = WatchList(self.pipeline, load_lua, shards=shards)
        self.poll_gate = PollGate(self.pipeline, load_lua)
        self.console = ConsoleData(
            self.pipeline,
            Script(self.pipeline, load_lua("session_key")),
            Script(self.pipeline, load_lua("replay_members")),
        )
        self.credits = CreditSums(self.pipeline, Script(self.pipeline, load_lua("credits")))

    def keys(self, member: str) -> ShardKeys:
        return keys_for(member, self.shards)

    def all_shards(self) -> list[ShardKeys]:
        return all_shards(self.shards)

    async def prepare(self) -> None:
        """Load the scripts and create the consumer groups (idempotent)."""
        for script in self._scripts.values():
            await script.load()
        await self.rejections.prepare()
        await self.workers.prepare()
        await self.watch.prepare()
        await self.poll_gate.prepare()
        await self.console.prepare()
        await self.credits.prepare()
        for shard in all_shards(self.shards):
            try:
                await self.client.xgroup_create(shard.stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- ingest ---------------------------------------------------------------------------

    async def accept(self, event: IncomingEvent) -> AcceptResult:
        """Deduplicate, store and enqueue in one Redis command (one round trip).

        The same call counts the verifying key for ``status`` (per shard and minute)."""
        member = event.member
        keys = self.keys(member)
        note = (
            {"reason_code": event.reason_code, "error": event.last_error}
            if event.last_error
            else {}
        )
        # PERF: numbers go as text. hiredis converts an int at ~0.35 µs, str() costs a
        # fifth of that.
        received = str(event.received_ms)
        state = event.state.value
        result = await self._scripts["accept"](
            (
                keys.event(member), keys.history(member), keys.stream, keys.index, keys.dead,
                keys.record(event.record_key), keys.key_use(event.received_ms),
            ),
            (
                event.body_sha256,
                received,
                self._retention_text,
                member,
                state,
                history_entry(state, event.by, **note),
                event.body,
                # The event hash's other fields, as name/value pairs (accept.lua writes
                # state, attempts, the times and the body hash itself). It reads source,
                # record_key and signing_key by position: keep them where they are.
                "source", event.source,
                "event_id", event.event_id,
                "type", event.event_type,
                "record_key", event.record_key,
                "last_error", event.last_error,
                "reason_code", event.reason_code,
                "signed_ts", str(event.signed_ts),
                "encrypted", "1" if event.encrypted else "0",
                "content_type", event.content_type,
                "signing_key", event.signing_key,
            ),
        )  # fmt: skip
        return AcceptResult(int(result))

    # -- worker ---------------------------------------------------------------------------

    async def read(self, consumer: str, count: int, block_ms: int) -> list[QueueEntry]:
        """New entries for this consumer across all shards (waits up to ``block_ms``)."""
        if self._max_block_ms is not None:
            block_ms = min(block_ms, self._max_block_ms)
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
                    return replies.entries(streams, replies.stream_items(response))
            response = await self.client.xreadgroup(
                CONSUMER_GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block_ms
            )
            found = replies.entries(streams, response)
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
            entries += replies.entries({shard.stream: shard}, response)
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
                    replies.text(pending["message_id"]): int(pending["times_delivered"])
                    for pending in await self.client.xpending_range(
                        shard.stream, CONSUMER_GROUP, min=page[0][0], max=page[-1][0],
                        count=len(page), consumername=consumer,
                    )
                }  # fmt: skip
                for raw_id, fields in page:
                    if not fields:  # trimmed away by retention: nothing left to do
                        await self.client.xack(shard.stream, CONSUMER_GROUP, raw_id)
                        continue
                    entry_id = replies.text(raw_id)
                    member = fields[b"m"].decode()
                    held.append(QueueEntry(shard, entry_id, member, deliveries.get(entry_id, 1)))
                if len(page) < HELD_PAGE:
                    break
                after = replies.text(page[-1][0])
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
            removed += [replies.text(name) for name in names]
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
        return Vanished(replies.text(result))

    async def load(self, member: str) -> StoredEvent | None:
        """The stored event, or None if unknown or expired."""
        [event] = await self.load_many([member])
        return event

    async def load_many(self, members: Sequence[str]) -> list[StoredEvent | None]:
        """Stored events (None where unknown or expired), one round trip for all.

        The one load path: the worker, ``events list`` and the console all read here.
        PERF: through the auto-pipeline, the commands share one round trip and skip
        redis-py's per-command checkout and packing (~100 µs each)."""
        if not members:
            return []
        futures = [self.pipeline.execute("HGETALL", self.keys(m).event(m)) for m in members]
        replies_ = await asyncio.gather(*futures)
        return [
            StoredEvent.from_hash(member, replies.as_dict(fields)) if fields else None
            for member, fields in zip(members, replies_, strict=True)
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
        Each outcome's sink attempt (if any) goes into the history line it records.
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
        attempt: Attempt | None = None,
    ) -> None:
        keys = entry.shard
        member = entry.member
        now = now_ms()
        extra: dict[str, Any] = {"attempt": attempt.to_json()} if attempt is not None else {}
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
                    **extra,
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
                    (shard.stream, shard.retry, shard.index, shard.dead, shard.resolved),
                    (now_ms(), limit, self.retention_ms),
                )
            )
        return moved

    async def release(self, entry: QueueEntry) -> None:
        """Hand an unprocessed entry back to the queue (graceful shutdown)."""
        await self._scripts["release"](
            (entry.shard.stream,), (entry.entry_id, CONSUMER_GROUP, entry.member)
        )

    # -- operator actions -----------------------------------------------------------------

    async def requeue(self, member: str, by: str) -> bool:
        """Replay one event through the queue; False if it is not stored (any more)."""
        keys = self.keys(member)
        result = await self._scripts["requeue"](
            (
                keys.event(member),
                keys.history(member),
                keys.stream,
                keys.dead,
                keys.retry,
                keys.resolved,
            ),
            (member, now_ms(), history_entry("pending", by)),
        )
        return bool(int(result))

    async def resolve(self, member: str, *, reason: str, actor: str) -> int:
        """Close a dead event with a reason (``resolve.lua``): 1 resolved, 0 unknown,
        2 not dead (left alone)."""
        keys = self.keys(member)
        now = now_ms()
        result = await self._scripts["resolve"](
            (keys.event(member), keys.history(member), keys.dead, keys.resolved),
            (
                member,
                now,
                history_entry("resolved", f"resolve:{actor}", reason=reason),
                reason,
                actor,
            ),
        )
        return int(result)

    async def replace_body(self, member: str, stored: bytes, sealed: bytes) -> bool:
        """Swap a body for its re-encrypted form if it still holds ``stored`` (CAS)."""
        result = await self._scripts["reencrypt"](
            (self.keys(member).event(member),), (stored, sealed)
        )
        return bool(int(result))

    # -- reads for operators --------------------------------------------------------------

    async def history(self, member: str) -> list[dict[str, Any]]:
        raw = await self.pipeline.execute("LRANGE", self.keys(member).history(member), 0, -1)
        return [orjson.loads(item) for item in raw or []]

    async def exists_many(self, members: Sequence[str]) -> list[bool]:
        """Whether each member is still stored with a body (a lost event's tombstone has
        none: there is nothing to replay)."""
        found = await self._chunked(
            members, lambda m: self.pipeline.execute("HEXISTS", self.keys(m).event(m), "body")
        )
        return [bool(int(count)) for count in found]

    async def states(self, members: Sequence[str]) -> list[EventState | None]:
        """Each member's state (None where no longer stored), ``READ_CHUNK`` per round trip."""
        found = await self._chunked(
            members, lambda m: self.pipeline.execute("HGET", self.keys(m).event(m), "state")
        )
        return [EventState(replies.text(state)) if state else None for state in found]

    async def reason_codes(self, members: Sequence[str]) -> list[str | None]:
        found = await self._chunked(
            members,
            lambda m: self.pipeline.execute("HGET", self.keys(m).event(m), "reason_code"),
        )
        return [replies.text(code) if code is not None else None for code in found]

    async def _chunked(self, members: Sequence[str], command: Any) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(members), READ_CHUNK):
            chunk = members[start : start + READ_CHUNK]
            results += await asyncio.gather(*(command(member) for member in chunk))
        return results

    def index_keys(self, which: str, record_key: str | None = None) -> list[str]:
        """The sorted set ``which`` (``index``, ``dead``, ``resolved``, ``retry``, or
        ``record`` with ``record_key``) of every shard."""
        if which == "record":
            assert record_key is not None
            return [shard.record(record_key) for shard in all_shards(self.shards)]
        if which not in INDEXES:
            raise ValueError(f"no index {which!r}")
        return [getattr(shard, which) for shard in all_shards(self.shards)]

    async def newest_first(
        self, zset: str, upper: int | str, lower: int | str, offset: int, count: int
    ) -> list[tuple[str, int]]:
        """Members of ``zset`` scored between ``lower`` and ``upper`` (ms), newest first,
        with their scores; ``offset``/``count`` page through them."""
        reply = await self.pipeline.execute(
            "ZREVRANGEBYSCORE", zset, upper, lower, "WITHSCORES", "LIMIT", offset, count
        )
        return replies.scored(reply)

    async def oldest_first(
        self, zset: str, lower: int | str, upper: int | str, count: int
    ) -> list[tuple[str, int]]:
        """The first ``count`` members of ``zset`` scored from ``lower`` to ``upper`` (ms),
        oldest first, with their scores (the credit ledger's catch-up)."""
        reply = await self.pipeline.execute(
            "ZRANGEBYSCORE", zset, lower, upper, "WITHSCORES", "LIMIT", 0, count
        )
        return replies.scored(reply)

    async def last_history(self, members: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each member's newest history line (None where it has none): what the last sink
        attempt answered, without reading whole histories."""
        found = await self._chunked(
            members, lambda m: self.pipeline.execute("LINDEX", self.keys(m).history(m), -1)
        )
        lines: list[dict[str, Any] | None] = []
        for raw in found:
            try:
                line = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                line = None
            lines.append(line if isinstance(line, dict) else None)
        return lines

    async def received_per_minute(self, first_minute: int, minutes: int) -> list[int]:
        """New events stored in each minute from ``first_minute`` (epoch ms // 60,000) on,
        counted in the index (ZCOUNT per minute and shard: no member is read)."""
        counts = await asyncio.gather(
            *(
                self.pipeline.execute(
                    "ZCOUNT", key, minute * MINUTE_MS, f"({(minute + 1) * MINUTE_MS}"
                )
                for minute in range(first_minute, first_minute + minutes)
                for key in self.index_keys("index")
            )
        )
        shards = len(self.index_keys("index"))
        return [
            sum(int(count) for count in counts[i * shards : (i + 1) * shards])
            for i in range(minutes)
        ]

    async def verified_per_minute(self, first_minute: int, minutes: int) -> list[int]:
        """Verified deliveries (new and duplicate) in each minute from ``first_minute``:
        the accept script's per-key counters, summed over keys and shards."""
        wanted = [
            shard.key_use_at(minute)
            for minute in range(first_minute, first_minute + minutes)
            for shard in all_shards(self.shards)
        ]
        found = await asyncio.gather(*(self.pipeline.execute("HVALS", key) for key in wanted))
        return [
            sum(int(count) for reply in found[i * self.shards : (i + 1) * self.shards]
                for count in reply or [])
            for i in range(minutes)
        ]  # fmt: skip

    async def count_between(self, zsets: Iterable[str], lower: int | str, upper: int | str) -> int:
        counts = await asyncio.gather(
            *(self.pipeline.execute("ZCOUNT", zset, lower, upper) for zset in zsets)
        )
        return sum(int(count) for count in counts)

    async def count_stored(self) -> int:
        """How many events the index holds (expired ones until housekeeping trims them)."""
        counts = await asyncio.gather(
            *(self.pipeline.execute("ZCARD", key) for key in self.index_keys("index"))
        )
        return sum(int(count) for count in counts)

    async def newest_by_origin(
        self, poll_source: str, *, page: int = 100, pages: int = 5
    ) -> tuple[int | None, int | None]:
        """When the newest delivered event and the newest polled one (``poll_source``)
        arrived, from at most ``page * pages`` of each shard's newest index members."""
        delivered: list[int] = []
        polled: list[int] = []
        prefix = f"{poll_source}{MEMBER_SEPARATOR}"
        for key in self.index_keys("index"):
            found_delivered = found_polled = False
            for start in range(0, page * pages, page):
                reply = await self.pipeline.execute(
                    "ZREVRANGE", key, start, start + page - 1, "WITHSCORES"
                )
                members = replies.scored(reply)
                for member, score in members:
                    if member.startswith(prefix):
                        if not found_polled:
                            polled.append(score)
                        found_polled = True
                    elif not found_delivered:
                        delivered.append(score)
                        found_delivered = True
                if (found_delivered and found_polled) or len(members) < page:
                    break
        return (max(delivered) if delivered else None, max(polled) if polled else None)

    async def last_received_ms(self) -> int | None:
        """When the newest stored event arrived (accepted or dead on arrival)."""
        newest = await asyncio.gather(
            *(
                self.pipeline.execute("ZREVRANGE", key, 0, 0, "WITHSCORES")
                for key in self.index_keys("index")
            )
        )
        scores = [score for reply in newest for _, score in replies.scored(reply)]
        return max(scores) if scores else None

    async def scan_bodies(
        self, shard: ShardKeys, cursor: int, count: int
    ) -> tuple[int, list[tuple[str, bytes | None, bool]]]:
        """One ZSCAN page of a shard's index with each event's stored body.

        ZSCAN rather than offset pages: events may expire from the index meanwhile."""
        reply = await self.pipeline.execute("ZSCAN", shard.index, cursor, "COUNT", count)
        next_cursor, page = int(reply[0]), replies.scored(reply[1])
        members = [member for member, _ in page]
        bodies = await asyncio.gather(
            *(
                self.pipeline.execute("HMGET", self.keys(m).event(m), "body", "encrypted")
                for m in members
            )
        )
        return next_cursor, [
            (member, body, encrypted == b"1")
            for member, (body, encrypted) in zip(members, bodies, strict=True)
        ]

    async def key_use(self, minutes: int) -> dict[tuple[str, str], tuple[int, int]]:
        """Verifications per (source, key fingerprint) over the last ``minutes``: the count
        and the start (ms) of the newest minute the key verified a delivery in."""
        now_minute = now_ms() // MINUTE_MS
        wanted = [
            (minute, shard.key_use_at(minute))
            for shard in all_shards(self.shards)
            for minute in range(now_minute - minutes + 1, now_minute + 1)
        ]
        found = await asyncio.gather(*(self.pipeline.execute("HGETALL", key) for _, key in wanted))
        usage: dict[tuple[str, str], tuple[int, int]] = {}
        for (minute, _), reply in zip(wanted, found, strict=True):
            for field, count in replies.text_dict(reply).items():
                source, _, fingerprint = field.partition("|")
                total, last = usage.get((source, fingerprint), (0, 0))
                usage[(source, fingerprint)] = (total + int(count), max(last, minute * MINUTE_MS))
        return usage

    async def queue_stats(self) -> dict[str, int]:
        """Backlog (entries not yet acknowledged), pending (being worked), retries, dead,
        resolved, and the receive time (ms) of the oldest unacknowledged entry (0: none)."""
        totals = {
            "backlog": 0, "pending": 0, "retrying": 0, "dead": 0, "resolved": 0, "oldest_ms": 0,
        }  # fmt: skip
        for shard in all_shards(self.shards):
            backlog, retrying, dead, resolved, oldest = await asyncio.gather(
                self.pipeline.execute("XLEN", shard.stream),
                self.pipeline.execute("ZCARD", shard.retry),
                self.pipeline.execute("ZCARD", shard.dead),
                self.pipeline.execute("ZCARD", shard.resolved),
                self.pipeline.execute("XRANGE", shard.stream, "-", "+", "COUNT", 1),
            )
            totals["backlog"] += int(backlog)
            totals["retrying"] += int(retrying)
            totals["dead"] += int(dead)
            totals["resolved"] += int(resolved)
            for entry_id, _ in replies.stream_entries(oldest):
                # Entry ids start with the time they were added (ms).
                added = int(entry_id.partition("-")[0])
                totals["oldest_ms"] = min(totals["oldest_ms"] or added, added)
            try:
                pending = await self.pipeline.execute("XPENDING", shard.stream, CONSUMER_GROUP)
                totals["pending"] += replies.pending_count(pending)
            except ResponseError:  # the group does not exist yet
                pass
        return totals

    async def aclose(self) -> None:
        await self.pipeline.aclose()

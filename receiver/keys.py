"""Every Redis key name, stream name and group name, in one place.

Keys are hash-tagged by queue shard (``{q<n>}``): an event's hash, its history, its index
entries and the stream it is queued on share one Redis Cluster slot, so the accept script
can touch them all atomically. With one shard (the default) everything is in one slot;
raise ``RECEIVER_QUEUE_SHARDS`` on a Redis Cluster to spread the load.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

PREFIX = "rcv"
CONSUMER_GROUP = "workers"
AUDIT_STREAM = f"{PREFIX}:audit"
# The audit log is small and read rarely; a month of replays fits easily.
AUDIT_MAX_ENTRIES = 100_000
MEMBER_SEPARATOR = "|"
# The console's own keys share one hash tag: they are few, small and never touched by ingest.
CONSOLE_TAG = f"{PREFIX}:{{console}}"
# The random key that signs console session cookies, so every replica accepts each other's
# sessions. Deleting it signs everyone out (replicas pick the new one up within the TTL).
CONSOLE_SESSION_KEY = f"{CONSOLE_TAG}:session-key"
CONSOLE_SESSION_KEY_CACHE_SECONDS = 60
# The members of a bulk replay started from the console, so its page can follow them.
CONSOLE_REPLAY_TTL_SECONDS = 3600


def console_replay(audit_id: str) -> str:
    return f"{CONSOLE_TAG}:replay:{audit_id}"


# Credit aggregates (receiver/ops/credits.py), one hash tag so a catch-up commits in one
# MULTI: per shard, the last index entry counted; per day, each task's latest state and the
# per-model sums. Day keys expire a day after the retention window has passed them.
CREDITS_TAG = f"{PREFIX}:{{credits}}"
CREDITS_DAYS = f"{CREDITS_TAG}:days"
CREDITS_EXTRA_TTL_SECONDS = 86400


def credits_cursor(shard: int) -> str:
    return f"{CREDITS_TAG}:cursor:{shard}"


def credits_tasks(day: str) -> str:
    return f"{CREDITS_TAG}:tasks:{day}"


def credits_day(day: str) -> str:
    return f"{CREDITS_TAG}:day:{day}"


# Per-minute counters (key use, rejections) are kept this long: ``status`` reads the last
# hour, the rest is slack for clocks that disagree and for a slow reader.
MINUTE_MS = 60_000
COUNTER_TTL_MS = 2 * 3600 * 1000

# Rejected deliveries (issue 14, item 3): one capped stream for all shards, bounded in
# count and in age, and per-minute counts by code that include the sampled-out ones. Both
# share one hash tag, so the script that writes a batch touches one cluster slot.
REJECTED_TAG = f"{PREFIX}:{{rejected}}"
REJECTED_LOG = f"{REJECTED_TAG}:log"
REJECTED_MAX_ENTRIES = 10_000
REJECTED_MAX_AGE_MS = 7 * 86400 * 1000
# Each serving process records the first REJECTIONS_BURST, then REJECTIONS_PER_SECOND;
# a flood beyond that is only counted (receiver_rejected_deliveries_sampled_out_total).
REJECTIONS_BURST = 100
REJECTIONS_PER_SECOND = 20.0
REJECTIONS_FLUSH_SECONDS = 0.25


def rejected_counts(minute: int) -> str:
    """Rejections by code in one minute (``minute`` = epoch ms // MINUTE_MS)."""
    return f"{REJECTED_TAG}:counts:{minute}"


# Worker heartbeats (issue 14, item 6): a zset of consumers by last beat, and one expiring
# hash per consumer with what ``status`` shows. A worker beats every HEARTBEAT_SECONDS and
# counts as live while its last beat is younger than WORKER_STALE_SECONDS; a killed one
# stays visible (stale) for WORKER_FORGET_MS, then disappears.
WORKERS_TAG = f"{PREFIX}:{{workers}}"
WORKERS_INDEX = f"{WORKERS_TAG}:index"
HEARTBEAT_SECONDS = 2.0
WORKER_STALE_SECONDS = 10.0
WORKER_FORGET_MS = 3600 * 1000


def worker_info(consumer: str) -> str:
    return f"{WORKERS_TAG}:w:{consumer}"


# Readiness writes this small key (in each shard's slot, so every node that holds a queue
# is asked) to learn that Redis accepts writes; it expires by itself.
PROBE_TTL_MS = 10_000


def member_of(source: str, event_id: str) -> str:
    """The queue/index member naming one event; source names cannot contain ``|``."""
    return f"{source}{MEMBER_SEPARATOR}{event_id}"


def source_of(member: str) -> str:
    return member.partition(MEMBER_SEPARATOR)[0]


def shard_of(member: str, shards: int) -> int:
    return zlib.crc32(member.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one queue shard. PERF: the names are formatted once per shard (the
    shards are cached below), not on every event that touches them."""

    shard: int
    tag: str = field(init=False)
    stream: str = field(init=False)
    # Sorted set of every stored event member, scored by receive time (ms).
    index: str = field(init=False)
    # Sorted set of dead events, scored by receive time (ms).
    dead: str = field(init=False)
    # Sorted set of events waiting for a retry, scored by due time (ms).
    retry: str = field(init=False)
    # Sorted set of resolved events (dead ones an operator closed), scored by receive time.
    resolved: str = field(init=False)
    # Hash of the last verification time (ms) per ``<source>|<key fingerprint>``.
    key_last_use: str = field(init=False)
    # The key-use hash of the current minute, as (minute, name): see ``key_use``.
    # Written by readiness probes (``rcv:{q0}:probe``), expires after PROBE_TTL_MS.
    probe: str = field(init=False)
    _minute: tuple[int, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tag = f"{PREFIX}:{{q{self.shard}}}"
        for name, value in (
            ("tag", tag),
            ("stream", f"{tag}:stream"),
            ("index", f"{tag}:index"),
            ("dead", f"{tag}:dead"),
            ("retry", f"{tag}:retry"),
            ("resolved", f"{tag}:resolved"),
            ("key_last_use", f"{tag}:keyuse:last"),
            ("probe", f"{tag}:probe"),
        ):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_minute", (-1, ""))

    def event(self, member: str) -> str:
        return f"{self.tag}:evt:{member}"

    def history(self, member: str) -> str:
        return f"{self.tag}:hist:{member}"

    def record(self, record_key: str) -> str:
        """Sorted set of this shard's events for one record key, scored by receive time.

        Kept by the accept script; ``records show`` and ``events list --record`` read it
        instead of walking the whole index. It expires with the newest of its events."""
        return f"{self.tag}:rec:{record_key}"

    def key_use(self, now_ms: int) -> str:
        """Hash of verifications per ``<source>|<key fingerprint>`` in the minute of ``now_ms``.

        PERF: on the ingest path; the name is formatted once per minute, not per event."""
        minute = now_ms // MINUTE_MS
        cached_minute, name = self._minute
        if cached_minute != minute:
            name = self.key_use_at(minute)
            object.__setattr__(self, "_minute", (minute, name))
        return name

    def key_use_at(self, minute: int) -> str:
        return f"{self.tag}:keyuse:{minute}"


@functools.cache
def shard_keys(shard: int) -> ShardKeys:
    return ShardKeys(shard)


def keys_for(member: str, shards: int) -> ShardKeys:
    return shard_keys(shard_of(member, shards))


def all_shards(shards: int) -> list[ShardKeys]:
    return [shard_keys(n) for n in range(shards)]


# -- reconciliation (issue 16) -----------------------------------------------------------
# The watch list is sharded by TASK id (the record key), not by event member, so every
# event of one task, whatever its source, updates the same entry in one cluster slot. Its
# shard count is the queue's (``RECEIVER_QUEUE_SHARDS``); the tag is ``{w<n>}``.


def watch_shard_of(task_id: str, shards: int) -> int:
    return zlib.crc32(task_id.encode()) % shards if shards > 1 else 0


@dataclass(frozen=True, slots=True)
class WatchKeys:
    """The keys of one watch shard; every watch script touches only these three."""

    shard: int
    tag: str = field(init=False)
    # Sorted set task id -> when it is next due for a status check (ms). While a
    # reconciler holds a task, its score is the end of that lease.
    due: str = field(init=False)
    # Sorted set task id -> when it was first watched (ms): the age the reconciler gives
    # up at (RECEIVER_RECONCILE_MAX_AGE) and housekeeping trims at (RECEIVER_RETENTION).
    since: str = field(init=False)
    # Hash task id -> "<checks> <errors> <lease_until_ms> <wanted_due_ms> <holder>"
    # (lua/watch.lua explains each).
    meta: str = field(init=False)

    def __post_init__(self) -> None:
        tag = f"{PREFIX}:{{w{self.shard}}}"
        for name, value in (
            ("tag", tag),
            ("due", f"{tag}:watch"),
            ("since", f"{tag}:watch:since"),
            ("meta", f"{tag}:watch:meta"),
        ):
            object.__setattr__(self, name, value)

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.due, self.since, self.meta)


@functools.cache
def watch_keys(shard: int) -> WatchKeys:
    return WatchKeys(shard)


def watch_keys_for(task_id: str, shards: int) -> WatchKeys:
    return watch_keys(watch_shard_of(task_id, shards))


def all_watch_shards(shards: int) -> list[WatchKeys]:
    return [watch_keys(n) for n in range(shards)]


# The reconcilers' shared state, one slot: the global rate limit (the next free request
# slot, ms on Redis's clock), the pause after a 429 or a refused key, and the "key
# refused" flag.
RECONCILE_TAG = f"{PREFIX}:{{reconcile}}"
RECONCILE_NEXT_SLOT = f"{RECONCILE_TAG}:next"
RECONCILE_PAUSE = f"{RECONCILE_TAG}:pause"
RECONCILE_REFUSED = f"{RECONCILE_TAG}:refused"
# A refused key is remembered this long without a new answer (status shows it); any
# accepted answer clears it at once.
RECONCILE_REFUSED_TTL_MS = 86400 * 1000
# A reconciler holds the tasks it polls for this long, renewing the lease while the
# request runs; one killed mid-batch leaves its tasks due again once it runs out.
WATCH_LEASE_MS = 5_000

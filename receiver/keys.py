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

    def __post_init__(self) -> None:
        tag = f"{PREFIX}:{{q{self.shard}}}"
        for name, value in (
            ("tag", tag),
            ("stream", f"{tag}:stream"),
            ("index", f"{tag}:index"),
            ("dead", f"{tag}:dead"),
            ("retry", f"{tag}:retry"),
        ):
            object.__setattr__(self, name, value)

    def event(self, member: str) -> str:
        return f"{self.tag}:evt:{member}"

    def history(self, member: str) -> str:
        return f"{self.tag}:hist:{member}"


@functools.cache
def shard_keys(shard: int) -> ShardKeys:
    return ShardKeys(shard)


def keys_for(member: str, shards: int) -> ShardKeys:
    return shard_keys(shard_of(member, shards))


def all_shards(shards: int) -> list[ShardKeys]:
    return [shard_keys(n) for n in range(shards)]

"""What "stored before 2xx" means on the Redis we were given, read with ``CONFIG GET``.

A 2xx is sent once Redis has replied to the accept script. Whether that event survives a
crash depends on Redis's settings, not on us (README: Redis durability):

- ``appendfsync always``: Redis writes and fsyncs the append-only file before it replies;
  a crash of Redis or of the machine loses nothing acknowledged.
- ``everysec``: Redis writes before it replies, but while a background fsync is slow it
  defers the write (up to 2 s) and still replies, so a crash of Redis alone on a slow disk
  can lose acknowledged events (seen: 16 of 2,000), and a machine crash up to ~2 s of them.
- ``no``: written before the reply, flushed when the OS likes; a machine crash loses the
  OS's flush window (~30 s on Linux).
- an evicting ``maxmemory-policy`` deletes stored events and dedup keys without an error.

``config check`` prints these as warnings (``--strict`` fails on them); ``serve`` and
``worker`` log them at start-up and refuse an evicting Redis unless
``RECEIVER_ALLOW_EVICTING_REDIS`` is true (PITFALLS: Recovery).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from receiver.errors import ConfigError
from receiver.logs import get_logger
from receiver.settings import Settings

log = get_logger("receiver.durability")
# Worst first: the policy a cluster is judged by is that of its least durable node.
_FSYNC_RISK = ("no", "everysec", "always")


@dataclass(frozen=True, slots=True)
class RedisDurability:
    """The settings durability depends on; None where ``CONFIG GET`` did not say."""

    appendonly: str | None
    appendfsync: str | None
    maxmemory_policy: str | None

    @property
    def readable(self) -> bool:
        return any(value is not None for value in self._values())

    @property
    def evicting(self) -> bool:
        return self.maxmemory_policy is not None and self.maxmemory_policy != "noeviction"

    def _values(self) -> tuple[str | None, ...]:
        return (self.appendonly, self.appendfsync, self.maxmemory_policy)

    def warnings(self) -> list[str]:
        """One sentence per risk to acknowledged events, for operators."""
        if not self.readable:
            return [
                "redis: CONFIG GET is not allowed (a managed Redis?); check by hand that "
                "appendonly is yes, appendfsync always and maxmemory-policy noeviction"
            ]
        found: list[str] = []
        if self.evicting:
            found.append(
                f"redis maxmemory-policy is {self.maxmemory_policy}, not noeviction: under "
                "memory pressure Redis evicts stored events and dedup keys without an error "
                "(acknowledged events lost, duplicates applied again)"
            )
        if self.appendonly == "no":
            found.append(
                "redis appendonly is no: a Redis restart loses events acknowledged since the "
                "last snapshot, and their dedup keys with them"
            )
        elif self.appendfsync == "everysec":
            found.append(
                "redis appendfsync is everysec: while a background fsync is slow Redis defers "
                "the AOF write and still replies, so a crash of Redis alone can lose "
                "acknowledged events, and a machine crash up to ~2 s of them; use always"
            )
        elif self.appendfsync == "no":
            found.append(
                "redis appendfsync is no: the OS flushes the AOF when it chooses, so a machine "
                "crash loses the events acknowledged in that window (~30 s); use always"
            )
        return found


def _values(reply: Any, name: str) -> list[str]:
    """The values of ``name`` in a CONFIG GET reply: one server's, or each cluster node's."""
    if not isinstance(reply, dict):
        return []
    if name in reply or name.encode() in reply:
        value = reply.get(name, reply.get(name.encode()))
        return [value.decode() if isinstance(value, bytes) else str(value)]
    found: list[str] = []
    for per_node in reply.values():  # a cluster client answers {node: {name: value}}
        found += _values(per_node, name)
    return found


def _worst(values: Iterable[str], order: tuple[str, ...]) -> str | None:
    listed = list(values)
    for value in order:
        if value in listed:
            return value
    return listed[0] if listed else None


async def read_durability(client: Any) -> RedisDurability:
    """Ask Redis (every node of a cluster); a refused CONFIG leaves the values None.

    Connection failures propagate: the caller decides whether that stops it.
    """

    async def values(name: str) -> list[str]:
        try:
            return _values(await client.config_get(name), name)
        except ResponseError:  # CONFIG disabled, renamed or denied by an ACL
            return []

    policies = await values("maxmemory-policy")
    appendonly = await values("appendonly")
    appendfsync = await values("appendfsync")
    evicting = [policy for policy in policies if policy != "noeviction"]
    return RedisDurability(
        appendonly=_worst(appendonly, ("no", "yes")),
        appendfsync=_worst(appendfsync, _FSYNC_RISK),
        maxmemory_policy=evicting[0] if evicting else _worst(policies, ("noeviction",)),
    )


def enforce_at_start(durability: RedisDurability, settings: Settings) -> None:
    """Log each risk once; refuse an evicting Redis unless the operator allowed it."""
    if not durability.readable:
        log.warning("redis_config_unreadable", detail=durability.warnings()[0])
        return
    if durability.evicting and not settings.allow_evicting_redis:
        raise ConfigError(
            f"RECEIVER_ALLOW_EVICTING_REDIS: Redis maxmemory-policy is "
            f"{durability.maxmemory_policy}, which evicts stored events and dedup keys; set "
            "it to noeviction, or RECEIVER_ALLOW_EVICTING_REDIS=true to start anyway"
        )
    for warning in durability.warnings():
        if durability.evicting and warning.startswith("redis maxmemory-policy"):
            log.critical(
                "redis_evicting_allowed",
                policy=durability.maxmemory_policy,
                detail="RECEIVER_ALLOW_EVICTING_REDIS=true: " + warning,
            )
        else:
            log.warning("redis_durability", detail=warning)

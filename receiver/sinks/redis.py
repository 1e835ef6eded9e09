"""Redis sink: one hash per record at ``generation:{record_key}`` (SPEC §5).

The braces are a hash tag, so a record's key stays in one Redis Cluster slot. The ordering
guard runs inside one Lua script: compare and write are a single atomic step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from receiver.errors import ConfigError, PermanentSinkError, TransientSinkError
from receiver.models import TERMINAL_RANK, ApplyOutcome, Record, SinkResult
from receiver.redaction import mask_url
from receiver.sinks.rows import HELD_COLUMNS, flat_row, record_json

if TYPE_CHECKING:
    from receiver.settings import Settings

KEY_PREFIX = "generation:"

# KEYS[1] the hash; ARGV: status_rank, source_updated_at, last_event_id, then field/value
# pairs. Times compare as strings: format_time is fixed width UTC, so text order is time
# order. A missing field (None) is absent from the hash, hence DEL before HSET.
GUARD_SCRIPT = f"""
local rank = tonumber(ARGV[1])
local updated_at = ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'status_rank', 'source_updated_at', 'last_event_id')
if stored[1] then
  local stored_rank = tonumber(stored[1])
  local newer
  if stored_rank == {TERMINAL_RANK} and rank < {TERMINAL_RANK} then
    newer = false
  elseif updated_at ~= stored[2] then
    newer = updated_at > stored[2]
  else
    newer = rank > stored_rank
  end
  if not newer then
    if stored[3] == ARGV[3] then
      return 'applied'
    end
    -- What the record held, for the event's attempt history.
    local held = redis.call('HMGET', KEYS[1], 'status', 'source_updated_at', 'last_event_id')
    return {{'stale', held[1], held[2], held[3]}}
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return 'applied'
"""

# Redis refuses writes while out of memory or loading; both pass without our help.
_TRANSIENT_REPLIES = ("OOM", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def hash_key(record_key: str) -> str:
    """The hash that holds one record."""
    return KEY_PREFIX + "{" + record_key + "}"


def hash_fields(record: Record) -> dict[str, str]:
    """The record as hash fields; None values are left out, credits keep full precision."""
    values = flat_row(record)
    return {
        name: repr(v) if isinstance(v, float) else str(v)
        for name, v in values.items()
        if v is not None
    }


class RedisSink:
    """Writes records as hashes, guarded by one server-side script."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._label = mask_url(url)
        timeout = settings.sink_timeout_seconds
        try:
            self._client: aioredis.Redis = aioredis.Redis.from_url(
                url,
                decode_responses=True,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # The worker retries with backoff; a second layer here would only hide outages.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError:
            raise ConfigError(f"RECEIVER_SINK: not a usable Redis URL: {self._label!r}") from None
        self._guard = self._client.register_script(GUARD_SCRIPT)

    async def apply(self, record: Record) -> ApplyOutcome | SinkResult:
        fields = hash_fields(record)
        args: list[str] = [fields["status_rank"], fields["source_updated_at"], record.last_event_id]
        for name, value in fields.items():
            args += (name, value)
        try:
            outcome = await self._guard(keys=[hash_key(record.record_key)], args=args)
        except RedisError as exc:
            raise self._sink_error(exc) from exc
        if isinstance(outcome, list):
            held = dict(zip(HELD_COLUMNS, outcome[1:], strict=True))
            return SinkResult(ApplyOutcome.STALE, held=held)
        return ApplyOutcome(outcome)

    async def read(self, record_key: str) -> dict[str, Any] | None:
        try:
            # decode_responses=True: names and values come back as text.
            fields = await self._client.hgetall(hash_key(record_key))
        except RedisError as exc:
            raise self._sink_error(exc) from exc
        return record_json({str(k): v for k, v in fields.items()}) if fields else None

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except RedisError as exc:
            raise self._sink_error(exc) from exc

    async def setup(self) -> None:
        """Nothing to create: hashes appear on first write."""

    async def aclose(self) -> None:
        await self._client.aclose()

    def _sink_error(self, exc: RedisError) -> TransientSinkError | PermanentSinkError:
        # redis-py messages name host and port, never the password.
        message = f"redis sink {self._label}: {type(exc).__name__}: {exc}"
        transient = isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError) or (
            isinstance(exc, ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)
        )
        return TransientSinkError(message) if transient else PermanentSinkError(message)

"""RedisSink on a real Redis: the shared contract, the hash layout and outages."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from receiver.errors import ConfigError, TransientSinkError
from receiver.models import ApplyOutcome
from receiver.sinks.redis import GUARD_SCRIPT, RedisSink, hash_key
from tests.conftest import free_port
from tests.sink_contract import (
    ISO_TIME,
    Backend,
    SinkContract,
    full_record,
    make_record,
    new_key,
    sink_settings,
)


def read_hash(client: redis.Redis, key: str) -> dict[str, Any] | None:
    """The stored hash as Record.to_json() would give it."""
    raw = client.hgetall(hash_key(key))
    if not raw:
        return None
    fields = {name.decode(): value.decode() for name, value in raw.items()}

    def number(name: str) -> float | None:
        return float(fields[name]) if name in fields else None

    return {
        "record_key": fields["record_key"],
        "client_request_id": fields.get("client_request_id"),
        "status": fields["status"],
        "model": fields.get("model"),
        "primary_url": fields.get("primary_url"),
        "result_urls": orjson.loads(fields["result_urls"]),
        "error_code": fields.get("error_code"),
        "error_message": fields.get("error_message"),
        "reserved_credits": number("reserved_credits"),
        "final_credits": number("final_credits"),
        "source_updated_at": fields["source_updated_at"],
        "last_event_id": fields["last_event_id"],
        "applied_at": fields["applied_at"],
    }


@pytest.fixture
async def backend(
    clean_redis: redis.Redis, redis_url: str, tmp_path: Path
) -> AsyncIterator[Backend]:
    settings = sink_settings(tmp_path, redis_url)

    async def read(key: str) -> dict[str, Any] | None:
        return read_hash(clean_redis, key)

    backend = Backend(lambda: RedisSink(redis_url, settings), read)
    yield backend
    await backend.aclose()


class TestContract(SinkContract):
    """The shared sink contract on a real Redis, with several clients at once."""


class TestStorage:
    async def test_key_is_hash_tagged(self, backend: Backend, clean_redis: redis.Redis) -> None:
        """The record lives at generation:{record_key}, one cluster slot per record."""
        record = make_record("task_abc", "queued")
        await backend.sink.apply(record)
        assert clean_redis.keys("*") == [b"generation:{task_abc}"]
        assert clean_redis.type("generation:{task_abc}") == b"hash"

    async def test_field_values(self, backend: Backend, clean_redis: redis.Redis) -> None:
        """Credits are decimal numbers, times ISO 8601, URLs a JSON array, None left out."""
        record = full_record(new_key())
        await backend.sink.apply(record)
        raw = {
            k.decode(): v.decode()
            for k, v in clean_redis.hgetall(hash_key(record.record_key)).items()
        }
        assert raw["reserved_credits"] == "1.5"
        assert raw["final_credits"] == "0.0"
        assert raw["status_rank"] == "2"
        assert re.match(ISO_TIME, raw["source_updated_at"])
        assert re.match(ISO_TIME, raw["applied_at"])
        assert orjson.loads(raw["result_urls"]) == list(record.result_urls)
        assert "error_code" not in raw

    async def test_guard_is_one_script(self, backend: Backend, clean_redis: redis.Redis) -> None:
        """The guard is one script, loaded into the server's cache for EVALSHA."""
        clean_redis.script_flush()
        await backend.sink.apply(make_record(new_key(), "queued"))
        sha = hashlib.sha1(GUARD_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
        assert clean_redis.script_exists(sha) == [True]


class TestFailures:
    async def test_connection_refused_is_transient(self, tmp_path: Path) -> None:
        """A Redis that does not answer is a transient error; ping says so too."""
        url = f"redis://:hunter2-pass@127.0.0.1:{free_port()}/0"
        sink = RedisSink(url, sink_settings(tmp_path, url, RECEIVER_SINK_TIMEOUT="500ms"))
        with pytest.raises(TransientSinkError) as caught:
            await sink.apply(make_record(new_key(), "queued"))
        assert "hunter2-pass" not in str(caught.value)
        with pytest.raises(TransientSinkError):
            await sink.ping()
        await sink.aclose()

    async def test_reapply_after_flush_stores_again(
        self, backend: Backend, clean_redis: redis.Redis
    ) -> None:
        """A flushed script cache is reloaded transparently (EVALSHA falls back to load)."""
        record = make_record(new_key(), "queued")
        await backend.sink.apply(record)
        clean_redis.script_flush()
        newer = make_record(record.record_key, "processing", 5)
        assert await backend.sink.apply(newer) is ApplyOutcome.APPLIED
        assert await backend.read(record.record_key) == newer.to_json()

    def test_bad_url_is_config_error(self, tmp_path: Path) -> None:
        """A URL redis-py cannot parse stops start-up with a configuration error."""
        with pytest.raises(ConfigError, match="RECEIVER_SINK"):
            RedisSink("redis://127.0.0.1:notaport/0", sink_settings(tmp_path, "redis://x/0"))

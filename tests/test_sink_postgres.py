"""PostgresSink on a real server: the shared contract, column types, errors, setup.

Each test gets its own schema (through ``options=-csearch_path=…`` in the DSN), so tests
never see each other's ``generations`` table and can run next to other suites.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from receiver.errors import PermanentSinkError, TransientSinkError
from receiver.models import ApplyOutcome, format_time
from receiver.sinks.base import apply_all, find_factory
from receiver.sinks.postgres import PostgresSink
from tests.conftest import free_port
from tests.sink_contract import (
    Backend,
    SinkContract,
    full_record,
    make_record,
    new_key,
    sink_settings,
)


def with_search_path(dsn: str, schema: str) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def schema_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN whose unqualified tables live in a fresh schema, dropped afterwards."""
    schema = f"sink_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    yield with_search_path(postgres_dsn, schema)
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


def read_row(dsn: str, key: str) -> dict[str, Any] | None:
    """The stored row as Record.to_json() would give it."""
    with (
        psycopg.connect(dsn) as connection,
        connection.cursor(row_factory=psycopg.rows.dict_row) as cursor,
    ):
        cursor.execute("SELECT * FROM generations WHERE record_key = %s", (key,))
        row = cursor.fetchone()
    if row is None:
        return None
    del row["status_rank"]
    row["source_updated_at"] = format_time(row["source_updated_at"])
    row["applied_at"] = format_time(row["applied_at"])
    return row


@pytest.fixture
async def backend(schema_dsn: str, tmp_path: Path) -> AsyncIterator[Backend]:
    settings = sink_settings(tmp_path, schema_dsn)

    async def read(key: str) -> dict[str, Any] | None:
        return read_row(schema_dsn, key)

    backend = Backend(lambda: PostgresSink(schema_dsn, settings), read)
    yield backend
    await backend.aclose()


class TestContract(SinkContract):
    """The shared sink contract on PostgreSQL, with several pools at once."""


class TestStorage:
    async def test_column_types(self, backend: Backend, schema_dsn: str) -> None:
        """Credits are double precision, times timestamptz, URLs jsonb."""
        await backend.sink.setup()
        with psycopg.connect(schema_dsn) as connection:
            rows = connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'generations' AND table_schema = current_schema()"
            ).fetchall()
        types = dict(rows)
        assert set(types) == {*full_record("x").to_json(), "status_rank"}
        assert types["reserved_credits"] == types["final_credits"] == "double precision"
        assert types["source_updated_at"] == types["applied_at"] == "timestamp with time zone"
        assert types["result_urls"] == "jsonb"
        assert types["status_rank"] == "integer"

    async def test_created_on_first_use(self, backend: Backend, schema_dsn: str) -> None:
        """Without setup(), the first apply creates the table."""
        record = make_record(new_key(), "queued")
        assert await backend.sink.apply(record) is ApplyOutcome.APPLIED
        assert read_row(schema_dsn, record.record_key) == record.to_json()

    async def test_distinct_records_are_written_by_one_statement(
        self, backend: Backend, schema_dsn: str
    ) -> None:
        """A batch of records with different keys, each changing its row, is one INSERT;
        every field reads back as written (values go as text, the server types them)."""
        await backend.sink.setup()
        with psycopg.connect(schema_dsn, autocommit=True) as connection:
            connection.execute("CREATE TABLE statements (at timestamptz)")
            connection.execute(
                "CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN INSERT INTO statements VALUES (now()); RETURN NULL; END $$"
            )
            connection.execute(
                "CREATE TRIGGER count_statement AFTER INSERT ON generations"
                " FOR EACH STATEMENT EXECUTE FUNCTION count_statement()"
            )
        records = [full_record(new_key()) for _ in range(20)]
        records.append(make_record(new_key(), "queued"))  # NULLs and defaults too
        outcomes = await apply_all(backend.sink, records)
        with psycopg.connect(schema_dsn) as connection:
            [(statements,)] = connection.execute("SELECT count(*) FROM statements").fetchall()
        assert [ApplyOutcome.APPLIED] * 21 == outcomes
        assert [record.to_json() for record in records] == [
            read_row(schema_dsn, record.record_key) for record in records
        ]
        assert 1 == statements

    async def test_setup_concurrently(self, backend: Backend) -> None:
        """Workers starting together do not race on CREATE TABLE."""
        await asyncio.gather(*(sink.setup() for sink in backend.workers()))

    async def test_found_by_scheme(self, schema_dsn: str, tmp_path: Path) -> None:
        """Both postgresql:// and postgres:// URLs map to this sink."""
        assert find_factory("postgresql") is PostgresSink
        assert find_factory("postgres") is PostgresSink
        url = "postgres://" + schema_dsn.removeprefix("postgresql://")
        sink = PostgresSink(url, sink_settings(tmp_path, url))
        assert await sink.apply(make_record(new_key(), "queued")) is ApplyOutcome.APPLIED
        await sink.aclose()


class TestFailures:
    async def test_outage_is_transient_without_password(self, tmp_path: Path) -> None:
        """A server that does not answer is transient, and the message hides the password."""
        url = f"postgresql://postgres:hunter2-pass@127.0.0.1:{free_port()}/test"
        sink = PostgresSink(url, sink_settings(tmp_path, url, RECEIVER_SINK_TIMEOUT="500ms"))
        with pytest.raises(TransientSinkError) as caught:
            await sink.apply(make_record(new_key(), "queued"))
        assert "hunter2-pass" not in str(caught.value)
        with pytest.raises(TransientSinkError):
            await sink.ping()
        await sink.aclose()

    async def test_bad_password_is_transient_without_password(
        self, postgres_dsn: str, tmp_path: Path
    ) -> None:
        """A refused login is reported without echoing the DSN password."""
        parts = urlsplit(postgres_dsn)  # TCP or unix-socket DSN alike
        host = parts.netloc.rsplit("@", 1)[-1]
        url = urlunsplit(parts._replace(netloc=f"no_such_user:hunter2-pass@{host}"))
        sink = PostgresSink(url, sink_settings(tmp_path, url, RECEIVER_SINK_TIMEOUT="1s"))
        with pytest.raises(TransientSinkError) as caught:
            await sink.ping()
        assert "hunter2-pass" not in str(caught.value)
        await sink.aclose()

    async def test_data_error_is_permanent(self, backend: Backend) -> None:
        """A value PostgreSQL cannot store (a NUL byte in text) is a permanent error."""
        record = make_record(new_key(), "failed", error_message="bad\x00byte")
        with pytest.raises(PermanentSinkError):
            await backend.sink.apply(record)
        # The pool is still usable after the failed transaction.
        assert await backend.sink.apply(make_record(new_key(), "queued")) is ApplyOutcome.APPLIED

    async def test_bad_record_fails_alone_in_a_group(self, backend: Backend) -> None:
        """Records applied together share a transaction, yet a bad one fails on its own."""
        good = [make_record(new_key(), "succeeded") for _ in range(5)]
        bad = make_record(new_key(), "failed", error_message="bad\x00byte")
        outcomes = await asyncio.gather(
            *(backend.sink.apply(record) for record in [*good[:2], bad, *good[2:]]),
            return_exceptions=True,
        )
        assert [ApplyOutcome.APPLIED] * 2 == outcomes[:2]
        assert isinstance(outcomes[2], PermanentSinkError)
        assert [ApplyOutcome.APPLIED] * 3 == outcomes[3:]
        for record in good:
            stored = await backend.read(record.record_key)
            assert stored is not None
            assert record.last_event_id == stored["last_event_id"]

"""PostgreSQL sink: one row per record in table ``generations`` (SPEC §5, §9).

psycopg 3 async with a bounded pool that opens on first use, so building the sink does no
I/O. The table is created on first use and by ``setup()`` (``receiver sink init``).

Group commit, as in the SQLite sink: records applied while a group is being written wait
and go together in the next transaction; every caller is answered after its COMMIT. A
group of distinct records is first tried as one multi-row guarded statement; if some row
did not change (a stale record), it is written again with one guarded statement per record
(sent in pipeline mode), which tells the stale ones apart. A group that fails is retried
record by record, so one bad record fails alone (bench/: a transaction per record kept
one worker CPU-bound at ~0.7 ms per event).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from receiver.errors import PermanentSinkError, SinkError, TransientSinkError
from receiver.models import ApplyOutcome, Record, SinkResult
from receiver.redaction import mask_url, scrub, url_secrets
from receiver.sinks.grouping import Answer, GroupCommit
from receiver.sinks.rows import (
    COLUMNS,
    HELD_COLUMNS,
    flat_row,
    guarded_upsert,
    held_state,
    positional_upsert,
    record_json,
)

if TYPE_CHECKING:
    from receiver.settings import Settings

MAX_POOL_SIZE = 10
# Any constant works: it only serializes concurrent CREATE TABLE IF NOT EXISTS, which
# otherwise races on the catalog (unique violation on pg_type) when workers start together.
_SCHEMA_LOCK = 0x72656376  # "recv"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS generations (
    record_key        text PRIMARY KEY,
    client_request_id text,
    status            text NOT NULL,
    status_rank       integer NOT NULL,
    model             text,
    primary_url       text,
    result_urls       jsonb NOT NULL DEFAULT '[]',
    error_code        text,
    error_message     text,
    reserved_credits  double precision,
    final_credits     double precision,
    source_updated_at timestamptz NOT NULL,
    last_event_id     text NOT NULL,
    applied_at        timestamptz NOT NULL
)
"""

# The ordering guard (SPEC §4) in one statement. It answers a row when the record was
# applied: changed by a newer event, or already holding this very event (a redelivery).
# ON CONFLICT decides on the row version it locked, so a concurrent worker's commit of the
# same event is seen; a read beside the upsert would see the statement's older snapshot.
APPLY = guarded_upsert(lambda name: f"%({name})s") + "RETURNING true"


HELD = f"""SELECT record_key, {", ".join(HELD_COLUMNS)} FROM generations
WHERE record_key = ANY(%s)"""  # noqa: S608 - only our own column names are interpolated
READ = "SELECT * FROM generations WHERE record_key = %s"


def row_values(record: Record) -> dict[str, Any]:
    """The record as query parameters: native times, a JSON array for the URL list."""
    return {
        **flat_row(record),
        "result_urls": Jsonb(list(record.result_urls)),
        "source_updated_at": record.source_updated_at,
        "applied_at": record.applied_at,
    }


class PostgresSink:
    """Upserts records into PostgreSQL through a lazily opened, bounded pool."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._label = mask_url(url)
        self._hidden = url_secrets(url)
        self._timeout = settings.sink_timeout_seconds
        self._max_size = max(1, min(settings.worker_concurrency, MAX_POOL_SIZE))
        self._pool: AsyncConnectionPool | None = None
        self._table_ready = False
        self._lock = asyncio.Lock()
        self._groups = GroupCommit[Record](self._write_group)

    async def apply(self, record: Record) -> Answer:
        return await self._groups.apply(record)

    async def apply_many(self, records: Sequence[Record]) -> list[Answer | Exception]:
        return await self._groups.apply_many(records)

    async def _write_group(self, records: list[Record]) -> list[Answer | SinkError]:
        try:
            if await self._apply_together(records):
                return [ApplyOutcome.APPLIED] * len(records)
            return list(await self._apply_group(records))
        except psycopg.Error as exc:
            if len(records) == 1:
                return [self._sink_error(exc)]
            # Find the culprit: each record alone, in its own transaction.
            return [await self._apply_alone(record) for record in records]

    async def _apply_alone(
        self, record: Record
    ) -> Answer | TransientSinkError | PermanentSinkError:
        try:
            [outcome] = await self._apply_group([record])
        except psycopg.Error as exc:
            return self._sink_error(exc)
        return outcome

    async def _apply_together(self, records: list[Record]) -> bool:
        """Upsert a group of distinct records in one statement; commit and True only if
        every row changed (each was applied). Otherwise nothing is written.

        PERF: psycopg's per-statement work (cursor, pipeline sync, result) cost more than
        the rows themselves. PostgreSQL refuses to touch one row twice in a statement, so a
        group naming a record twice takes the statement-per-record path.
        """
        if len(records) < 2 or len({record.record_key for record in records}) < len(records):
            return False
        # Text for every value (times as ISO 8601, the URL list as JSON): psycopg sends it
        # untyped and the server converts it to each column's type; no dumper per value.
        values = [row[name] for row in map(flat_row, records) for name in COLUMNS]
        pool = await self._ready_pool()
        changed = 0
        async with (
            pool.connection(timeout=self._timeout) as connection,
            connection.transaction(),
        ):
            cursor = await connection.execute(positional_upsert(len(records), "%s"), values)
            # The command tag counts the rows inserted or updated (not those the guard kept).
            changed = cursor.rowcount
            if changed != len(records):
                raise psycopg.Rollback
        return changed == len(records)

    async def _apply_group(self, records: list[Record]) -> list[Answer]:
        """Apply records in one transaction; raises psycopg.Error if any statement fails.

        A stale record's answer says what the row held: read after the upserts, in the same
        transaction, where ON CONFLICT has locked the row (no other worker can change it)."""
        pool = await self._ready_pool()
        async with (
            pool.connection(timeout=self._timeout) as connection,
            connection.transaction(),
        ):
            async with connection.pipeline():
                cursors = [
                    await connection.execute(APPLY, row_values(record)) for record in records
                ]
            rows = [await cursor.fetchone() for cursor in cursors]
            # A row back: applied (or the stored event again); none: the guard kept the row.
            outcomes = [ApplyOutcome.APPLIED if row else ApplyOutcome.STALE for row in rows]
            stale = [r.record_key for r, o in zip(records, outcomes, strict=True) if o == "stale"]
            held: dict[str, dict[str, str]] = {}
            if stale:
                cursor = await connection.execute(HELD, (stale,))
                for key, *values in await cursor.fetchall():
                    held[key] = held_state(dict(zip(HELD_COLUMNS, values, strict=True)))
        return [
            SinkResult(outcome, held=held.get(record.record_key))
            if outcome is ApplyOutcome.STALE
            else outcome
            for record, outcome in zip(records, outcomes, strict=True)
        ]

    async def read(self, record_key: str) -> dict[str, Any] | None:
        try:
            pool = await self._ready_pool()
            async with (
                pool.connection(timeout=self._timeout) as connection,
                connection.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(READ, (record_key,))
                row = await cursor.fetchone()
        except psycopg.Error as exc:
            raise self._sink_error(exc) from exc
        return record_json(row) if row is not None else None

    async def ping(self) -> None:
        if self._pool is None:
            await self._connect_once()
        try:
            pool = await self._open_pool()
            async with pool.connection(timeout=self._timeout) as connection:
                await connection.execute("SELECT 1")
        except psycopg.Error as exc:
            raise self._sink_error(exc) from exc

    async def setup(self) -> None:
        if self._pool is None:
            await self._connect_once()
        try:
            pool = await self._open_pool()
            await self._create_table(pool)
        except psycopg.Error as exc:
            raise self._sink_error(exc) from exc
        self._table_ready = True

    async def _connect_once(self) -> None:
        """One direct connection before the pool exists, so a server that refuses us (no
        such database, a wrong password) fails setup and the first ping at once with its
        own words, instead of the pool retrying in the background, logging a warning each
        time, until ``PoolTimeout``."""
        try:
            connection = await psycopg.AsyncConnection.connect(
                self._url, connect_timeout=max(2, math.ceil(self._timeout))
            )
        except psycopg.Error as exc:
            message = f"postgres sink {self._label}: {_server_words(exc)}"
            raise TransientSinkError(scrub(message, self._hidden)) from exc
        await connection.close()

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _open_pool(self) -> AsyncConnectionPool:
        async with self._lock:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    # libpq counts whole seconds, and treats 1 as 2.
                    kwargs={"connect_timeout": max(2, math.ceil(self._timeout))},
                    configure=self._configure,
                    name="receiver-sink",
                    open=False,
                )
                await pool.open(wait=False)
                self._pool = pool
            return self._pool

    async def _ready_pool(self) -> AsyncConnectionPool:
        pool = await self._open_pool()
        if not self._table_ready:
            await self._create_table(pool)
            self._table_ready = True
        return pool

    async def _create_table(self, pool: AsyncConnectionPool) -> None:
        async with (
            pool.connection(timeout=self._timeout) as connection,
            connection.transaction(),
        ):
            await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await connection.execute(CREATE_TABLE)

    async def _configure(self, connection: psycopg.AsyncConnection[Any]) -> None:
        # A statement that hangs (a lock held elsewhere) fails instead of holding a worker.
        await connection.execute(f"SET statement_timeout = {int(self._timeout * 1000)}")
        await connection.commit()

    def _sink_error(self, exc: psycopg.Error) -> TransientSinkError | PermanentSinkError:
        # libpq messages name host and user, not the password; scrub it anyway in case a
        # future message (or a DSN echoed in one) carries it.
        message = scrub(f"postgres sink {self._label}: {type(exc).__name__}: {exc}", self._hidden)
        # Operational: server down, restarting, timeouts, deadlocks, serialization failures.
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return TransientSinkError(message)
        return PermanentSinkError(message)


def _server_words(exc: psycopg.Error) -> str:
    """What the server said about a refused connection (``database "x" does not exist``),
    on one line: libpq puts the address it tried (named by the URL already) before it."""
    text = str(exc).strip()
    if "FATAL:" in text:
        text = text.rsplit("FATAL:", 1)[1]
    return " ".join(text.split())

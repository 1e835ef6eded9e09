"""SQLite sink: one row per record in table ``generations`` (SPEC §5, §9).

Several processes may share the file, so it runs in WAL mode with a busy timeout
(PITFALLS "Processing"). The stdlib driver blocks, so every call runs on one dedicated
thread per sink, which also owns the sink's only connection.

Group commit: records applied while a transaction is in progress wait and are written
together in the next one, as one multi-row guarded upsert; if some row was not written
(a stale record: a redelivery of the stored event counts as written), with one guarded
upsert per record instead, and if one fails, inside a savepoint each, so a bad record
fails alone. Every caller is answered only after its COMMIT, so durability is
unchanged, but one fsync now covers many records (bench/: the worker kept up with 1,000
events/s only with this).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from receiver.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from receiver.models import ApplyOutcome, Record, SinkResult
from receiver.redaction import mask_url
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

T = TypeVar("T")

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS generations (
    record_key        TEXT PRIMARY KEY,
    client_request_id TEXT,
    status            TEXT NOT NULL,
    status_rank       INTEGER NOT NULL,
    model             TEXT,
    primary_url       TEXT,
    result_urls       TEXT NOT NULL DEFAULT '[]',
    error_code        TEXT,
    error_message     TEXT,
    reserved_credits  REAL,
    final_credits     REAL,
    source_updated_at TEXT NOT NULL,
    last_event_id     TEXT NOT NULL,
    applied_at        TEXT NOT NULL
)
"""

# Times compare as text in SQLite because format_time is fixed-width UTC.
UPSERT = guarded_upsert(lambda name: f":{name}")

# After the guard kept a row: what it holds (a stale outcome's reason).
STORED = "SELECT status, source_updated_at, last_event_id FROM generations WHERE record_key = ?"
READ = "SELECT * FROM generations WHERE record_key = ?"
# What one row can fail with: SQLite's own errors, and the driver's refusal to bind an int
# past 2^63 (the mapping refuses those first; this keeps a record built elsewhere alone).
ROW_ERRORS = (sqlite3.Error, OverflowError)


def database_path(url: str) -> str:
    """The file of a SQLAlchemy-style URL: ``sqlite:///rel.db``, ``sqlite:////abs.db``."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
        raise ConfigError(
            f"RECEIVER_SINK: expected sqlite:///relative.db or sqlite:////absolute.db, "
            f"got {mask_url(url)!r}"
        )
    return parts.path[1:]


class SqliteSink:
    """Upserts records into a SQLite file, guarded by order, off the event loop."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._path = database_path(url)
        self._label = mask_url(url)
        # The busy timeout is how long a write waits for another process's lock.
        self._busy_timeout = settings.sink_timeout_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-sink")
        self._connection: sqlite3.Connection | None = None
        self._groups = GroupCommit[dict[str, Any]](self._write_group)

    async def apply(self, record: Record) -> Answer:
        return await self._groups.apply(flat_row(record))

    async def apply_many(self, records: Sequence[Record]) -> list[Answer | Exception]:
        return await self._groups.apply_many([flat_row(record) for record in records])

    async def _write_group(self, rows: list[dict[str, Any]]) -> list[Answer | SinkError]:
        return list(await self._run(self._apply_group, rows))

    async def ping(self) -> None:
        await self._run(lambda: self._connect().execute("SELECT 1").fetchone())

    async def setup(self) -> None:
        await self._run(lambda: self._connect().execute(CREATE_TABLE))

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
        except (sqlite3.Error, OSError) as exc:
            raise self._sink_error(exc) from exc

    def _sink_error(self, exc: BaseException) -> TransientSinkError | PermanentSinkError:
        if isinstance(exc, sqlite3.OperationalError):
            # Locked, busy, I/O or a file that cannot be opened: the file may be fine later.
            return TransientSinkError(f"sqlite sink {self._label}: {exc}")
        if isinstance(exc, OSError):
            return TransientSinkError(f"sqlite sink {self._label}: {exc.strerror}")
        if isinstance(exc, OverflowError):
            return PermanentSinkError(f"sqlite sink {self._label}: OverflowError: {exc}")
        return PermanentSinkError(f"sqlite sink {self._label}: {exc}")

    # Everything below runs on the sink's own thread.

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        connection = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(CREATE_TABLE)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _apply_group(
        self, rows: list[dict[str, Any]]
    ) -> list[Answer | TransientSinkError | PermanentSinkError]:
        # PERF: first the whole group as one statement; when every row was written, each was
        # applied and that is the answer. Otherwise (a stale event) it is rolled back and
        # written a row at a time, which tells the rows apart; should a row fail, once more
        # with a savepoint around each row, so it fails alone.
        try:
            if self._apply_together(rows):
                return [ApplyOutcome.APPLIED] * len(rows)
            return self._in_transaction(rows, isolate_rows=False)
        except ROW_ERRORS:
            return self._in_transaction(rows, isolate_rows=True)

    def _apply_together(self, rows: list[dict[str, Any]]) -> bool:
        """Upsert all rows in one statement; commit and True only if every row changed.

        One statement is one sqlite3 call: the thread gives up and takes back the GIL once
        instead of once per row, which under load (the event loop holding the GIL) cost
        more than the writes (bench: 4x the thread's CPU per row with a busy main thread).
        """
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            values = [row[name] for row in rows for name in COLUMNS]
            # rowcount counts the rows this statement inserted or updated (not triggers').
            changed = connection.execute(positional_upsert(len(rows), "?"), values).rowcount
            connection.execute("COMMIT" if changed == len(rows) else "ROLLBACK")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return changed == len(rows)

    def _in_transaction(
        self, rows: list[dict[str, Any]], *, isolate_rows: bool
    ) -> list[Answer | TransientSinkError | PermanentSinkError]:
        connection = self._connect()
        # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), and
        # keeps each follow-up read consistent with what its upsert compared against.
        connection.execute("BEGIN IMMEDIATE")
        results: list[Answer | TransientSinkError | PermanentSinkError] = []
        try:
            for values in rows:
                if not isolate_rows:
                    results.append(self._apply_one(connection, values))
                    continue
                connection.execute("SAVEPOINT record")
                try:
                    results.append(self._apply_one(connection, values))
                except ROW_ERRORS as exc:  # this record fails alone
                    connection.execute("ROLLBACK TO record")
                    results.append(self._sink_error(exc))
                connection.execute("RELEASE record")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return results

    @staticmethod
    def _apply_one(
        connection: sqlite3.Connection, values: dict[str, Any]
    ) -> ApplyOutcome | SinkResult:
        # The guard counts a redelivery of the stored event as written (rows.py).
        if connection.execute(UPSERT, values).rowcount:
            return ApplyOutcome.APPLIED
        # Read in the same IMMEDIATE transaction as the upsert: what the guard compared to.
        stored = connection.execute(STORED, (values["record_key"],)).fetchone()
        held = held_state(dict(zip(HELD_COLUMNS, stored, strict=True))) if stored else None
        return SinkResult(ApplyOutcome.STALE, held=held)

    async def read(self, record_key: str) -> dict[str, Any] | None:
        return await self._run(self._read, record_key)

    def _read(self, record_key: str) -> dict[str, Any] | None:
        cursor = self._connect().execute(READ, (record_key,))
        row = cursor.fetchone()
        if row is None:
            return None
        names = [column[0] for column in cursor.description]
        return record_json(dict(zip(names, row, strict=True)))

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

"""SqliteSink on a real file: the shared contract, the column types, locking and URLs."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from receiver.errors import ConfigError, PermanentSinkError, TransientSinkError
from receiver.models import ApplyOutcome, outcome_of
from receiver.sinks.base import find_factory
from receiver.sinks.sqlite import SqliteSink, database_path
from tests.sink_contract import (
    ISO_TIME,
    Backend,
    SinkContract,
    full_record,
    make_record,
    new_key,
    sink_settings,
)


def read_row(path: Path, key: str) -> dict[str, Any] | None:
    """The stored row as Record.to_json() would give it."""
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute("SELECT * FROM generations WHERE record_key = ?", (key,))
        found = row.fetchone()
    connection.close()
    if found is None:
        return None
    values = dict(found)
    del values["status_rank"]
    values["result_urls"] = orjson.loads(values["result_urls"])
    return values


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[Backend]:
    path = tmp_path / "data" / "records.db"
    url = f"sqlite:///{path}"
    settings = sink_settings(tmp_path, url)

    async def read(key: str) -> dict[str, Any] | None:
        return read_row(path, key)

    backend = Backend(lambda: SqliteSink(url, settings), read)
    yield backend
    await backend.aclose()


class TestContract(SinkContract):
    """The shared sink contract on a SQLite file shared by several sink instances."""


async def refusing_sink(tmp_path: Path) -> tuple[SqliteSink, Path]:
    """A sink whose database refuses (by trigger) a row with record key ``refused``."""
    path = tmp_path / "records.db"
    url = f"sqlite:///{path}"
    sink = SqliteSink(url, sink_settings(tmp_path, url))
    await sink.setup()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON generations"
            " WHEN NEW.record_key = 'refused' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    connection.close()
    return sink, path


class TestStorage:
    async def test_column_types(self, backend: Backend, tmp_path: Path) -> None:
        """Credits are REAL, times ISO 8601 TEXT, URLs JSON text, rank an INTEGER."""
        record = full_record(new_key())
        await backend.sink.apply(record)
        with sqlite3.connect(tmp_path / "data" / "records.db") as connection:
            row = connection.execute(
                "SELECT typeof(reserved_credits), typeof(final_credits), typeof(status_rank),"
                " status_rank, typeof(source_updated_at), source_updated_at, applied_at,"
                " typeof(result_urls), result_urls FROM generations WHERE record_key = ?",
                (record.record_key,),
            ).fetchone()
        connection.close()
        assert row[:5] == ("real", "real", "integer", 2, "text")
        assert re.match(ISO_TIME, row[5])
        assert re.match(ISO_TIME, row[6])
        assert row[7] == "text"
        assert orjson.loads(row[8]) == list(record.result_urls)

    async def test_wal_mode(self, backend: Backend, tmp_path: Path) -> None:
        """The file is in WAL mode, so readers and other processes do not block writers."""
        await backend.sink.setup()
        with sqlite3.connect(tmp_path / "data" / "records.db") as connection:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        connection.close()
        assert mode == "wal"

    async def test_table_has_one_column_per_field(self, backend: Backend, tmp_path: Path) -> None:
        """The table's columns are the normalized record's fields plus status_rank."""
        await backend.sink.setup()
        with sqlite3.connect(tmp_path / "data" / "records.db") as connection:
            names = [row[1] for row in connection.execute("PRAGMA table_info(generations)")]
        connection.close()
        assert set(names) == {*full_record("x").to_json(), "status_rank"}

    async def test_locked_database_is_transient(self, tmp_path: Path) -> None:
        """A write lock held by another process past the busy timeout is a transient error."""
        path = tmp_path / "records.db"
        url = f"sqlite:///{path}"
        sink = SqliteSink(url, sink_settings(tmp_path, url, RECEIVER_SINK_TIMEOUT="100ms"))
        await sink.setup()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(TransientSinkError, match="locked"):
                await sink.apply(make_record(new_key(), "queued"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert await sink.apply(make_record(new_key(), "queued")) is ApplyOutcome.APPLIED
        await sink.aclose()

    async def test_a_rejected_row_fails_alone_in_its_group(self, tmp_path: Path) -> None:
        """A row the database refuses fails by itself; the rest of its group commits."""
        sink, path = await refusing_sink(tmp_path)
        keys = [new_key(), "refused", new_key()]
        outcomes = await asyncio.gather(
            *(sink.apply(make_record(key, "queued")) for key in keys), return_exceptions=True
        )
        await sink.aclose()
        assert outcomes[0] is outcomes[2] is ApplyOutcome.APPLIED
        assert isinstance(outcomes[1], PermanentSinkError)
        assert [read_row(path, key) is not None for key in keys] == [True, False, True]

    async def test_a_rejected_row_fails_alone_in_its_batch(self, tmp_path: Path) -> None:
        """apply_many: the refused row's answer is its error; the others still commit."""
        sink, path = await refusing_sink(tmp_path)
        keys = [new_key(), "refused", new_key()]
        outcomes = await sink.apply_many([make_record(key, "queued") for key in keys])
        await sink.aclose()
        assert outcomes[0] is outcomes[2] is ApplyOutcome.APPLIED
        assert isinstance(outcomes[1], PermanentSinkError)
        assert [read_row(path, key) is not None for key in keys] == [True, False, True]

    async def test_a_value_the_driver_cannot_bind_fails_alone(self, tmp_path: Path) -> None:
        """A record the mapping would refuse (credits 2^63, built elsewhere) fails alone with
        its real cause; the rest of its group commits and the sink keeps working."""
        path = tmp_path / "records.db"
        url = f"sqlite:///{path}"
        sink = SqliteSink(url, sink_settings(tmp_path, url))
        keys = [new_key(), new_key(), new_key()]
        records = [make_record(key, "queued") for key in keys]
        records[1] = make_record(keys[1], "queued", final_credits=2**63)
        async with asyncio.timeout(5):  # a dead group writer would leave this waiting
            outcomes = await sink.apply_many(records)
            later = await sink.apply(make_record(new_key(), "queued"))
        await sink.aclose()
        assert outcomes[0] is outcomes[2] is later is ApplyOutcome.APPLIED
        assert isinstance(outcomes[1], PermanentSinkError)
        assert "OverflowError" in str(outcomes[1])
        assert [read_row(path, key) is not None for key in keys] == [True, False, True]

    async def test_writes_do_not_block_the_event_loop(self, tmp_path: Path) -> None:
        """While a write waits for a lock, the event loop keeps running other tasks."""
        path = tmp_path / "records.db"
        url = f"sqlite:///{path}"
        sink = SqliteSink(url, sink_settings(tmp_path, url, RECEIVER_SINK_TIMEOUT="5s"))
        await sink.setup()
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.5, lambda: holder.execute("ROLLBACK"))
        release.start()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        outcome = await sink.apply(make_record(new_key(), "queued"))
        ticker.cancel()
        release.join()
        holder.close()
        await sink.aclose()
        assert outcome is ApplyOutcome.APPLIED
        assert ticks > 10

    async def test_unopenable_file_is_transient(self, tmp_path: Path) -> None:
        """A path that cannot be opened is reported, not raised as a bare sqlite error."""
        (tmp_path / "taken").write_text("a file where a directory should be")
        url = f"sqlite:///{tmp_path}/taken/records.db"
        sink = SqliteSink(url, sink_settings(tmp_path, url))
        with pytest.raises(TransientSinkError):
            await sink.apply(make_record(new_key(), "queued"))
        await sink.aclose()


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "path"),
        [
            ("sqlite:///records.db", "records.db"),
            ("sqlite:///data/records.db", "data/records.db"),
            ("sqlite:////var/lib/receiver/records.db", "/var/lib/receiver/records.db"),
            ("sqlite:///:memory:", ":memory:"),
        ],
        ids=["relative", "relative-dir", "absolute", "memory"],
    )
    def test_paths(self, url: str, path: str) -> None:
        """URLs follow the SQLAlchemy convention: three slashes relative, four absolute."""
        assert database_path(url) == path

    @pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://host/x.db"])
    def test_bad_urls(self, url: str) -> None:
        """A URL without a file path is a configuration error."""
        with pytest.raises(ConfigError, match="RECEIVER_SINK"):
            database_path(url)

    async def test_relative_path_creates_parent_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A relative path resolves from the working directory; its parent is created."""
        monkeypatch.chdir(tmp_path)
        url = "sqlite:///nested/dir/records.db"
        sink = find_factory("sqlite")(url, sink_settings(tmp_path, url))
        assert await sink.apply(make_record(new_key(), "queued")) is ApplyOutcome.APPLIED
        await sink.aclose()
        assert (tmp_path / "nested" / "dir" / "records.db").is_file()

    async def test_default_url_from_settings(self, tmp_path: Path) -> None:
        """The default sink URL (absolute, under the data dir) opens and stores."""
        settings = sink_settings(tmp_path, "")
        url = settings.sink_url.reveal()
        sink = SqliteSink(url, settings)
        record = make_record(new_key(), "queued")
        assert await sink.apply(record) is ApplyOutcome.APPLIED
        await sink.aclose()
        path = Path(database_path(url))
        assert path.is_absolute()
        assert path.name == "records.db"
        stored = read_row(path, record.record_key)
        assert stored == record.to_json()


async def traced_sink(tmp_path: Path) -> tuple[SqliteSink, list[str]]:
    """A sink on a new file, and the first word of every statement it runs from now on."""
    url = f"sqlite:///{tmp_path}/records.db"
    sink = SqliteSink(url, sink_settings(tmp_path, url))
    await sink.setup()
    statements: list[str] = []

    def trace() -> None:
        assert sink._connection is not None
        sink._connection.set_trace_callback(lambda sql: statements.append(sql.split()[0]))

    await sink._run(trace)
    return sink, statements


class TestGroupCommit:
    async def test_concurrent_applies_share_transactions(self, tmp_path: Path) -> None:
        """Records applied concurrently are committed in groups, each still guarded."""
        sink, statements = await traced_sink(tmp_path)
        key = new_key()
        newer = make_record(key, "succeeded", seconds=300)
        older = make_record(key, "processing", seconds=60)
        others = [make_record(new_key(), "succeeded") for _ in range(100)]
        outcomes = await asyncio.gather(*(sink.apply(r) for r in [newer, older, *others]))
        await sink.aclose()
        assert [ApplyOutcome.APPLIED, ApplyOutcome.STALE] + [ApplyOutcome.APPLIED] * 100 == [
            outcome_of(outcome) for outcome in outcomes
        ]
        commits = statements.count("COMMIT")
        assert 1 <= commits < 20, f"{commits} commits for 102 records"
        assert "succeeded" == read_row(tmp_path / "records.db", key)["status"]  # type: ignore[index]

    async def test_new_records_are_written_by_one_statement(self, tmp_path: Path) -> None:
        """A batch in which every record changes its row is one INSERT, one COMMIT."""
        sink, statements = await traced_sink(tmp_path)
        key = new_key()
        batch = [make_record(key, "queued"), make_record(key, "succeeded", seconds=60)]
        batch += [make_record(new_key(), "succeeded") for _ in range(40)]
        outcomes = await sink.apply_many(batch)
        await sink.aclose()
        assert [ApplyOutcome.APPLIED] * 42 == outcomes
        assert ["BEGIN", "INSERT", "COMMIT"] == statements
        assert "succeeded" == read_row(tmp_path / "records.db", key)["status"]  # type: ignore[index]

    async def test_a_batch_is_one_transaction(self, tmp_path: Path) -> None:
        """apply_many writes a whole batch in one transaction, each record still guarded."""
        sink, statements = await traced_sink(tmp_path)
        key = new_key()
        batch = [make_record(key, "succeeded", seconds=300), make_record(key, "queued")]
        batch += [make_record(new_key(), "succeeded") for _ in range(50)]
        outcomes = await sink.apply_many(batch)
        await sink.aclose()
        assert [ApplyOutcome.APPLIED, ApplyOutcome.STALE] + [ApplyOutcome.APPLIED] * 50 == [
            outcome_of(outcome)  # type: ignore[arg-type]
            for outcome in outcomes
        ]
        assert 1 == statements.count("COMMIT")

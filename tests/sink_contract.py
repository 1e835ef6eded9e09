"""The behaviour every sink must satisfy (SPEC §4, §5, §9), written once.

A test module subclasses ``SinkContract`` and defines a ``backend`` fixture that builds
sinks on a real store and reads back what a record key holds, normalized to the shape of
``Record.to_json()`` (``Backend.expected``). Every test uses its own record keys, so
backends need no reset between tests (and none between Hypothesis examples).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.errors import RecordNotReadable
from receiver.models import ApplyOutcome, Record, SinkResult, outcome_of
from receiver.settings import Settings
from receiver.sinks.base import Sink, apply_all
from tests.conftest import TEST_SECRET

BASE_TIME = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
STATUSES = ("queued", "processing", "succeeded", "failed")
ISO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
WORKERS = 3
# Races a concurrency test repeats: each round is one chance for the interleaving it checks.
ROUNDS = 25

Reader = Callable[[str], Awaitable[dict[str, Any] | None]]


def sink_settings(tmp_path: Path, sink_url: str, **environ: str) -> Settings:
    """Settings as the service would build them, for a sink URL."""
    return Settings.from_env(
        {
            "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
            "RECEIVER_DATA_DIR": str(tmp_path),
            "RECEIVER_SINK": sink_url,
            "RECEIVER_FORWARD_SECRET": TEST_SECRET,
            **environ,
        }
    )


def new_key() -> str:
    return f"task_{uuid.uuid4().hex[:16]}"


def make_record(
    key: str, status: str, seconds: float = 0, event_id: str | None = None, **fields: Any
) -> Record:
    """A record for ``key`` whose source time is ``seconds`` after a fixed instant."""
    return Record(
        record_key=key,
        status=status,
        source_updated_at=BASE_TIME + timedelta(seconds=seconds),
        last_event_id=event_id or f"evt_{uuid.uuid4().hex}",
        **fields,
    )


def full_record(key: str) -> Record:
    """A record with every field set, including awkward text."""
    return make_record(
        key,
        "succeeded",
        seconds=61.123456,
        client_request_id="order-123-preview",
        model="z-image",
        primary_url="https://media.example/result.png?X-Amz-Signature=abc",
        result_urls=("https://media.example/result.png", "https://media.example/b.png"),
        error_code=None,
        error_message="näive — “quoted” 😀",
        reserved_credits=1.5,
        final_credits=0.0,
        applied_at=BASE_TIME + timedelta(minutes=5, microseconds=7),
    )


class Backend:
    """Sinks on one real store, all closed at the end of the test.

    ``keeps_applied_at`` is False for a sink that does not store the record itself: the
    HTTP sink forwards the event's own fields, and the downstream knows when it applied them.
    """

    def __init__(
        self, factory: Callable[[], Sink], read: Reader, *, keeps_applied_at: bool = True
    ) -> None:
        self._factory = factory
        self.read = read
        self.keeps_applied_at = keeps_applied_at
        self._sinks: list[Sink] = []

    def expected(self, record: Record) -> dict[str, Any]:
        """What ``read`` must give back once ``record`` is the stored state."""
        return record.to_json() if self.keeps_applied_at else record.event_json()

    def new_sink(self) -> Sink:
        sink = self._factory()
        self._sinks.append(sink)
        return sink

    @property
    def sink(self) -> Sink:
        return self._sinks[0] if self._sinks else self.new_sink()

    def workers(self) -> list[Sink]:
        """Several sinks on the same store: several workers (or processes) at once."""
        while len(self._sinks) < WORKERS:
            self.new_sink()
        return self._sinks[:WORKERS]

    async def aclose(self) -> None:
        for sink in self._sinks:
            await sink.aclose()


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[str, int]], list[int]]:
    """Events of one task (status, seconds) and a delivery order that may repeat some."""
    events = draw(
        st.lists(st.tuples(st.sampled_from(STATUSES), st.integers(0, 3)), min_size=1, max_size=6)
    )
    redelivered = draw(st.lists(st.integers(0, len(events) - 1), max_size=3))
    order = draw(st.permutations([*range(len(events)), *redelivered]))
    return events, order


class SinkContract:
    """Inherit and provide a ``backend`` fixture to run these against a sink.

    ``readable``: the sink reads its records back (``Sink.read``); otherwise it must say
    so with ``RecordNotReadable``. ``reports_held``: a stale answer says what the record
    held (every sink that guards order in its own store can).
    """

    readable = True
    reports_held = True

    async def test_read_answers_the_record_as_stored(self, backend: Backend) -> None:
        """read() gives the record as the store holds it, None for an unknown key, or
        RecordNotReadable for a sink that cannot read back."""
        record = full_record(new_key())
        await backend.sink.apply(record)
        if not self.readable:
            with pytest.raises(RecordNotReadable):
                await backend.sink.read(record.record_key)
            return
        assert await backend.sink.read(record.record_key) == await backend.read(record.record_key)
        assert await backend.sink.read(record.record_key) == backend.expected(record)
        assert await backend.sink.read(new_key()) is None

    async def test_stale_answer_says_what_the_record_held(self, backend: Backend) -> None:
        """A stale outcome carries the held status, source_updated_at and last_event_id."""
        if not self.reports_held:
            return
        key = new_key()
        newer = make_record(key, "succeeded", 60)
        await backend.sink.apply(newer)
        [result] = await apply_all(backend.sink, [make_record(key, "processing", 1)])
        assert isinstance(result, SinkResult)
        assert result.outcome is ApplyOutcome.STALE
        assert result.held == {
            "status": "succeeded",
            "source_updated_at": newer.to_json()["source_updated_at"],
            "last_event_id": newer.last_event_id,
        }

    async def test_is_a_sink(self, backend: Backend) -> None:
        """The sink satisfies the runtime-checkable Sink protocol."""
        assert isinstance(backend.sink, Sink)

    async def test_setup_is_idempotent(self, backend: Backend) -> None:
        """setup() can run twice, and the sink works afterwards."""
        await backend.sink.setup()
        await backend.sink.setup()
        record = make_record(new_key(), "queued")
        assert outcome_of(await backend.sink.apply(record)) is ApplyOutcome.APPLIED

    async def test_a_batch_gets_one_answer_per_record_in_order(self, backend: Backend) -> None:
        """apply_all (how the worker applies a batch) answers each record as apply would."""
        stored_key, first, second = new_key(), new_key(), new_key()
        await backend.sink.apply(make_record(stored_key, "succeeded", seconds=300))
        batch = [
            make_record(first, "queued"),
            make_record(stored_key, "processing", seconds=60),  # older than what is stored
            make_record(second, "failed"),
        ]
        outcomes = await apply_all(backend.sink, batch)
        assert [ApplyOutcome.APPLIED, ApplyOutcome.STALE, ApplyOutcome.APPLIED] == [
            outcome_of(outcome)  # type: ignore[arg-type]
            for outcome in outcomes
        ]
        assert [(await backend.read(key) or {}).get("status") for key in (first, second)] == [
            "queued",
            "failed",
        ]

    async def test_ping(self, backend: Backend) -> None:
        """ping() passes when the backend is up."""
        await backend.sink.ping()

    async def test_insert(self, backend: Backend) -> None:
        """A record key seen for the first time is stored."""
        record = make_record(new_key(), "processing")
        assert outcome_of(await backend.sink.apply(record)) is ApplyOutcome.APPLIED
        assert await backend.read(record.record_key) == backend.expected(record)

    async def test_newer_update_applies(self, backend: Backend) -> None:
        """A later updated_at replaces the stored record."""
        key = new_key()
        first = make_record(key, "processing", 1, model="a")
        second = make_record(key, "succeeded", 2, model="b", result_urls=("https://x/y.png",))
        assert outcome_of(await backend.sink.apply(first)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(second)) is ApplyOutcome.APPLIED
        assert await backend.read(key) == backend.expected(second)

    async def test_older_is_stale(self, backend: Backend) -> None:
        """An earlier updated_at is ignored and reported stale."""
        key = new_key()
        newer = make_record(key, "processing", 2)
        assert outcome_of(await backend.sink.apply(newer)) is ApplyOutcome.APPLIED
        assert (
            outcome_of(await backend.sink.apply(make_record(key, "queued", 1)))
            is ApplyOutcome.STALE
        )
        assert await backend.read(key) == backend.expected(newer)

    async def test_equal_time_higher_rank_applies(self, backend: Backend) -> None:
        """On equal updated_at a higher status rank wins."""
        key = new_key()
        queued, processing = make_record(key, "queued", 1), make_record(key, "processing", 1)
        assert outcome_of(await backend.sink.apply(queued)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(processing)) is ApplyOutcome.APPLIED
        assert await backend.read(key) == backend.expected(processing)

    @pytest.mark.parametrize(
        ("first_status", "second_status"),
        [("processing", "processing"), ("succeeded", "failed"), ("failed", "succeeded")],
        ids=["same-status", "succeeded-then-failed", "failed-then-succeeded"],
    )
    async def test_equal_time_equal_rank_first_wins(
        self, backend: Backend, first_status: str, second_status: str
    ) -> None:
        """On equal updated_at and equal rank the stored record stays (SPEC §9)."""
        key = new_key()
        first = make_record(key, first_status, 1, model="first")
        second = make_record(key, second_status, 1, model="second")
        assert outcome_of(await backend.sink.apply(first)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(second)) is ApplyOutcome.STALE
        assert await backend.read(key) == backend.expected(first)

    @pytest.mark.parametrize("terminal", ["succeeded", "failed"])
    @pytest.mark.parametrize("later", ["queued", "processing"])
    async def test_terminal_never_regresses(
        self, backend: Backend, terminal: str, later: str
    ) -> None:
        """A terminal record ignores a non-terminal event even with a newer updated_at."""
        key = new_key()
        done = make_record(key, terminal, 1)
        assert outcome_of(await backend.sink.apply(done)) is ApplyOutcome.APPLIED
        assert (
            outcome_of(await backend.sink.apply(make_record(key, later, 60))) is ApplyOutcome.STALE
        )
        assert await backend.read(key) == backend.expected(done)

    async def test_newer_terminal_replaces_terminal(self, backend: Backend) -> None:
        """Terminal to terminal follows updated_at (a retried job that now failed)."""
        key = new_key()
        failed = make_record(key, "failed", 2, error_code="nsfw", error_message="blocked")
        assert (
            outcome_of(await backend.sink.apply(make_record(key, "succeeded", 1)))
            is ApplyOutcome.APPLIED
        )
        assert outcome_of(await backend.sink.apply(failed)) is ApplyOutcome.APPLIED
        assert await backend.read(key) == backend.expected(failed)

    async def test_reapplying_the_same_event_is_applied_without_change(
        self, backend: Backend
    ) -> None:
        """A redelivery of the stored event reports applied and changes nothing."""
        key = new_key()
        record = make_record(key, "succeeded", 1, final_credits=2.0)
        again = dataclasses.replace(record, applied_at=record.applied_at + timedelta(minutes=1))
        assert outcome_of(await backend.sink.apply(record)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(again)) is ApplyOutcome.APPLIED
        assert await backend.read(key) == backend.expected(record)

    @pytest.mark.parametrize("stored_before", [True, False], ids=["update", "insert"])
    async def test_a_redelivery_racing_its_original_is_applied(
        self, backend: Backend, stored_before: bool
    ) -> None:
        """The same event applied by several workers at once (a reclaim racing the original
        delivery) is applied for every one of them, never stale, and written once.

        Each worker decides from the row as the guard saw it, not from an earlier
        snapshot: a PostgreSQL statement that read ``last_event_id`` beside its upsert saw
        the row as it was before a concurrent commit and called the redelivery stale.
        """
        workers = backend.workers()
        for _ in range(ROUNDS):
            key = new_key()
            if stored_before:
                first = await workers[0].apply(make_record(key, "queued"))
                assert outcome_of(first) is ApplyOutcome.APPLIED
            event = make_record(key, "succeeded", 2, final_credits=1.0)
            outcomes = await asyncio.gather(*(worker.apply(event) for worker in workers))
            assert [ApplyOutcome.APPLIED] * len(workers) == [outcome_of(o) for o in outcomes]
            assert backend.expected(event) == await backend.read(key)

    async def test_redelivery_after_a_newer_event_is_stale(self, backend: Backend) -> None:
        """An old event delivered again after a newer one is stale, not applied."""
        key = new_key()
        old, new = make_record(key, "processing", 1), make_record(key, "succeeded", 2)
        assert outcome_of(await backend.sink.apply(old)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(new)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(old)) is ApplyOutcome.STALE
        assert await backend.read(key) == backend.expected(new)

    async def test_all_fields_round_trip(self, backend: Backend) -> None:
        """Every field comes back equal, credits as numbers and times as ISO 8601."""
        record = full_record(new_key())
        assert outcome_of(await backend.sink.apply(record)) is ApplyOutcome.APPLIED
        stored = await backend.read(record.record_key)
        assert stored == backend.expected(record)
        assert stored is not None
        assert isinstance(stored["reserved_credits"], float)
        assert isinstance(stored["final_credits"], float)
        assert stored["source_updated_at"] == "2026-05-10T12:01:01.123456Z"
        if backend.keeps_applied_at:
            assert stored["applied_at"] == "2026-05-10T12:05:00.000007Z"

    async def test_missing_fields_round_trip_as_none(self, backend: Backend) -> None:
        """Optional fields left out come back as None and an empty URL list."""
        key = new_key()
        full, bare = full_record(key), make_record(key, "failed", 3600)
        assert outcome_of(await backend.sink.apply(full)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(bare)) is ApplyOutcome.APPLIED
        assert await backend.read(key) == backend.expected(bare)

    async def test_records_are_independent(self, backend: Backend) -> None:
        """A guard on one record key does not affect another."""
        first, second = make_record(new_key(), "succeeded", 9), make_record(new_key(), "queued")
        assert outcome_of(await backend.sink.apply(first)) is ApplyOutcome.APPLIED
        assert outcome_of(await backend.sink.apply(second)) is ApplyOutcome.APPLIED
        assert await backend.read(second.record_key) == backend.expected(second)

    @settings(
        max_examples=30,
        deadline=None,
        # Fixtures are not reset between examples on purpose (each uses fresh keys), and
        # one inherited method runs once per backend class, i.e. from several "executors".
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(history=histories())
    async def test_concurrent_workers_keep_the_newest(
        self, backend: Backend, history: tuple[list[tuple[str, int]], list[int]]
    ) -> None:
        """Any order of a task's events, applied by several workers at once, ends newest."""
        specs, order = history
        key = new_key()
        events = [
            make_record(key, status, seconds, event_id=f"evt_{index}_{key}")
            for index, (status, seconds) in enumerate(specs)
        ]
        workers = backend.workers()
        outcomes = await asyncio.gather(
            *(workers[n % len(workers)].apply(events[i]) for n, i in enumerate(order))
        )

        stored = await backend.read(key)
        assert stored is not None
        final = {event.last_event_id: event for event in events}[stored["last_event_id"]]
        assert stored == backend.expected(final)
        # Nothing delivered is newer than what is kept: the guard held under concurrency.
        assert not any(e.is_newer_than(final.status, final.source_updated_at) for e in events)
        applied = {
            events[i]
            for i, outcome in zip(order, outcomes, strict=True)
            if outcome_of(outcome) is ApplyOutcome.APPLIED
        }
        assert final in applied
        # Applied events were each newer than the one before: they form one chain.
        for a, b in itertools.combinations(applied, 2):
            assert a.is_newer_than(b.status, b.source_updated_at) or b.is_newer_than(
                a.status, a.source_updated_at
            )

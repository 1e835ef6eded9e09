"""The sink circuit breaker's states, with an injected clock (issue 13)."""

from __future__ import annotations

import asyncio

from receiver.circuit import SinkCircuit, Transition


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def circuit(failures: int = 3, clock: Clock | None = None) -> SinkCircuit:
    return SinkCircuit(failures, 1.0, 8.0, clock or Clock())


class TestOpening:
    def test_opens_after_consecutive_failed_batches(self) -> None:
        """N batches in a row without any answer open it; fewer do not."""
        breaker = circuit(3)
        assert [breaker.record(False) for _ in range(3)] == [None, None, Transition.OPENED]
        assert breaker.is_open

    def test_an_answer_resets_the_count(self) -> None:
        """One batch the sink answered (applied, stale or refused) starts the count again."""
        breaker = circuit(3)
        for answered in (False, False, True, False, False):
            breaker.record(answered)
        assert not breaker.is_open

    def test_failures_while_open_change_nothing(self) -> None:
        """Batches still in flight when it opened do not reopen it or move the probe."""
        clock = Clock()
        breaker = circuit(1, clock)
        breaker.record(False)
        due = breaker.seconds_until_probe()
        assert breaker.record(False) is None
        assert (breaker.is_open, breaker.seconds_until_probe()) == (True, due)


class TestProbing:
    def test_probes_back_off_up_to_the_cap(self) -> None:
        """Each failed probe waits longer, jittered, never past the cap."""
        breaker = circuit(1)
        breaker.record(False)
        assert 0.5 <= breaker.seconds_until_probe() <= 1.0
        for _ in range(10):
            breaker.probe_failed()
        assert 4.0 <= breaker.seconds_until_probe() <= 8.0
        assert breaker.failed_probes == 10

    def test_an_answer_closes_it(self) -> None:
        """A probe (or any batch) the sink answered closes it and reports how long it was open."""
        clock = Clock()
        breaker = circuit(1, clock)
        breaker.record(False)
        clock.now += 42
        assert breaker.open_for() == 42
        assert breaker.record(True) is Transition.CLOSED
        assert (breaker.is_open, breaker.open_for(), breaker.failed_probes) == (False, 0.0, 0)

    def test_a_ping_closes_it_on_probation(self) -> None:
        """Closed by a ping (no event to probe with), one more failed batch reopens it."""
        breaker = circuit(5)
        for _ in range(5):
            breaker.record(False)
        assert breaker.close_on_probation() is Transition.CLOSED
        assert breaker.record(False) is Transition.OPENED

    async def test_waiting_for_a_probe_ends_when_it_closes(self) -> None:
        """A worker waiting for the next probe wakes as soon as another batch closes it."""
        breaker = SinkCircuit(1, 30.0, 60.0)
        breaker.record(False)
        waiting = asyncio.create_task(breaker.wait_for_probe(asyncio.Event()))
        await asyncio.sleep(0.05)
        breaker.record(True)
        await asyncio.wait_for(waiting, 2)
        assert not breaker.is_open

    async def test_waiting_for_a_probe_ends_on_stop(self) -> None:
        """Stopping the worker ends the wait at once."""
        breaker = SinkCircuit(1, 30.0, 60.0)
        breaker.record(False)
        stopping = asyncio.Event()
        waiting = asyncio.create_task(breaker.wait_for_probe(stopping))
        stopping.set()
        await asyncio.wait_for(waiting, 2)
        assert breaker.is_open

"""GroupCommit: records written in groups by one shared writer task that nothing may end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from receiver.errors import PermanentSinkError, TransientSinkError
from receiver.models import ApplyOutcome
from receiver.sinks.grouping import GroupCommit

# Far below the worker's bound on a sink call (RECEIVER_SINK_TIMEOUT + 1 s): a caller that
# waited this long was left without an answer.
ANSWER_WITHIN_SECONDS = 5


class Writer:
    """Writes groups of names, failing any group that holds ``"bad"`` with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.groups: list[list[str]] = []
        self.release = asyncio.Event()

    async def __call__(self, group: list[str]) -> Sequence[ApplyOutcome | Exception]:
        self.groups.append(group)
        await self.release.wait()
        if "bad" in group:
            raise self.error
        return [ApplyOutcome.APPLIED] * len(group)


async def first_group_then_second(
    writer: Writer, groups: GroupCommit[str]
) -> tuple[list[ApplyOutcome | BaseException], list[ApplyOutcome | Exception]]:
    """One group with ``bad`` in it, then (queued while it is written) a second group."""
    first = [asyncio.create_task(groups.apply(name)) for name in ("ok-1", "bad")]
    await asyncio.sleep(0)  # the writer takes the first group and waits for release
    second = asyncio.create_task(groups.apply_many(["ok-2", "ok-3"]))
    await asyncio.sleep(0)
    writer.release.set()
    async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
        first_results = await asyncio.gather(*first, return_exceptions=True)
        second_results = await second
    return first_results, second_results


class TestGroupFailures:
    @pytest.mark.parametrize(
        "error",
        [OverflowError("Python int too large to convert to SQLite INTEGER"), RuntimeError("bug")],
        ids=["overflow", "runtime-error"],
    )
    async def test_any_exception_fails_only_its_group(self, error: Exception) -> None:
        """A group whose write raises anything answers each of its callers with that very
        exception at once; the writer goes on and writes the next group."""
        writer = Writer(error)
        groups = GroupCommit[str](writer)

        first, second = await first_group_then_second(writer, groups)

        assert [error, error] == first
        assert [ApplyOutcome.APPLIED, ApplyOutcome.APPLIED] == second
        assert [["ok-1", "bad"], ["ok-2", "ok-3"]] == writer.groups
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            assert ApplyOutcome.APPLIED is await groups.apply("ok-4")

    async def test_apply_many_hands_back_the_exception(self) -> None:
        """apply_many answers a failed group's items with the exception, in order."""
        error = RuntimeError("bug")
        writer = Writer(error)
        writer.release.set()
        groups = GroupCommit[str](writer)

        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            results = await groups.apply_many(["bad", "ok"])

        assert [error, error] == results

    async def test_sink_errors_still_fail_the_group(self) -> None:
        """A sink error for the whole group is each caller's answer, as before."""
        error = TransientSinkError("locked")
        writer = Writer(error)
        groups = GroupCommit[str](writer)

        first, second = await first_group_then_second(writer, groups)

        assert [error, error] == first
        assert [ApplyOutcome.APPLIED, ApplyOutcome.APPLIED] == second

    async def test_a_wrong_number_of_answers_fails_the_group(self) -> None:
        """A writer answering a group with too few outcomes fails that group, not the task."""

        async def one_answer(group: list[str]) -> Sequence[ApplyOutcome | Exception]:
            return [ApplyOutcome.APPLIED]

        groups = GroupCommit[str](one_answer)
        async with asyncio.timeout(ANSWER_WITHIN_SECONDS):
            results = await groups.apply_many(["a", "b"])
            alone = await groups.apply("c")

        assert [PermanentSinkError, PermanentSinkError] == [type(result) for result in results]
        assert "1 answers for a group of 2" in str(results[0])
        assert ApplyOutcome.APPLIED is alone

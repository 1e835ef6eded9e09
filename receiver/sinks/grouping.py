"""Group commit for sinks: records applied while one group is written form the next group.

A sink hands ``GroupCommit`` a function that writes a whole group in one transaction and
answers with one outcome (or sink error) per record; each caller of ``apply`` waits for
its own answer, which only comes after the group's commit. Under load one fsync and one
round of transaction overhead then cover many records; alone, a record is a group of one.

The writer task is shared by every caller, so nothing a group raises may end it: a group
whose write fails with anything (a sink error, or a bug such as a value the driver cannot
bind) answers each of its callers with that exception, and the writer goes on with the
next group. A writer that died instead would leave every caller waiting for its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from receiver.errors import PermanentSinkError, SinkError
from receiver.models import ApplyOutcome, SinkResult

T = TypeVar("T")
# A stale record may come back as a SinkResult saying what the record held.
Answer = ApplyOutcome | SinkResult
GroupWriter = Callable[[list[T]], Awaitable[Sequence[Answer | Exception]]]
# Records written in one transaction at most; more wait for the next one.
MAX_GROUP = 256


class GroupCommit(Generic[T]):
    """Queue records and write them in groups, one writer task at a time."""

    def __init__(self, write_group: GroupWriter[T]) -> None:
        self._write_group = write_group
        self._waiting: list[tuple[T, asyncio.Future[Answer]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def apply(self, item: T) -> Answer:
        [future] = self._enqueue([item])
        return await future

    async def apply_many(self, items: Sequence[T]) -> list[Answer | Exception]:
        """``apply`` for several items at once: one outcome or exception per item, in order
        (a sink error, or whatever else failed the item's group)."""
        futures = self._enqueue(items)
        results: list[Answer | Exception] = []
        try:
            for future in futures:
                try:
                    results.append(await future)
                except Exception as exc:  # the item's answer, handed back as apply_all does
                    results.append(exc)
        except asyncio.CancelledError:
            for future in futures:  # the writer skips them; nobody waits for their answers
                future.cancel()
            raise
        return results

    def _enqueue(self, items: Sequence[T]) -> list[asyncio.Future[Answer]]:
        """Queue items for the next group (starting the writer if idle); their answers."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Answer]] = [loop.create_future() for _ in items]
        self._waiting.extend(zip(items, futures, strict=True))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_groups())
        return futures

    async def _write_groups(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
            try:
                results = await self._write_group([item for item, _ in group])
                if len(results) != len(group):
                    raise PermanentSinkError(
                        f"sink bug: {len(results)} answers for a group of {len(group)}"
                    )
            except SinkError as exc:  # the group failed as a whole
                results = [exc] * len(group)
            except Exception as exc:
                # Not a sink error: a bug (an OverflowError from a driver, a TypeError). It
                # fails this group with its own type and message, which the worker records
                # (redacted) as "unexpected", logs with its traceback and retries.
                results = [exc] * len(group)
            except BaseException:
                # Cancelled (loop shutdown): nobody will answer this group, so say so.
                for _, future in group:
                    future.cancel()
                raise
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # the caller gave up (timeout, shutdown)
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

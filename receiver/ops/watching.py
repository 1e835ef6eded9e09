"""Reconciliation for operators and products: register submitted tasks, read the watch.

``track_tasks`` is what ``receiver track TASK_ID…`` and the admin API's
``POST /api/v1/tasks`` call right after a product submits a generation, so the task is
checked with Rivya's status API even if no webhook ever comes (issue 16).
``watch_status`` is re-exported from ``receiver.reconcile.status`` for ``status``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from receiver.ops.events import FilterError, iso_ms
from receiver.store import EventStore, now_ms
from receiver.store.watch import WatchChange, WatchOp

# A task id as Rivya's API and our record keys take it: printable ASCII, no spaces.
TASK_ID = re.compile(r"[\x21-\x7e]{1,255}")
MAX_TRACKED_AT_ONCE = 1000


class TaskIdError(FilterError):
    """A task id that cannot be one (CLI exit 2, API 400); the message says which."""


@dataclass(frozen=True, slots=True)
class TrackResult:
    task_ids: tuple[str, ...]
    newly_watched: int  # the others were watched already (their schedule stands)
    first_check_ms: int  # when the new ones are first checked

    def to_json(self) -> dict[str, Any]:
        return {
            "task_ids": list(self.task_ids),
            "tracked": len(self.task_ids),
            "newly_watched": self.newly_watched,
            "already_watched": len(self.task_ids) - self.newly_watched,
            "first_check_at": iso_ms(self.first_check_ms),
        }


def check_task_ids(task_ids: Sequence[object]) -> tuple[str, ...]:
    """The distinct task ids, in order; TaskIdError for anything that cannot be one."""
    if not task_ids:
        raise TaskIdError("task_ids: give at least one task id")
    if len(task_ids) > MAX_TRACKED_AT_ONCE:
        raise TaskIdError(f"task_ids: at most {MAX_TRACKED_AT_ONCE} at once")
    for position, task_id in enumerate(task_ids, start=1):
        if not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
            raise TaskIdError(
                f"task_ids: item {position} is not a task id "
                "(1 to 255 printable ASCII characters, no spaces)"
            )
    return tuple(dict.fromkeys(str(task_id) for task_id in task_ids))


async def track_tasks(
    store: EventStore, task_ids: Sequence[object], *, after_seconds: float
) -> TrackResult:
    """Watch ``task_ids`` (first check ``after_seconds`` from now) unless already watched."""
    checked = check_task_ids(task_ids)
    due = now_ms() + int(after_seconds * 1000)
    added = await store.watch.apply(WatchChange(task, WatchOp.TRACK, due) for task in checked)
    return TrackResult(checked, added, due)

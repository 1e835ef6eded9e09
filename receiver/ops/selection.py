"""What an operator action covers: event ids, or a filter (replay, resolve)."""

from __future__ import annotations

from dataclasses import dataclass

from receiver.keys import member_of
from receiver.ops.events import EventFilter, FilterError, select_all
from receiver.store import EventStore, StoredEvent


@dataclass(frozen=True, slots=True)
class Selection:
    """Exactly one of ``event_ids`` (of ``source``) or ``event_filter``."""

    source: str
    event_ids: tuple[str, ...] = ()
    event_filter: EventFilter | None = None

    def __post_init__(self) -> None:
        if bool(self.event_ids) == (self.event_filter is not None and self.event_filter.selects):
            raise FilterError(
                "give event ids or a filter (--status/--type/--record/--error/--since/--until), "
                "not both"
                if self.event_ids
                else "give event ids or a filter (--status/--type/--record/--error/--since/--until)"
            )

    @property
    def bulk(self) -> bool:
        return not self.event_ids

    def members(self) -> list[str]:
        """The ids' members, each once, in the order given."""
        return [member_of(self.source, event_id) for event_id in dict.fromkeys(self.event_ids)]


async def selected(
    store: EventStore, selection: Selection, *, scan_budget: int | None = None
) -> tuple[list[str], list[StoredEvent]]:
    """The members a selection covers, and for a filter the events it matched (walking at
    most ``scan_budget`` index members, when given)."""
    if selection.event_filter is not None and selection.bulk:
        events = await select_all(store, selection.event_filter, scan_budget=scan_budget)
        return [event.member for event in events], events
    return selection.members(), []

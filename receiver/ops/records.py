"""``receiver records show KEY`` (issue 14, item 9): the record as the sink holds it, and
the events that shaped it.

The record comes from the sink itself (``Sink.read``), so it shows what the product sees,
not what the receiver believes it wrote; the events come from the record's own index in
Redis (bounded), newest first, with the one whose id the record holds marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from receiver.keys import member_of
from receiver.ops.events import EventFilter, list_events, summary_json
from receiver.redaction import redact_value
from receiver.sinks.base import Sink, read_record
from receiver.store import EventStore, StoredEvent

EVENTS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class RecordView:
    record_key: str
    # The record in the shape of ``Record.to_json()``, or None if the sink has none.
    record: dict[str, Any] | None
    # The stored event whose id the record holds (``last_event_id``), if still stored.
    set_by: StoredEvent | None
    events: tuple[StoredEvent, ...]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = redact_value(
            {
                "record_key": self.record_key,
                "record": self.record,
                "set_by": summary_json(self.set_by) if self.set_by is not None else None,
            }
        )
        data["events"] = [summary_json(event) for event in self.events]
        return data


async def show_record(
    store: EventStore,
    sink: Sink,
    record_key: str,
    *,
    source: str | None = None,
    limit: int = EVENTS_SHOWN,
) -> RecordView:
    """The record and its events; ``RecordNotReadable`` if the sink cannot read back."""
    record = await read_record(sink, record_key)
    page = await list_events(store, EventFilter(source=source, record_key=record_key, limit=limit))
    set_by: StoredEvent | None = None
    if record is not None and record.get("last_event_id"):
        last_id = str(record["last_event_id"])
        set_by = next((event for event in page.events if event.event_id == last_id), None)
        if set_by is None and source is not None:
            set_by = await store.load(member_of(source, last_id))
    return RecordView(record_key, record, set_by, page.events)

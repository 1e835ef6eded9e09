"""An example sink plugin: records in process memory, shared by sinks with the same URL."""

from __future__ import annotations

from typing import Any, ClassVar

from receiver.models import ApplyOutcome, Record, SinkResult, format_time


class MemorySink:
    """Implements the ``receiver.sinks.base.Sink`` protocol without any storage."""

    stores: ClassVar[dict[str, dict[str, Record]]] = {}

    def __init__(self, url: str, settings: Any) -> None:
        self.records = self.stores.setdefault(url, {})

    async def apply(self, record: Record) -> ApplyOutcome | SinkResult:
        # No await between the read and the write: atomic within one event loop.
        stored = self.records.get(record.record_key)
        if stored is None or record.is_newer_than(stored.status, stored.source_updated_at):
            self.records[record.record_key] = record
            return ApplyOutcome.APPLIED
        if stored.last_event_id == record.last_event_id:
            return ApplyOutcome.APPLIED  # a redelivery of the stored event
        # What the record held, for the event's attempt history.
        held = {
            "status": stored.status,
            "source_updated_at": format_time(stored.source_updated_at),
            "last_event_id": stored.last_event_id,
        }
        return SinkResult(ApplyOutcome.STALE, held=held)

    async def read(self, record_key: str) -> dict[str, Any] | None:
        stored = self.records.get(record_key)
        return stored.to_json() if stored is not None else None

    async def ping(self) -> None:
        pass

    async def setup(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

"""The event store: every Redis query and write script of the receiver, in one package.

``events`` holds ``EventStore`` (ingest, queue, outcomes, operator actions and reads);
``rejections``, ``workers`` and ``audit`` are the logs it owns beside the events;
``values`` the dataclasses they take and answer; ``replies`` turns Redis answers into
those values. Nothing outside this package drives the Redis client.
"""

from receiver.store.events import EventStore, load_lua
from receiver.store.values import (
    AcceptResult,
    Attempt,
    EventOutcome,
    IncomingEvent,
    QueueEntry,
    StoredEvent,
    Vanished,
    history_entry,
    now_ms,
)

__all__ = [
    "AcceptResult",
    "Attempt",
    "EventOutcome",
    "EventStore",
    "IncomingEvent",
    "QueueEntry",
    "StoredEvent",
    "Vanished",
    "history_entry",
    "load_lua",
    "now_ms",
]

"""``events list --follow``: print events as they arrive, and again when their state changes.

Polls by cursor (the receive time of the newest event seen), so each poll reads only the
events received since the last one; events still pending are re-read for a while so the
operator sees them become applied, stale or dead (kubectl ``get -w`` style: a new line per
change). Costs are bounded: the watch list holds at most FOLLOW_WATCH_MAX events for at
most FOLLOW_WATCH_SECONDS. SIGINT (Ctrl-C) and SIGTERM end it cleanly, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections import OrderedDict
from collections.abc import Callable, Sequence

from receiver import ops
from receiver.models import EventState
from receiver.store import EventStore, StoredEvent, now_ms

FOLLOW_POLL_SECONDS = 1.0
FOLLOW_WATCH_SECONDS = 300.0
FOLLOW_WATCH_MAX = 1000
# Events remembered with the state last printed, so none is printed twice for one state.
FOLLOW_SEEN_MAX = 10_000
# Each poll looks this far behind its cursor: ingest stamps an event when the request
# starts and stores it a little later (and hosts' clocks differ a little), so an event
# can appear in the index with a receive time just before the previous poll.
FOLLOW_LOOKBACK_MS = 5_000

Printer = Callable[[Sequence[StoredEvent]], None]


async def follow(
    store: EventStore,
    event_filter: ops.EventFilter,
    print_events: Printer,
    *,
    poll_seconds: float = FOLLOW_POLL_SECONDS,
) -> None:
    """Print the latest matches (oldest first), then new and changed ones until stopped."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _follow(store, event_filter, print_events, stop, poll_seconds)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _follow(
    store: EventStore,
    event_filter: ops.EventFilter,
    print_events: Printer,
    stop: asyncio.Event,
    poll_seconds: float,
) -> None:
    cursor = now_ms()
    latest = await ops.list_events(store, dataclasses.replace(event_filter, until_ms=cursor))
    # Later polls select by everything but the state and reason (checked when printing),
    # so an event that arrives pending and dies later is still seen dying.
    scan = dataclasses.replace(event_filter, state=None, reason_code=None, limit=None)
    # What the first look-back will find that was stored before we started and left out
    # of the latest matches (by --limit): old news, not to be printed as it arrives.
    before = await ops.list_events(
        store, dataclasses.replace(scan, since_ms=cursor - FOLLOW_LOOKBACK_MS, until_ms=cursor)
    )
    old = {event.member for event in before} - {event.member for event in latest}
    printed: OrderedDict[str, EventState] = OrderedDict()
    watched: dict[str, int] = {}  # pending members -> when first seen (ms)

    def show(events: Sequence[StoredEvent]) -> None:
        fresh = []
        for event in events:
            if event.member in old:
                continue
            if event.state is EventState.PENDING:
                watched.setdefault(event.member, now_ms())
            else:
                watched.pop(event.member, None)
            if printed.get(event.member) is event.state or not event_filter.matches(event):
                continue
            printed[event.member] = event.state
            printed.move_to_end(event.member)
            fresh.append(event)
        while len(printed) > FOLLOW_SEEN_MAX:
            printed.popitem(last=False)
        if fresh:
            print_events(fresh)

    show(list(reversed(latest)))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_seconds)
        if stop.is_set():
            return
        started = now_ms()
        arrived = await ops.list_events(
            store,
            dataclasses.replace(scan, since_ms=cursor - FOLLOW_LOOKBACK_MS, until_ms=started),
        )
        changed = await _reread(store, watched, started)
        cursor = started
        show(sorted([*changed, *reversed(arrived)], key=lambda event: event.received_ms))


async def _reread(store: EventStore, watched: dict[str, int], now: int) -> list[StoredEvent]:
    """The watched (pending) events as they are now; forgets old and vanished ones."""
    for member, since in list(watched.items()):
        if now - since > FOLLOW_WATCH_SECONDS * 1000:
            del watched[member]
    while len(watched) > FOLLOW_WATCH_MAX:
        del watched[next(iter(watched))]
    members = list(watched)
    found = await store.load_many(members)
    for member, event in zip(members, found, strict=True):
        if event is None:
            del watched[member]
    return [event for event in found if event is not None]

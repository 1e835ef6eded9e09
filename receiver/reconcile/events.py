"""Status answers as events: what a poll stores, through the same accept step as a webhook.

A generation Rivya's status API returns becomes an event of source ``rivya-poll`` whose id
is derived from the task id, the generation's ``updated_at`` and its status (SPEC §10): a
repeated poll of an unchanged state is a duplicate, not a new event. Its body is the
generation wrapped in the documented envelope, so ``rivya.map_event`` maps it exactly as it
maps a webhook, and the sink's ordering guard decides between the two: a poll can never
regress a record, and a webhook for the same state afterwards is stale (first wins).

Tasks the reconciler stops watching without a terminal state leave a dead event saying
why: ``unknown_task`` (the API does not know it) or ``gave_up`` (still not finished after
``RECEIVER_RECONCILE_MAX_AGE``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from receiver.bodies import BodyCipher
from receiver.models import EventState, ReasonCode
from receiver.rivya import UnmappableEvent, identify
from receiver.settings import POLL_SOURCE
from receiver.store import IncomingEvent

EVENT_ID_PREFIX = "poll_"
BY = "reconcile"  # the ``by`` of a polled event's first history entry


def _derived_id(*parts: str) -> str:
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{EVENT_ID_PREFIX}{digest[:40]}"


def poll_event_id(task_id: str, updated_at: str, status: str) -> str:
    """The event id of one observed state: the same state polled twice is one event."""
    return _derived_id(task_id, updated_at, status)


def envelope(event_id: str, generation: dict[str, Any]) -> dict[str, Any]:
    """The documented webhook envelope (SPEC §2) around a polled generation."""
    status = generation.get("status")
    document: dict[str, Any] = {"id": event_id, "type": f"generation.{status}"}
    updated_at = generation.get("updated_at")
    if isinstance(updated_at, str) and updated_at:
        document["created_at"] = updated_at
    document["data"] = generation
    return document


def poll_event(
    task_id: str, generation: dict[str, Any], cipher: BodyCipher, received_ms: int
) -> IncomingEvent:
    """The event one polled generation stands for (pending, or dead if unmappable)."""
    updated_at = generation.get("updated_at")
    event_id = poll_event_id(
        task_id,
        updated_at if isinstance(updated_at, str) else "",
        str(generation.get("status")),
    )
    document = envelope(event_id, generation)
    state, last_error, reason_code = EventState.PENDING, "", ""
    event_type = str(document["type"])[:100]
    try:
        event_type, _ = identify(document)
    except UnmappableEvent as exc:
        # Stored and shown like an unmappable webhook: an answer we cannot record is
        # something ops must see (a new status Rivya added, say), not something to drop.
        state, last_error, reason_code = EventState.DEAD, f"unmappable: {exc.reason}", exc.code
    return _event(task_id, event_id, document, event_type, cipher, received_ms, state, last_error,
                  reason_code)  # fmt: skip


def ended_event(
    task_id: str,
    reason: ReasonCode,
    error: str,
    since_ms: int,
    cipher: BodyCipher,
    received_ms: int,
    generation: dict[str, Any] | None = None,
) -> IncomingEvent:
    """The dead event that says why a watch ended without a terminal state.

    One per watch (the id includes when it began), with the last polled generation as its
    body when there was one, so a replay applies that state through the guard.
    """
    event_id = _derived_id(task_id, reason.value, str(since_ms))
    if generation is not None:
        document = envelope(event_id, generation)
    else:
        document = {"id": event_id, "type": f"reconcile.{reason.value}", "data": {"task": task_id}}
    return _event(task_id, event_id, document, f"reconcile.{reason.value}", cipher, received_ms,
                  EventState.DEAD, error, reason.value)  # fmt: skip


def _event(
    task_id: str,
    event_id: str,
    document: dict[str, Any],
    event_type: str,
    cipher: BodyCipher,
    received_ms: int,
    state: EventState,
    last_error: str,
    reason_code: str,
) -> IncomingEvent:
    body = orjson.dumps(document)
    sealed, encrypted = cipher.seal(body)
    return IncomingEvent(
        source=POLL_SOURCE,
        event_id=event_id,
        body=sealed,
        body_sha256=hashlib.sha256(body).hexdigest(),
        encrypted=encrypted,
        received_ms=received_ms,
        signed_ts=0,  # nothing signed it: we asked Rivya's API ourselves
        event_type=event_type,
        record_key=task_id,
        state=state,
        last_error=last_error,
        reason_code=reason_code,
        content_type="application/json",
        by=BY,
    )

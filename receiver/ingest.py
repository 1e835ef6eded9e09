"""From raw request parts to an ``IncomingEvent``: verify, identify, map, seal.

Pure apart from the clock passed in: the HTTP layer reads the bytes, this decides what
they are, the store writes them. Verification runs first, on the exact bytes received;
nothing is parsed before the signature checks out (PITFALLS: Ingest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from receiver.bodies import BodyCipher
from receiver.models import EventState
from receiver.rivya import UnmappableEvent, event_type_of, identify, parse_body
from receiver.signing import EVENT_ID_PATTERN, Verifier
from receiver.store import IncomingEvent


def build_event(
    source: str,
    verifier: Verifier,
    cipher: BodyCipher,
    headers: Mapping[str, str],
    body: bytes,
    received_ms: int,
) -> IncomingEvent:
    """Verify a delivery and describe it for storage; raises DeliveryRejected (4xx)."""
    verified = verifier.verify(headers, body, received_ms / 1000)
    body_sha256 = hashlib.sha256(body).hexdigest()
    event_id = verified.event_id
    state, last_error, reason_code = EventState.PENDING, "", ""
    event_type, record_key = "unknown", ""
    document = None
    try:
        document = parse_body(body)
        if event_id is None:  # stripe scheme: the id is in the signed body
            body_id = document.get("id")
            event_id = (
                body_id
                if isinstance(body_id, str) and EVENT_ID_PATTERN.fullmatch(body_id)
                else None
            )
        event_type, record_key = identify(document)
    except UnmappableEvent as exc:
        # Authentic but unusable: store it as dead so ops can fix the mapping and replay.
        state, last_error, reason_code = EventState.DEAD, exc.last_error, exc.code
        if document is not None:
            event_type = event_type_of(document)
    if event_id is None:
        # A signed body without an id still deserves dedup: its content names it.
        event_id = f"sha256-{body_sha256[:40]}"
    sealed, encrypted = cipher.seal(body)
    return IncomingEvent(
        source=source,
        event_id=event_id,
        body=sealed,
        body_sha256=body_sha256,
        encrypted=encrypted,
        received_ms=received_ms,
        signed_ts=verified.timestamp,
        event_type=event_type,
        record_key=record_key,
        state=state,
        last_error=last_error,
        reason_code=reason_code,
        content_type=headers.get("content-type", "")[:100],
        signing_key=verified.key,
    )

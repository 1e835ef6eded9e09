"""``send-test``: build a realistic, signed Rivya delivery and POST it to a receiver.

The body follows the SPEC §2 envelope; it is signed like the source's scheme expects, so
it passes the same verification a real delivery does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from receiver.settings import SourceConfig
from receiver.signing import HMAC_PREFIX, Scheme, sign_standard, sign_stripe

SEND_TEST_TIMEOUT_SECONDS = 10.0


class NoSigningSecret(Exception):
    """``send-test`` has no shared secret to sign with (only ``whpk_`` keys configured)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A signed, realistic Rivya delivery, ready to POST."""

    event_id: str
    task_id: str
    body: bytes
    headers: dict[str, str]


def sample_body(event_id: str, task_id: str, status: str, now: float) -> bytes:
    """An envelope like SPEC §2 around a generation that just finished."""
    updated = datetime.fromtimestamp(now, UTC)
    created = datetime.fromtimestamp(now - 60, UTC)
    failed = status == "failed"
    result_url = f"https://media.example/{task_id}.png"
    generation = {
        "id": task_id,
        "status": status,
        "model": "z-image",
        "reserved_credits": 1,
        "final_credits": 0 if failed else 1,
        "client_request_id": f"send-test-{task_id}",
        "created_at": _rivya_time(created),
        "updated_at": _rivya_time(updated),
        "result": None if failed else {"primary_url": result_url, "urls": [result_url]},
        "error": {"code": "generation_failed", "message": "send-test failure"} if failed else None,
    }
    return orjson.dumps(
        {
            "id": event_id,
            "type": f"generation.{status}",
            "api_version": "2026-05-11",
            "created_at": _rivya_time(updated),
            "data": generation,
        }
    )


def _rivya_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def build_delivery(
    source: SourceConfig,
    *,
    status: str = "succeeded",
    task_id: str | None = None,
    secret: str | None = None,
    now: float | None = None,
) -> Delivery:
    """Sign a fresh test event with ``secret`` or the source's first shared key.

    Raises NoSigningSecret when there is nothing to sign with (only ``whpk_`` keys).
    """
    now = time.time() if now is None else now
    timestamp = int(now)
    event_id = f"evt_{uuid.uuid4().hex}"
    task_id = task_id or f"task_test_{uuid.uuid4().hex[:12]}"
    body = sample_body(event_id, task_id, status, now)
    headers = {"content-type": "application/json", "user-agent": "receiver-send-test"}
    if source.scheme is Scheme.STRIPE:
        if secret is None and not source.keys:
            raise NoSigningSecret(
                f"source {source.name} has no signing secret (set RECEIVER_WEBHOOK_SECRET "
                "or pass --secret)"
            )
        key = secret or source.keys[0].reveal()
        headers[source.signature_header] = sign_stripe(key, timestamp, body)
        return Delivery(event_id, task_id, body, headers)
    if secret is None:
        shared = [key.reveal() for key in source.keys if key.reveal().startswith(HMAC_PREFIX)]
        if not shared:
            problem = "only whpk_ (verify-only) keys" if source.keys else "no signing secret"
            raise NoSigningSecret(
                f"source {source.name} has {problem}; set RECEIVER_WEBHOOK_SECRET "
                "or pass --secret whsec_..."
            )
        secret = shared[0]
    try:
        signature = sign_standard(secret, event_id, timestamp, body)
    except ValueError as exc:
        raise NoSigningSecret(f"--secret cannot sign: {exc}") from None
    headers.update(
        {
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
    )
    return Delivery(event_id, task_id, body, headers)


async def post_delivery(
    url: str, delivery: Delivery, wait_seconds: float = SEND_TEST_TIMEOUT_SECONDS
) -> tuple[int, Any]:
    """POST the delivery like Rivya does (no redirects); the status and the JSON answer.

    Raises httpx.HTTPError when the URL cannot be reached.
    """
    async with httpx.AsyncClient(timeout=wait_seconds, follow_redirects=False) as client:
        response = await client.post(url, content=delivery.body, headers=delivery.headers)
    try:
        answer: Any = response.json()
    except ValueError:
        answer = response.text[:500]
    return response.status_code, answer

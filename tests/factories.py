"""Build realistic Rivya events and sign them like Rivya would, with our own test secret."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from receiver.signing import sign_standard
from tests.conftest import TEST_SECRET


def generation(
    task_id: str | None = None,
    status: str = "succeeded",
    updated_at: str = "2026-05-10T00:01:00.000Z",
    **overrides: Any,
) -> dict[str, Any]:
    """A generation object as `GET /api/v1/generations/{taskId}` returns it (SPEC §2)."""
    task_id = task_id or f"task_{uuid.uuid4().hex[:12]}"
    failed = status == "failed"
    body: dict[str, Any] = {
        "id": task_id,
        "status": status,
        "model": "z-image",
        "reserved_credits": 1,
        "final_credits": 0 if failed else 1,
        "client_request_id": f"order-{task_id}",
        "created_at": "2026-05-10T00:00:00.000Z",
        "updated_at": updated_at,
        "result": None
        if failed or status in ("queued", "processing")
        else {
            "primary_url": f"https://media.example/{task_id}.png",
            "urls": [f"https://media.example/{task_id}.png"],
        },
        "error": {"code": "content_policy", "message": "rejected"} if failed else None,
    }
    body.update(overrides)
    return body


def envelope(gen: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """The documented envelope around a generation object."""
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": f"generation.{gen['status']}",
        "api_version": "2026-05-11",
        "created_at": gen["updated_at"],
        "data": gen,
    }


def event_body(**kwargs: Any) -> bytes:
    """A ~700-byte signed-ready body with a fresh task id unless one is given."""
    return orjson.dumps(envelope(generation(**kwargs)))


def signed_headers(
    body: bytes,
    event_id: str | None = None,
    timestamp: int | None = None,
    secret: str = TEST_SECRET,
) -> dict[str, str]:
    """Standard Webhooks headers for ``body`` (a fresh ``msg_`` id unless given)."""
    event_id = event_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard(secret, event_id, timestamp, body),
    }


def base_env(tmp_path: Any, redis_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a test service or CLI process."""
    import os

    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
        "RECEIVER_DATA_DIR": str(tmp_path),
        "RECEIVER_SINK": f"sqlite:///{tmp_path}/records.db",
        "RECEIVER_SHUTDOWN_DRAIN": "0s",
        # Tests run side by side (and beside other checkouts): the admin listener is off
        # unless a test gives it a free port (``ServiceProcess(admin=True)``).
        "RECEIVER_ADMIN_ADDR": "",
    }
    if redis_url is not None:
        env["RECEIVER_REDIS_URL"] = redis_url
    env.update(extra)
    return env

"""Rivya's status API: ``GET {base}/api/v1/generations/{task id}`` (SPEC §10), one answer
at a time, classified for the reconciler.

An async httpx client that ignores the environment's proxies and netrc (``trust_env``
off: the key goes to the configured host and nowhere else), follows no redirects, bounds
every request in time and every answer in size. The key travels in
``RECEIVER_RIVYA_API_KEY_HEADER``: ``Authorization: Bearer <key>`` by default, the bare key
in any other header. Nothing here ever puts the key, or an answer's body, in a message.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from receiver.redaction import Secret, redact_text
from receiver.rivya import UnmappableEvent, find_generation

API_PATH = "/api/v1/generations/"
DEFAULT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
# A Retry-After longer than this is taken as this: a pause of hours would look like an
# outage; the next 429 pauses again.
MAX_RETRY_AFTER_SECONDS = 600.0
USER_AGENT = "receiver-reconcile/1 (+https://github.com/rivya/receiver)"


class AnswerKind(StrEnum):
    """What one status request found; the values are ``receiver_reconcile_polls_total``'s
    outcomes, apart from ``generation`` (split into terminal / in_progress by the caller)."""

    GENERATION = "generation"
    NOT_FOUND = "unknown_task"
    RATE_LIMITED = "rate_limited"
    REFUSED = "refused"
    FAILED = "failed"  # 5xx, 408, an unexpected status, the host unreachable
    TIMEOUT = "timeout"
    INVALID = "invalid_answer"  # not JSON, no generation, another task, too large


@dataclass(frozen=True, slots=True)
class Answer:
    kind: AnswerKind
    status: int = 0  # the HTTP status; 0 when there was no answer
    generation: dict[str, Any] | None = None
    retry_after_seconds: float | None = None
    detail: str = ""  # one short, redacted line for the log and the event's last_error

    @property
    def transient(self) -> bool:
        return self.kind in (AnswerKind.FAILED, AnswerKind.TIMEOUT, AnswerKind.INVALID)


def key_header_value(header: str, key: Secret) -> str:
    """``Bearer <key>`` in ``Authorization``, the bare key in any other header."""
    return f"Bearer {key.reveal()}" if header.lower() == "authorization" else key.reveal()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), bounded; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, seconds))


class StatusApi:
    """One HTTP client for the status API, shared by a reconciler's concurrent polls."""

    def __init__(
        self,
        base_url: str,
        key: Secret,
        header: str,
        *,
        max_answer_bytes: int,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        max_connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_answer_bytes = max_answer_bytes
        self._client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds)
            ),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={
                header: key_header_value(header, key),
                "accept": "application/json",
                # Raw bytes only: the size bound must hold for what we hold in memory, and
                # a compressed answer could expand far beyond it.
                "accept-encoding": "identity",
                "user-agent": USER_AGENT,
            },
        )

    def url_for(self, task_id: str) -> str:
        return f"{self.base_url}{API_PATH}{quote(task_id, safe='')}"

    async def fetch(self, task_id: str) -> Answer:
        """The status of one task, never raising for what the network or Rivya does."""
        try:
            async with self._client.stream("GET", self.url_for(task_id)) as response:
                return await self._classify(task_id, response)
        except httpx.TimeoutException as exc:
            return Answer(AnswerKind.TIMEOUT, detail=f"no answer in time ({type(exc).__name__})")
        except httpx.HTTPError as exc:
            return Answer(AnswerKind.FAILED, detail=_describe(exc))

    async def _classify(self, task_id: str, response: httpx.Response) -> Answer:
        status = response.status_code
        if status in (401, 403):
            detail = f"HTTP {status}: the API key was refused"
            return Answer(AnswerKind.REFUSED, status, detail=detail)
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return Answer(
                AnswerKind.RATE_LIMITED, status, retry_after_seconds=retry_after, detail="HTTP 429"
            )
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            detail = "answer is compressed (we ask for identity)"
            return Answer(AnswerKind.INVALID, status, detail=detail)
        body = await self._read(response)
        if body is None:
            return Answer(
                AnswerKind.INVALID, status, detail=f"answer over {self.max_answer_bytes} bytes"
            )
        if status == 404:
            # Only the API's own "no such task" counts: an HTML 404 is more likely a wrong
            # RECEIVER_RIVYA_API_URL, which must not end every watch.
            if body.strip() and not _is_json(response):
                return Answer(
                    AnswerKind.INVALID,
                    status,
                    detail="HTTP 404 that is not the API's JSON (is RECEIVER_RIVYA_API_URL right?)",
                )
            return Answer(AnswerKind.NOT_FOUND, status, detail="HTTP 404: Rivya does not know it")
        if status != 200:
            return Answer(AnswerKind.FAILED, status, detail=f"HTTP {status}")
        return _generation_answer(task_id, body)

    async def _read(self, response: httpx.Response) -> bytes | None:
        """The whole answer, or None as soon as it passes the size bound."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_answer_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_answer_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._client.aclose()


def _generation_answer(task_id: str, body: bytes) -> Answer:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Answer(AnswerKind.INVALID, 200, detail="answer is not JSON")
    if not isinstance(document, dict):
        return Answer(AnswerKind.INVALID, 200, detail="answer is not a JSON object")
    try:
        generation = find_generation(document)
    except UnmappableEvent:
        return Answer(AnswerKind.INVALID, 200, detail="answer holds no generation")
    answered_id = generation.get("id")
    if isinstance(answered_id, int) and not isinstance(answered_id, bool):
        answered_id = str(answered_id)
    # An answer about another task must never change this task's record.
    if answered_id != task_id:
        return Answer(AnswerKind.INVALID, 200, detail="answer is about another task")
    if not isinstance(generation.get("status"), str):
        return Answer(AnswerKind.INVALID, 200, detail="answer has no status")
    return Answer(AnswerKind.GENERATION, 200, generation=generation)


def _is_json(response: httpx.Response) -> bool:
    media = str(response.headers.get("content-type", "")).split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _describe(exc: httpx.HTTPError) -> str:
    detail = redact_text(str(exc))[:200]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__

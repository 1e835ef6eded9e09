"""HTTP sink: POST the normalized record, signed with Standard Webhooks (SPEC §5, §9).

The downstream system guards order itself: 2xx means applied, 409 means stale. The
``webhook-id`` is the event id, the same on every retry and replay, and so is the body: the
record's own fields (``Record.event_json``), without the attempt's ``applied_at``. Only
``webhook-timestamp`` (the attempt's time) and with it the signature change per attempt, so
a downstream that deduplicates by id (as Standard Webhooks says it should) sees one message
(PITFALLS "Processing").

The downstream's answer is untrusted too: only its status matters, so at most
``MAX_ANSWER_BYTES`` of its body are read (raw, never decompressed), and the client ignores
the environment (``trust_env=False``): no ``HTTP_PROXY`` sees the sink URL with its token,
no ``.netrc`` adds credentials.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from receiver.errors import (
    ConfigError,
    PermanentSinkError,
    RecordNotReadable,
    TransientSinkError,
)
from receiver.models import ApplyOutcome, Record, SinkResult
from receiver.redaction import mask_url, redact_named_values, scrub, url_secrets
from receiver.signing import sign_standard

if TYPE_CHECKING:
    from receiver.settings import Settings

USER_AGENT = "receiver-http-sink/0.1"
# Enough for any status page or error document; past it the connection is dropped instead
# of read (a 200 MB answer once took the worker's RSS to 498 MB).
MAX_ANSWER_BYTES = 64 * 1024
# Worth retrying (SPEC §5): the downstream timed out or is rate limiting; 5xx too.
TRANSIENT_STATUSES = frozenset({408, 429})
STALE_STATUS = 409
# The start of a downstream's answer kept in the attempt history (issue 14, item 4).
ANSWER_SNIPPET_BYTES = 512


def answer_snippet(content: bytes) -> str | None:
    """The first ``ANSWER_SNIPPET_BYTES`` of an answer body as text, redacted (an error
    page can echo a token or a signed URL); None for an empty body."""
    if not content:
        return None
    text = redact_named_values(content[:ANSWER_SNIPPET_BYTES].decode("utf-8", "replace"))
    return text[:ANSWER_SNIPPET_BYTES]


def forward_key(settings: Settings) -> str:
    """The ``whsec_`` key that signs forwarded records (validated by Settings)."""
    if settings.forward_secret is None:
        raise ConfigError("RECEIVER_FORWARD_SECRET: required when RECEIVER_SINK is an HTTP URL")
    return settings.forward_secret.reveal()


class HttpSink:
    """Forwards each record to a URL and maps the answer to an outcome or an error."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._url = url
        self._label = mask_url(url)
        # Never let the query string (signed URLs, tokens) or a password reach a message.
        self._hidden = url_secrets(url)
        self._key = forward_key(settings)
        self._timeout = httpx.Timeout(settings.sink_timeout_seconds)
        self._client: httpx.AsyncClient | None = None

    async def apply(self, record: Record) -> SinkResult:
        body = orjson.dumps(record.event_json())
        # A fresh timestamp per attempt, so a late retry is not outside the tolerance; it is
        # also the attempt's time, signed, for a downstream that wants one.
        timestamp = int(time.time())
        signature = sign_standard(self._key, record.last_event_id, timestamp, body)
        headers = {
            "content-type": "application/json",
            "webhook-id": record.last_event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
        status, head = await self._send("POST", content=body, headers=headers)
        answer = answer_snippet(head)
        if 200 <= status < 300:
            return SinkResult(ApplyOutcome.APPLIED, status=status, answer=answer)
        if status == STALE_STATUS:
            return SinkResult(ApplyOutcome.STALE, status=status, answer=answer)
        message = f"http sink {self._label}: answered {status}"
        if status in TRANSIENT_STATUSES or status >= 500:
            raise TransientSinkError(message, status=status, answer=answer)
        # Other 4xx, and 3xx: redirects are not followed (a record is not re-sent elsewhere).
        raise PermanentSinkError(message, status=status, answer=answer)

    async def read(self, record_key: str) -> dict[str, Any] | None:
        raise RecordNotReadable(
            f"http sink {self._label}: the downstream system holds the records; "
            "it has no read API this receiver knows"
        )

    async def ping(self) -> None:
        # Any HTTP answer, even 405 to a HEAD, shows the downstream is reachable (SPEC §9).
        await self._send("HEAD")

    async def setup(self) -> None:
        """Nothing to create: the downstream owns its storage."""

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _send(
        self, method: str, *, content: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """The answer's status and the first ``ANSWER_SNIPPET_BYTES`` of its body; the body
        is read up to MAX_ANSWER_BYTES and the rest dropped."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                headers={"user-agent": USER_AGENT},
                trust_env=False,
            )
        try:
            async with self._client.stream(
                method, self._url, content=content, headers=headers
            ) as response:
                head = await _drain(response)
                return response.status_code, head
        except httpx.UnsupportedProtocol as exc:
            raise PermanentSinkError(self._describe(exc)) from exc
        except httpx.TransportError as exc:
            # Timeouts, refused or reset connections, DNS failures: all may pass.
            raise TransientSinkError(self._describe(exc)) from exc
        except httpx.InvalidURL as exc:
            raise PermanentSinkError(self._describe(exc)) from exc
        except httpx.HTTPError as exc:
            # E.g. an answer whose body cannot be decoded: the next attempt may fare better.
            raise TransientSinkError(self._describe(exc)) from exc

    def _describe(self, exc: Exception) -> str:
        detail = scrub(str(exc) or type(exc).__name__, self._hidden)
        return f"http sink {self._label}: {type(exc).__name__}: {detail}"


async def _drain(response: httpx.Response) -> bytes:
    """Read the answer's body if it is small, so the connection can be reused; a larger one
    is left unread and the connection is closed with the response. Answers its first
    ``ANSWER_SNIPPET_BYTES`` (for the attempt history)."""
    received = 0
    head = b""
    async for chunk in response.aiter_raw():
        if len(head) < ANSWER_SNIPPET_BYTES:
            head += chunk[: ANSWER_SNIPPET_BYTES - len(head)]
        received += len(chunk)
        if received > MAX_ANSWER_BYTES:
            break
    return head

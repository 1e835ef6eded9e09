"""Keep rejected deliveries, and why, without slowing ingest (issue 14, item 3).

The webhook handler hands every rejection to ``RejectionRecorder.note`` after the answer
is sent. Each process records the first ``REJECTIONS_BURST`` and then
``REJECTIONS_PER_SECOND`` (a token bucket); beyond that a flood is only counted. Recorded
ones are described (header names, skew, keys tried: ``Verifier.diagnose``) and written in
batches every ``REJECTIONS_FLUSH_SECONDS``, one script call each, on the shared
auto-pipeline; a Redis failure loses a batch of diagnostics, never an answer.
Never a body, a signature or a header value: only header names are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from receiver import metrics
from receiver.keys import REJECTIONS_BURST, REJECTIONS_FLUSH_SECONDS, REJECTIONS_PER_SECOND
from receiver.logs import get_logger
from receiver.redis_client import REDIS_ERRORS
from receiver.signing import Diagnosis, Verifier
from receiver.store.rejections import RejectionLog
from receiver.store.values import now_ms

log = get_logger("receiver.rejections")
MAX_SOURCE = 64
MAX_HEADER_NAMES = 40
MAX_HEADER_NAME = 64
MAX_CLIENT = 64
# Entries waiting for the next flush at most; the bucket keeps far fewer in practice.
MAX_BUFFERED = 512


class TokenBucket:
    """``burst`` at once, then ``rate`` per second: how many rejections get a log entry."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _printable(text: str, limit: int) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def header_names(raw_headers: Any) -> str:
    """The names (never the values) of the headers sent, lower case, sorted, bounded."""
    names = sorted(
        {_printable(name.decode("latin-1").lower(), MAX_HEADER_NAME) for name, _ in raw_headers}
    )
    return ",".join(names[:MAX_HEADER_NAMES])


class RejectionRecorder:
    """Samples, describes and batches rejections for the ``RejectionLog``."""

    def __init__(
        self,
        rejection_log: RejectionLog,
        *,
        rate: float = REJECTIONS_PER_SECOND,
        burst: int = REJECTIONS_BURST,
    ) -> None:
        self._log = rejection_log
        self._bucket = TokenBucket(rate, burst)
        self._entries: list[dict[str, str]] = []
        self._counts: Counter[str] = Counter()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def note(
        self,
        *,
        scope: Mapping[str, Any],
        source: str,
        status: int,
        code: str,
        verifier: Verifier | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        body_bytes: int = 0,
    ) -> None:
        """Count one rejection and, within the rate, describe it for the log (no I/O)."""
        self._counts[code] += 1
        if len(self._entries) >= MAX_BUFFERED or not self._bucket.take():
            metrics.REJECTED_SAMPLED_OUT.inc()
            self._schedule()
            return
        diagnosis: Diagnosis | None = None
        if (
            verifier is not None
            and headers is not None
            and body is not None
            and status
            in (
                400,
                401,
            )
        ):
            diagnosis = verifier.diagnose(headers, body, time.time())
        client = scope.get("client")
        self._entries.append(
            {
                "at_ms": str(now_ms()),
                "source": _printable(source, MAX_SOURCE),
                "status": str(status),
                "code": code,
                "client": _printable(str(client[0]), MAX_CLIENT) if client else "",
                "headers": header_names(scope.get("headers", ())),
                "event_id": (diagnosis.event_id or "") if diagnosis else "",
                "skew": str(diagnosis.skew_seconds)
                if diagnosis and diagnosis.skew_seconds is not None
                else "",
                "body_bytes": str(len(body) if body is not None else body_bytes),
                "keys_tried": str(len(diagnosis.keys_tried)) if diagnosis else "0",
                "scheme": (diagnosis.scheme if diagnosis else verifier.scheme.value)
                if verifier is not None
                else "",
                "reason": diagnosis.reason if diagnosis else code,
            }
        )
        metrics.REJECTED_RECORDED.inc()
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(REJECTIONS_FLUSH_SECONDS, self._start_flush)

    def _start_flush(self) -> None:
        self._flush_handle = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def flush(self) -> None:
        """Write what was noted since the last flush (one script call)."""
        entries, self._entries = self._entries, []
        counts, self._counts = self._counts, Counter()
        if not entries and not counts:
            return
        try:
            await self._log.write(entries, counts)
        except REDIS_ERRORS as exc:
            # Diagnostics only: the deliveries were answered; their counters still count.
            log.warning("rejections_not_recorded", count=len(entries), error=type(exc).__name__)

    async def aclose(self) -> None:
        """Write what is still buffered (graceful shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        await self.flush()

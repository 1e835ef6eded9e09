"""Log sink (``log:``): one JSON line per record on stdout, for development (SPEC §5).

stdout is an output like any log, so the line passes the same redaction as every log
line (SPEC §8): result URLs (often signed, temporary links) lose their query strings, and
any field that holds a secret-looking value (an ``rvya_sk_`` key in a client request id,
a bearer token in an error message) is masked.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from receiver.errors import RecordNotReadable
from receiver.models import ApplyOutcome, Record, format_time
from receiver.redaction import mask_url, redact_value

if TYPE_CHECKING:
    from receiver.settings import Settings


def log_line(record: Record) -> dict[str, Any]:
    """The record as a log entry, with every URL masked and every field redacted."""
    fields = record.to_json()
    if record.primary_url is not None:
        fields["primary_url"] = mask_url(record.primary_url)
    fields["result_urls"] = [mask_url(url) for url in record.result_urls]
    line: dict[str, Any] = redact_value(
        {
            "event": "record_applied",
            "level": "info",
            "timestamp": format_time(datetime.now(UTC)),
            **fields,
        }
    )
    return line


class LogSink:
    """Prints records; there is nothing to guard, so every record is applied."""

    def __init__(self, url: str, settings: Settings) -> None:
        del url, settings  # nothing to configure

    async def apply(self, record: Record) -> ApplyOutcome:
        # Looked up per call, so a redirected stdout (tests, --json tools) is honoured.
        sys.stdout.write(orjson.dumps(log_line(record)).decode() + "\n")
        sys.stdout.flush()
        return ApplyOutcome.APPLIED

    async def read(self, record_key: str) -> dict[str, Any] | None:
        raise RecordNotReadable("log sink: records only go to stdout; there is nothing to read")

    async def ping(self) -> None:
        """Always reachable."""

    async def setup(self) -> None:
        """Nothing to create."""

    async def aclose(self) -> None:
        """Nothing to release."""

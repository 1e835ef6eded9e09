"""A captured delivery, diagnosed: what ``receiver verify`` (and the console) explain.

Pure: headers and body in, a diagnosis out, ``now`` injected. The verifier's own
``diagnose`` says what it found; this adds what an operator holding a capture asks next:
would the signature have matched when it was signed (a clock or replay problem, or the
key), and does the body file carry a newline the sender never signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from receiver.errors import InvalidSignature, TimestampOutOfTolerance

if TYPE_CHECKING:
    from receiver.signing import Diagnosis, Verifier

MAX_HEADER_LINES = 200


class CaptureError(ValueError):
    """A headers file that is neither ``Name: value`` lines nor a JSON object."""


def parse_headers(data: bytes) -> dict[str, str]:
    """Request headers from a capture: a JSON object of name -> value, or ``Name: value``
    lines (a raw HTTP request or ``curl -D`` output; a request or status line is skipped,
    and so is everything after the first blank line). Names are lower-cased and a repeated
    header keeps its last value, as the receiver itself reads them."""
    if data.lstrip().startswith(b"{"):
        return _json_headers(data)
    headers: dict[str, str] = {}
    last = ""
    lines = data.decode("latin-1").splitlines()
    for number, line in enumerate(lines[:MAX_HEADER_LINES], start=1):
        if not line.strip():
            if headers:
                break  # the end of the header block; a body may follow
            continue
        if line[0] in " \t" and last:  # an obsolete folded continuation line
            headers[last] += " " + line.strip()
            continue
        if number == 1 and "HTTP/" in line and ":" not in line.split(" ", 1)[0]:
            continue  # "POST /webhooks/rivya HTTP/1.1" or "HTTP/1.1 200 OK"
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or " " in name.strip():
            raise CaptureError(f"line {number}: not a 'Name: value' header line")
        last = name.strip().lower()
        headers[last] = value.strip()
    if not headers:
        raise CaptureError("no headers found (expected 'Name: value' lines or a JSON object)")
    return headers


def _json_headers(data: bytes) -> dict[str, str]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CaptureError("starts like JSON but is not valid JSON") from None
    if not isinstance(document, dict):
        raise CaptureError("a JSON headers file must be one object of name: value")
    headers: dict[str, str] = {}
    for name, value in document.items():
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            value = value[-1]
        if not isinstance(value, str):
            raise CaptureError(f"header {name[:60]!r}: the value must be a string")
        headers[name.strip().lower()] = value.strip()
    return headers


@dataclass(frozen=True, slots=True)
class CaptureDiagnosis:
    """The diagnosis of a capture, and the second look that explains it further."""

    diagnosis: Diagnosis
    # For a timestamp outside the tolerance: the verdict at the delivery's own timestamp,
    # which tells a clock or replay problem (the key matches) from a key problem.
    at_signed_time: Diagnosis | None = None
    # When the body only verifies without its final newline (an editor added it).
    hint: str = ""

    @property
    def valid(self) -> bool:
        return self.diagnosis.code is None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.diagnosis.to_json(),
            "at_signed_time": self.at_signed_time.to_json() if self.at_signed_time else None,
            "hint": self.hint,
        }


def diagnose_capture(
    verifier: Verifier, headers: Mapping[str, str], body: bytes, now: float
) -> CaptureDiagnosis:
    """What ``verifier`` makes of a captured delivery at ``now``, with the second looks."""
    diagnosis = verifier.diagnose(headers, body, now)
    at_signed_time = None
    if diagnosis.code == TimestampOutOfTolerance.code and diagnosis.timestamp is not None:
        at_signed_time = verifier.diagnose(headers, body, diagnosis.timestamp)
    hint = ""
    failed = at_signed_time if at_signed_time is not None else diagnosis
    if failed.code == InvalidSignature.code and body.endswith(b"\n"):
        stripped = body.rstrip(b"\r\n")
        again = verifier.diagnose(headers, stripped, failed.timestamp or now)
        if again.matched_key is not None:
            hint = (
                f"without the final line break of the body file the signature matches key "
                f"{again.matched_key}: the file has a newline the sender did not sign"
            )
    return CaptureDiagnosis(diagnosis, at_signed_time, hint)

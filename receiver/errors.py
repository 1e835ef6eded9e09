"""Errors that carry their own HTTP answer, and the few that stop start-up.

Each delivery rejection knows its status and a stable snake_case code (SPEC §3, §9);
one place in the app turns them into ``{"error": code}``. Messages never hold request
data, so they are safe to log.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConfigError(Exception):
    """A setting is missing or invalid; start-up stops with this one line."""


class DeliveryRejected(Exception):
    """A delivery we answer with a 4xx/5xx. ``code`` goes into the JSON body."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.code)

    def payload(self) -> dict[str, Any]:
        """The JSON body of the answer: ``{"error": code}`` and what a subclass adds."""
        return {"error": self.code}


class UnknownSource(DeliveryRejected):
    status, code = 404, "unknown_source"


class NotFound(DeliveryRejected):
    status, code = 404, "not_found"


class MethodNotAllowed(DeliveryRejected):
    status, code = 405, "method_not_allowed"


class PayloadTooLarge(DeliveryRejected):
    status, code = 413, "payload_too_large"


class RequestTimeout(DeliveryRejected):
    """The body was not complete within ``RECEIVER_READ_TIMEOUT`` of its headers."""

    status, code = 408, "request_timeout"


class UnsupportedMediaType(DeliveryRejected):
    status, code = 415, "unsupported_media_type"


class MissingSignatureHeader(DeliveryRejected):
    """A header the source's scheme requires is absent. The answer names the headers the
    scheme expects (SPEC §10): a sender signing with another scheme sees which at once.
    Header names are configuration, not secrets."""

    status, code = 400, "missing_signature_header"

    def __init__(self, detail: str | None = None, expected: Sequence[str] = ()) -> None:
        super().__init__(detail)
        self.expected = tuple(expected)

    def payload(self) -> dict[str, Any]:
        return {"error": self.code, "expected": list(self.expected)}


class InvalidSignature(DeliveryRejected):
    status, code = 401, "invalid_signature"


class InvalidTimestamp(DeliveryRejected):
    """The timestamp header or field is present but not a unix time."""

    status, code = 401, "invalid_timestamp"


class TimestampOutOfTolerance(DeliveryRejected):
    status, code = 401, "timestamp_out_of_tolerance"


class StorageUnavailable(DeliveryRejected):
    """Redis did not answer: nothing was acknowledged, the sender must retry."""

    status, code = 503, "storage_unavailable"
    retry_after_seconds = 5


class SinkError(Exception):
    """Base for sink failures; the message must already be free of secrets.

    An HTTP sink adds the downstream's answer: ``status`` and the first bytes of its body
    (``answer``, already redacted), which the event's attempt history keeps.
    """

    def __init__(
        self, message: str = "", *, status: int | None = None, answer: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.answer = answer


class TransientSinkError(SinkError):
    """Worth retrying: timeouts, connection errors, 408/429/5xx."""


class PermanentSinkError(SinkError):
    """Retrying cannot help: the event goes to ``dead`` at once."""


class RecordNotReadable(Exception):
    """The sink cannot read its records back (HTTP and log sinks; plugins without ``read``)."""

"""Verify and sign deliveries: the ``standard`` (Standard Webhooks) and ``stripe`` schemes.

Pure functions of raw bytes, headers and an injected ``now``: no I/O, no text decoding of
the body. Every malformed input becomes one of our own rejections (never ``ValueError``),
comparisons are constant-time, and unknown signature versions are skipped (SPEC §2, §9).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from receiver.errors import (
    DeliveryRejected,
    InvalidSignature,
    InvalidTimestamp,
    MissingSignatureHeader,
    TimestampOutOfTolerance,
)

HMAC_PREFIX = "whsec_"
ED25519_PREFIX = "whpk_"
# Bounds that keep a hostile header from costing more than a normal one.
MAX_SIGNATURE_ENTRIES = 16
MAX_EVENT_ID_LENGTH = 255
_KEY_SEPARATORS = re.compile(r"[\s,]+")
# Shorter shared keys are accepted (a sender's choice) but reported (start-up, config check).
MIN_KEY_BYTES = 16
_STANDARD_ONLY = frozenset("+/")
_URLSAFE_ONLY = frozenset("-_")
_BASE64_CHARS = frozenset(string.ascii_letters + string.digits) | _STANDARD_ONLY | _URLSAFE_ONLY
_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")
# Matched with ``fullmatch``: ``$`` would let a trailing newline into ids (and log lines).
EVENT_ID_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{MAX_EVENT_ID_LENGTH}}}")


class Scheme(StrEnum):
    STANDARD = "standard"
    STRIPE = "stripe"


@dataclass(frozen=True, slots=True)
class Verified:
    """A delivery whose signature checked out. ``event_id`` is None for ``stripe``
    (the id lives in the body, which the caller parses after verification); ``key`` is
    the fingerprint of the key that matched (``key_fingerprint``)."""

    event_id: str | None
    timestamp: int
    key: str = ""


def key_fingerprint(key: str, scheme: Scheme = Scheme.STANDARD) -> str:
    """A short, stable name for a key that reveals nothing about it: ``fp_`` and the first
    8 hex digits of the SHA-256 of the key material (what a ``whsec_``/``whpk_`` key
    decodes to, so every base64 spelling of one key has one fingerprint; for ``stripe``
    the secret's own bytes, which is what it signs with).

    32 bits of a hash of a secret leave the secret exactly as unguessable; they only tell
    keys apart, so ops can see which key verified a delivery during a rotation.
    """
    material = key.encode()
    if scheme is Scheme.STANDARD:
        for prefix in (HMAC_PREFIX, ED25519_PREFIX):
            # Not a valid key: Settings refuses it; name what was given.
            if key.startswith(prefix):
                with contextlib.suppress(ValueError):
                    material = _key_material(key, prefix, 1)
    return "fp_" + hashlib.sha256(material).hexdigest()[:8]


def parse_keys(scheme: Scheme, raw: str) -> list[str]:
    """Split a key list (space or comma separated) and validate each key for ``scheme``.

    Raises ValueError with a message that names the key by position, never its value.
    """
    keys = [part for part in _KEY_SEPARATORS.split(raw.strip()) if part]
    if scheme is Scheme.STANDARD:
        for position, key in enumerate(keys, start=1):
            _standard_key(key, position)
    return keys


def key_warnings(scheme: Scheme, keys: Sequence[str]) -> list[str]:
    """Why some valid keys are weak (shorter than MIN_KEY_BYTES), one line per key, each
    naming the key by position and its length, never its value. ``keys`` are valid.

    The lines avoid the text ``whsec_``: log redaction masks it wherever it appears.
    """
    warnings: list[str] = []
    for position, key in enumerate(keys, start=1):
        if scheme is Scheme.STRIPE:
            size = len(key.encode())  # the whole string is the key
        elif key.startswith(HMAC_PREFIX):
            size = len(_key_material(key, HMAC_PREFIX, position))
        else:
            continue  # an Ed25519 public key is always 32 bytes
        if size < MIN_KEY_BYTES:
            unit = "byte" if size == 1 else "bytes"
            warnings.append(
                f"key {position}: only {size} {unit} of key material; use at least "
                f"{MIN_KEY_BYTES} (`receiver gen-secret` makes 32)"
            )
    return warnings


def _standard_key(key: str, position: int) -> bytes | Ed25519PublicKey:
    if key.startswith(HMAC_PREFIX):
        return _key_material(key, HMAC_PREFIX, position)
    if key.startswith(ED25519_PREFIX):
        material = _key_material(key, ED25519_PREFIX, position)
        if len(material) != 32:
            raise ValueError(
                f"key {position}: whpk_ key is {len(material)} bytes; an Ed25519 public key is 32"
            )
        return Ed25519PublicKey.from_public_bytes(material)
    raise ValueError(f"key {position}: must start with whsec_ or whpk_")


def _key_material(key: str, prefix: str, position: int) -> bytes:
    """The bytes after ``prefix``, or ValueError saying what is wrong (never the key).

    Standard, URL-safe (``-_``) and unpadded base64 are all accepted. The reference
    libraries differ here: the Python, Ruby and PHP ones decode unpadded text but drop
    ``-`` and ``_`` silently (a different key, which then never verifies), Go, Java, C#
    and Elixir refuse both. A sender that wrote its secret in URL-safe base64 signs with
    the bytes URL-safe decoding gives back, so that is what we take.
    """
    where = f"key {position}: {prefix}"
    text = key[len(prefix) :]
    core = text.rstrip("=")  # padding carries no information: any amount is accepted
    if not core:
        raise ValueError(f"{where} has no key material after the prefix")
    if "=" in core:
        raise ValueError(f"{where} key has '=' before its end (padding goes only at the end)")
    bad = next((n for n, char in enumerate(core, start=1) if char not in _BASE64_CHARS), None)
    if bad is not None:
        raise ValueError(
            f"{where} key has a character outside base64 (A-Z a-z 0-9 + / or - _) "
            f"at position {bad} after the prefix"
        )
    if _STANDARD_ONLY & set(core) and _URLSAFE_ONLY & set(core):
        raise ValueError(f"{where} key mixes standard (+ /) and URL-safe (- _) base64")
    if len(core) % 4 == 1:
        raise ValueError(f"{where} key has a length base64 cannot have (a character too many?)")
    standard = core.translate(_URLSAFE_TO_STANDARD) + "=" * (-len(core) % 4)
    return binascii.a2b_base64(standard.encode("ascii"), strict_mode=True)


def _b64decode(text: str) -> bytes | None:
    # binascii's strict mode checks the alphabet and the padding in C; b64decode's
    # validate=True runs a regex first (twice the cost, on every signature entry).
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        return None


# What a 400 for a missing header names (SPEC §10): the scheme's own header names; the
# svix- aliases are accepted too, but not advertised.
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _header(headers: Mapping[str, str], expected: Sequence[str], *names: str) -> str:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    raise MissingSignatureHeader(f"missing header {names[0]}", expected)


def _timestamp(text: str, now: float, tolerance: int) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InvalidTimestamp
    timestamp = int(text)
    # Two-sided: a timestamp from the future is as suspicious as an old one.
    if abs(now - timestamp) > tolerance:
        raise TimestampOutOfTolerance
    return timestamp


class Verifier:
    """Checks deliveries of one source against all of its keys (rotation: any may match)."""

    def __init__(
        self,
        scheme: Scheme,
        keys: Sequence[str],
        tolerance_seconds: int = 300,
        signature_header: str = "Rivya-Signature",
    ) -> None:
        self.scheme = scheme
        self.tolerance_seconds = tolerance_seconds
        self.signature_header = signature_header.lower()
        # As configured (``Rivya-Signature``): the names a 400 tells the sender to send.
        self.expected_headers: tuple[str, ...] = (
            (signature_header,) if scheme is Scheme.STRIPE else STANDARD_HEADERS
        )
        self._hmac_keys: list[bytes] = []
        self._ed25519_keys: list[Ed25519PublicKey] = []
        # Fingerprints beside the keys, in the same order (what a match reports).
        self._hmac_names: list[str] = []
        self._ed25519_names: list[str] = []
        self.fingerprints = tuple(key_fingerprint(key, scheme) for key in keys)
        for position, key in enumerate(keys, start=1):
            name = self.fingerprints[position - 1]
            if scheme is Scheme.STRIPE:
                self._hmac_keys.append(key.encode())
                self._hmac_names.append(name)
                continue
            material = _standard_key(key, position)
            if isinstance(material, bytes):
                self._hmac_keys.append(material)
                self._hmac_names.append(name)
            else:
                self._ed25519_keys.append(material)
                self._ed25519_names.append(name)

    @property
    def can_sign(self) -> bool:
        """True when at least one key is a shared secret (Ed25519 keys only verify)."""
        return bool(self._hmac_keys)

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        """Return the verified id and timestamp, or raise a DeliveryRejected (400/401)."""
        if self.scheme is Scheme.STRIPE:
            return self._verify_stripe(headers, body, now)
        return self._verify_standard(headers, body, now)

    def _verify_standard(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        expected = self.expected_headers
        event_id = _header(headers, expected, "webhook-id", "svix-id")
        timestamp_text = _header(headers, expected, "webhook-timestamp", "svix-timestamp")
        signatures = _header(headers, expected, "webhook-signature", "svix-signature")
        if not EVENT_ID_PATTERN.fullmatch(event_id):
            raise InvalidSignature("malformed webhook-id")
        timestamp = _timestamp(timestamp_text, now, self.tolerance_seconds)
        signed = b"%s.%d.%s" % (event_id.encode(), timestamp, body)
        # PERF: hmac.digest is OpenSSL's one-shot HMAC (no HMAC object, no copy): ~1 µs
        # per key against ~3 µs for hmac.new(...).digest().
        hmac_digests = [hmac.digest(key, signed, "sha256") for key in self._hmac_keys]
        for entry in signatures.split(" ")[:MAX_SIGNATURE_ENTRIES]:
            version, _, encoded = entry.partition(",")
            candidate = _b64decode(encoded)
            if candidate is None:
                continue
            if version == "v1":
                for position, digest in enumerate(hmac_digests):
                    if hmac.compare_digest(candidate, digest):
                        return Verified(event_id, timestamp, self._hmac_names[position])
            elif version == "v1a":
                matched = self._ed25519_match(candidate, signed)
                if matched is not None:
                    return Verified(event_id, timestamp, matched)
        raise InvalidSignature

    def _ed25519_match(self, signature: bytes, signed: bytes) -> str | None:
        """The fingerprint of the public key that verifies ``signature``, if any."""
        for public_key, name in zip(self._ed25519_keys, self._ed25519_names, strict=True):
            try:
                public_key.verify(signature, signed)
            except _CryptoInvalidSignature:
                continue
            return name
        return None

    def _verify_stripe(self, headers: Mapping[str, str], body: bytes, now: float) -> Verified:
        header = _header(headers, self.expected_headers, self.signature_header)
        timestamp_text: str | None = None
        candidates: list[str] = []
        for item in header.split(",")[: MAX_SIGNATURE_ENTRIES * 2]:
            name, _, value = item.strip().partition("=")
            if name == "t":
                timestamp_text = value
            elif name == "v1" and value.isascii():
                # Non-ASCII cannot be hex; skipping it keeps encode() below from raising.
                candidates.append(value.strip().lower())
        if timestamp_text is None:
            raise InvalidTimestamp
        timestamp = _timestamp(timestamp_text, now, self.tolerance_seconds)
        signed = b"%d.%s" % (timestamp, body)
        for key, name in zip(self._hmac_keys, self._hmac_names, strict=True):
            expected = hmac.digest(key, signed, "sha256").hex()
            if any(hmac.compare_digest(expected.encode(), c.encode()) for c in candidates):
                return Verified(None, timestamp, name)
        raise InvalidSignature

    def diagnose(self, headers: Mapping[str, str], body: bytes, now: float) -> Diagnosis:
        """Explain what ``verify`` makes of a delivery, without raising or revealing a key.

        For the rejected-delivery log and ``receiver verify``: which header set was found,
        the skew, which keys were tried (by fingerprint), and the answer with its reason.
        """
        return _diagnose(self, headers, body, now)


# Header sets of the ``standard`` scheme, in the order ``verify`` looks for them.
STANDARD_HEADER_SETS = (
    ("webhook-*", ("webhook-id", "webhook-timestamp", "webhook-signature")),
    ("svix-*", ("svix-id", "svix-timestamp", "svix-signature")),
)
MAX_DIAGNOSED_ID = 128


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What verifying one delivery found, safe to store and print (no key, no signature).

    ``code`` is None when the delivery verifies (``matched_key`` names the key), else the
    rejection's code (``status`` 400 or 401); ``reason`` says why in one line.
    """

    scheme: str
    header_set: str
    missing: tuple[str, ...]
    event_id: str | None
    timestamp: int | None
    skew_seconds: int | None
    tolerance_seconds: int
    signatures: int
    keys_tried: tuple[str, ...]
    matched_key: str | None
    status: int
    code: str | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "scheme": self.scheme,
            "header_set": self.header_set,
            "missing": list(self.missing),
            "event_id": self.event_id,
            "timestamp": self.timestamp,
            "skew_seconds": self.skew_seconds,
            "tolerance_seconds": self.tolerance_seconds,
            "signatures": self.signatures,
            "keys_tried": list(self.keys_tried),
            "matched_key": self.matched_key,
            "valid": self.code is None,
            "status": self.status,
            "code": self.code,
            "reason": self.reason,
        }


def _printable(text: str, limit: int) -> str:
    """Sender text for a diagnosis: bounded, non-printable characters replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:limit])


def _diagnose(verifier: Verifier, headers: Mapping[str, str], body: bytes, now: float) -> Diagnosis:
    if verifier.scheme is Scheme.STRIPE:
        header_set = verifier.signature_header
        required: tuple[str, ...] = (verifier.signature_header,)
    else:
        header_set, required = next(
            ((name, names) for name, names in STANDARD_HEADER_SETS if headers.get(names[0])),
            STANDARD_HEADER_SETS[0],
        )
    missing = tuple(name for name in required if not headers.get(name))
    event_id: str | None = None
    timestamp: int | None = None
    signatures = 0
    if verifier.scheme is Scheme.STANDARD:
        raw_id = headers.get(required[0], "")
        event_id = _printable(raw_id, MAX_DIAGNOSED_ID) if raw_id else None
        raw_ts = headers.get(required[1], "").strip()
        if raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 12:
            timestamp = int(raw_ts)
        signatures = len([e for e in headers.get(required[2], "").split(" ") if e])
    else:
        for item in headers.get(verifier.signature_header, "").split(","):
            name, _, value = item.strip().partition("=")
            if name == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
                timestamp = int(value)
            elif name == "v1":
                signatures += 1
    skew = round(now - timestamp) if timestamp is not None else None
    keys_tried = verifier.fingerprints
    try:
        verified = verifier.verify(headers, body, now)
    except DeliveryRejected as exc:
        reason = _reason(exc, missing, skew, verifier.tolerance_seconds, len(keys_tried))
        tried = keys_tried if exc.code == InvalidSignature.code else ()
        return Diagnosis(
            verifier.scheme.value, header_set, missing, event_id, timestamp, skew,
            verifier.tolerance_seconds, signatures, tried, None, exc.status, exc.code, reason,
        )  # fmt: skip
    return Diagnosis(
        verifier.scheme.value, header_set, missing, event_id, timestamp, skew,
        verifier.tolerance_seconds, signatures, keys_tried, verified.key, 0, None,
        f"valid: signed with key {verified.key}",
    )  # fmt: skip


def _reason(
    exc: DeliveryRejected, missing: tuple[str, ...], skew: int | None, tolerance: int, keys: int
) -> str:
    if isinstance(exc, MissingSignatureHeader):
        return f"missing header {', '.join(missing) or str(exc)}"
    if isinstance(exc, TimestampOutOfTolerance) and skew is not None:
        direction = "in the past" if skew > 0 else "in the future"
        return f"timestamp {abs(skew)} s {direction}, tolerance {tolerance} s"
    if isinstance(exc, InvalidTimestamp):
        return "timestamp is not a unix time in seconds"
    if str(exc) and str(exc) != exc.code:
        return str(exc)  # our own messages hold no request data (errors.py)
    if keys == 0:
        return "no key configured for this source"
    return f"no signature matches any of the {keys} configured key(s)"


def sign_standard(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """A ``webhook-signature`` value (``v1,<base64>``) for a ``whsec_`` secret.

    Raises ValueError for anything else: a ``whpk_`` key cannot sign, and a lenient decode
    of a bad key would sign with bytes no receiver holds. Bare base64 (no prefix) is taken
    as a ``whsec_`` secret, as the reference library does.
    """
    if not secret.startswith((HMAC_PREFIX, ED25519_PREFIX)):
        secret = HMAC_PREFIX + secret
    key = _standard_key(secret, 1)
    if not isinstance(key, bytes):
        raise ValueError("key 1: a whpk_ key can only verify; signing needs a whsec_ key")
    signed = b"%s.%d.%s" % (event_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """A ``t=…,v1=…`` header value keyed with the whole secret string."""
    digest = hmac.new(secret.encode(), b"%d.%s" % (timestamp, body), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"

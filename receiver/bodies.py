"""Stored bodies, optionally encrypted at rest with Fernet (SPEC §6).

The first key encrypts; every key decrypts, so keys rotate without downtime.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from receiver.redaction import Secret


class BodyDecryptError(Exception):
    """No configured key opens this body (a key was removed too early)."""


class BodyCipher:
    """Seals bodies for storage and opens them again."""

    def __init__(self, keys: Sequence[Secret]) -> None:
        self._fernet = MultiFernet([Fernet(key.reveal()) for key in keys]) if keys else None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, body: bytes) -> tuple[bytes, bool]:
        """The bytes to store and whether they are encrypted."""
        if self._fernet is None:
            return body, False
        return self._fernet.encrypt(body), True

    def open(self, stored: bytes, encrypted: bool) -> bytes:
        if not encrypted:
            return stored
        if self._fernet is None:
            raise BodyDecryptError("body is encrypted but RECEIVER_ENCRYPTION_KEYS is not set")
        try:
            return self._fernet.decrypt(stored)
        except InvalidToken:
            raise BodyDecryptError("no key in RECEIVER_ENCRYPTION_KEYS opens this body") from None

    def rotate(self, stored: bytes, encrypted: bool) -> bytes:
        """Re-encrypt under the first key (plaintext bodies get encrypted)."""
        if self._fernet is None:
            raise BodyDecryptError("RECEIVER_ENCRYPTION_KEYS is not set")
        if not encrypted:
            return self._fernet.encrypt(stored)
        try:
            return self._fernet.rotate(stored)
        except InvalidToken:
            raise BodyDecryptError("no key in RECEIVER_ENCRYPTION_KEYS opens this body") from None

"""Who may use the console and the admin API: the users file, access tokens, roles.

``RECEIVER_ADMIN_USERS_FILE`` has one line per person: ``NAME ROLE HASH``, where ROLE is
``viewer`` or ``operator`` and HASH is ``sha256:<hex>`` of that person's token
(``receiver admin-token NAME ROLE`` prints a new token once, and the line). Blank lines and
``#`` comments are ignored. The file holds no secret: a hash of a 256-bit random token
cannot be turned back into the token.

Why SHA-256 and not bcrypt/argon2: those are slow on purpose so that a stolen hash of a
*human-chosen* password cannot be brute-forced. Our tokens are 32 random bytes (256 bits)
made by ``secrets``; no amount of guessing finds a preimage of their hash, so a slow hash
would add nothing but ~100 ms of CPU to every API call authenticated by a Bearer token
(and make the API an easy way to burn the cores ingest needs). The ``sha256:`` prefix
names the scheme, so a line can move to another one later without a format change.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from receiver.errors import ConfigError
from receiver.logs import get_logger

TOKEN_PREFIX = "rcvadm_"  # noqa: S105 - a prefix, not a token; recognised by receiver.redaction wherever it appears
TOKEN_BYTES = 32
HASH_SCHEME = "sha256"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
# How often a request may look at the file's mtime: edits (a revoked person) apply within
# this long, without a restart, and a burst of requests costs one stat.
RELOAD_CHECK_SECONDS = 2.0
log = get_logger("receiver.console")


class Role(StrEnum):
    """What a person may do: viewers read; operators also replay and resolve."""

    VIEWER = "viewer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class User:
    """One person from the users file."""

    name: str
    role: Role
    token_hash: str

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR

    @property
    def fingerprint(self) -> str:
        """A short digest of the token hash: sessions carry it, so a new token ends them."""
        return hashlib.sha256(self.token_hash.encode()).hexdigest()[:16]


def new_token() -> str:
    """A fresh access token: the prefix and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return f"{HASH_SCHEME}:{hashlib.sha256(token.encode()).hexdigest()}"


def users_file_line(name: str, role: Role, token: str) -> str:
    """The line that gives ``name`` the ``role`` with ``token`` (what admin-token prints)."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            "a name is 1-64 letters, digits and . _ @ -, starting with one of the first"
        )
    return f"{name} {role.value} {hash_token(token)}"


def parse_users(text: str, where: str) -> dict[str, User]:
    """The users in a file's text; ConfigError naming ``where`` and the line on any fault."""
    users: dict[str, User] = {}
    hashes: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        parts = content.split()
        if len(parts) != 3:
            raise ConfigError(f"{where}: line {number}: expected NAME ROLE sha256:HASH")
        name, role, token_hash = parts
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: line {number}: not a valid name")
        if role not in tuple(Role):
            raise ConfigError(f"{where}: line {number}: role must be viewer or operator")
        if not _HASH.fullmatch(token_hash):
            # Never echoed: someone may have pasted the token itself here.
            raise ConfigError(
                f"{where}: line {number}: the third field must be sha256:<64 hex digits> "
                "(the line `receiver admin-token` prints, never the token itself)"
            )
        if name in users or token_hash in hashes:
            raise ConfigError(f"{where}: line {number}: {name} or its token is listed twice")
        users[name] = User(name, Role(role), token_hash)
        hashes.add(token_hash)
    return users


class UserDirectory:
    """The users file, read at start-up and again whenever it changes.

    Without a file (``path`` None) nobody can sign in: the console and the API answer 401
    to everything, while ``/metrics`` and ``/readyz`` keep working.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._users: dict[str, User] = {}
        self._mtime_ns = -1
        self._checked = 0.0
        if path is not None:
            self._load(initial=True)

    @property
    def configured(self) -> bool:
        return self.path is not None

    def _load(self, *, initial: bool) -> None:
        assert self.path is not None
        where = "RECEIVER_ADMIN_USERS_FILE"
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # Not there (yet): nobody can sign in; it is picked up once it appears (a
            # Kubernetes Secret marked optional, created after the pod started).
            if initial:
                log.warning("admin_users_file_missing", path=str(self.path))
            self._users, self._mtime_ns = {}, -2
            return
        except OSError as exc:
            raise ConfigError(
                f"RECEIVER_ADMIN_USERS_FILE: cannot read {self.path}: {exc.strerror}"
            ) from None
        try:
            text = self.path.read_text(encoding="utf-8")
            users = parse_users(text, where)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            message = (
                str(exc)
                if isinstance(exc, ConfigError)
                else f"{where}: cannot read {self.path}: "
                f"{exc.strerror if isinstance(exc, OSError) else 'not UTF-8 text'}"
            )
            if initial:
                raise ConfigError(message) from None
            # A bad edit keeps the last good list rather than locking everyone out.
            log.error("admin_users_reload_failed", detail=message)
            return
        if not initial:
            log.info("admin_users_reloaded", users=len(users))
        self._users, self._mtime_ns = users, stat.st_mtime_ns

    def _refresh(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime = -2
        if mtime != self._mtime_ns:
            self._load(initial=False)

    def by_token(self, token: str) -> User | None:
        """The user whose token this is, compared in constant time against every entry."""
        self._refresh()
        presented = hash_token(token).encode()
        found: User | None = None
        for user in self._users.values():
            # No early exit: the time taken does not tell how many entries were tried.
            if hmac.compare_digest(presented, user.token_hash.encode()):
                found = user
        return found

    def by_name(self, name: str) -> User | None:
        self._refresh()
        return self._users.get(name)

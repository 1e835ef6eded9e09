"""Sign-in, sessions, CSRF and the failed-sign-in limit of the admin listener.

Two ways in (SPEC §10): ``Authorization: Bearer <token>`` (scripts; no CSRF token needed,
a browser never sends that header by itself), or the session cookie the sign-in page sets
(browsers; every POST then carries the session's CSRF token).

The cookie is signed with itsdangerous (what Starlette's SessionMiddleware uses), holds the
person's name, a fingerprint of their token hash, the CSRF token and the time it was issued;
it is ``HttpOnly``, ``SameSite=Strict``, expires after ``RECEIVER_ADMIN_SESSION_TTL``, and is
``Secure`` when the request came over HTTPS. The role is looked up in the users file on every
request, so demoting or removing a person, or giving them a new token, takes effect at once.

The signing key is 32 random bytes kept in Redis (``keys.CONSOLE_SESSION_KEY``), created by
whichever replica needs it first (SET NX): every ``serve`` and ``console`` process sharing the
Redis accepts the others' sessions with nothing to configure. The trade-off: whoever can read
that Redis key can forge a session; they can already replay or delete every event there, so
it gives away nothing new, and deleting the key signs everybody out.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from receiver.console.users import User, UserDirectory
from receiver.keys import CONSOLE_SESSION_KEY_CACHE_SECONDS
from receiver.logs import get_logger
from receiver.store.console import ConsoleData

SESSION_COOKIE = "receiver_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SESSION_SALT = "receiver.console.session.v1"
MAX_TOKEN_LENGTH = 200
log = get_logger("receiver.console")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, and how: ``token`` (Bearer) or ``session`` (cookie)."""

    user: User
    via: str
    csrf: str = ""

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def can_act(self) -> bool:
        return self.user.can_act

    def csrf_ok(self, presented: str | None) -> bool:
        """Bearer requests need no CSRF token; session requests must present theirs."""
        if self.via == "token":
            return True
        return bool(presented) and hmac.compare_digest(
            (presented or "").encode(), self.csrf.encode()
        )


class AuthFailure(Exception):
    """Why a request is not let in: its status, error code and any headers."""

    def __init__(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.headers = headers or {}


class FailureLimiter:
    """Failed sign-ins per client address and in all, over a sliding window.

    In memory, per process: a flood of bad tokens never reaches Redis (which ingest needs).
    With N replicas the limits are N times as wide; with 256-bit tokens the limit is not
    what stops guessing, it keeps the log and the CPU quiet. The global limit also stops a
    caller that spreads over many addresses; while it holds, new sign-ins and Bearer calls
    wait, sessions already signed in keep working.
    """

    def __init__(
        self,
        per_client: int = 10,
        overall: int = 100,
        window_seconds: float = 60.0,
        max_clients: int = 10_000,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window = window_seconds
        self.max_clients = max_clients
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window:
            times.popleft()

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic() if now is None else now
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window - now)
        times = self._clients.get(client)
        if times is not None:
            self._trim(times, now)
            if len(times) >= self.per_client:
                waits.append(times[0] + self.window - now)
        return max(1, int(max(waits)) + 1) if waits else None

    def record(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._all.append(now)
        times = self._clients.pop(client, None) or deque()
        times.append(now)
        self._clients[client] = times  # most recent last; the oldest client is dropped first
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        self._trim(self._all, now)


class SessionKey:
    """The session signing key from Redis (``EventStore.console``), cached for a minute."""

    def __init__(self, console: ConsoleData) -> None:
        self._console = console
        self._key: bytes | None = None
        self._read_at = 0.0

    async def get(self) -> bytes:
        now = time.monotonic()
        if self._key is None or now - self._read_at > CONSOLE_SESSION_KEY_CACHE_SECONDS:
            self._key = await self._console.session_key(secrets.token_bytes(32))
            self._read_at = now
        return self._key


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def is_https(request: Request) -> bool:
    """True over HTTPS, directly or behind a proxy that says so in ``X-Forwarded-Proto``.

    The header is trusted from anyone: it can only add ``Secure`` to the cookie, which makes
    a spoofing client's own sign-in fail over plain HTTP and never weakens anything.
    """
    forwarded = request.headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


class Authenticator:
    """Checks tokens and session cookies against the users file."""

    def __init__(
        self,
        users: UserDirectory,
        session_key: SessionKey,
        session_seconds: float,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self.users = users
        self.session_key = session_key
        self.session_seconds = session_seconds
        self.limiter = limiter or FailureLimiter()

    async def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(await self.session_key.get(), salt=SESSION_SALT)

    def check_token(self, request: Request, token: str, *, purpose: str) -> User:
        """The user a token belongs to; AuthFailure 429 while limited, 401 when wrong."""
        client = client_address(request)
        wait = self.limiter.retry_after(client)
        if wait is not None:
            log.warning("admin_sign_in_limited", client=client, purpose=purpose, retry_after=wait)
            raise AuthFailure(429, "too_many_attempts", {"Retry-After": str(wait)})
        user = None
        if self.users.configured and 0 < len(token) <= MAX_TOKEN_LENGTH:
            user = self.users.by_token(token)
        if user is None:
            self.limiter.record(client)
            # Never the token: only who tried, from where, and how.
            log.warning("admin_sign_in_failed", client=client, purpose=purpose)
            code = "invalid_token" if self.users.configured else "console_disabled"
            raise AuthFailure(401, code)
        return user

    async def principal(self, request: Request) -> Principal:
        """Who is asking; AuthFailure (401/429) when nobody we know."""
        if not self.users.configured:
            raise AuthFailure(401, "console_disabled")
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                raise AuthFailure(401, "invalid_token")
            return Principal(self.check_token(request, token.strip(), purpose="api"), "token")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            principal = await self._from_cookie(cookie)
            if principal is not None:
                return principal
        raise AuthFailure(401, "unauthenticated")

    async def _from_cookie(self, cookie: str) -> Principal | None:
        serializer = await self._serializer()
        try:
            data = serializer.loads(cookie, max_age=int(self.session_seconds))
        except BadSignature:  # tampered, expired, or signed with a key since deleted
            return None
        if not isinstance(data, dict):
            return None
        user = self.users.by_name(str(data.get("u", "")))
        if user is None or not hmac.compare_digest(str(data.get("f", "")), user.fingerprint):
            return None  # removed from the file, or given a new token since
        return Principal(user, "session", str(data.get("c", "")))

    async def session_cookie(self, user: User) -> str:
        """A fresh signed session for ``user``, with its own CSRF token."""
        serializer = await self._serializer()
        payload = {"u": user.name, "f": user.fingerprint, "c": secrets.token_urlsafe(24)}
        return serializer.dumps(payload)

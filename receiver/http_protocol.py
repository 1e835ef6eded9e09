"""uvicorn's httptools protocol with the bounds it lacks (SPEC §10, PITFALLS: Recovery and edges).

uvicorn's ``HttpToolsProtocol`` buffers a request line and headers of any size, waits forever
for headers or a body sent a byte at a time, arms no timer on a connection that never sends
anything, and its only connection cap (``limit_concurrency``) answers plain-text 503 to
health checks too. This subclass adds, per connection:

- a header budget: bytes are counted from a request's first byte until its headers end, and
  at most ``max_header_bytes`` of them reach the parser; past that the answer is
  ``431 request_header_fields_too_large`` and the connection closes;
- read deadlines: headers not complete ``read_timeout`` after their first byte are answered
  ``408 request_timeout``; a body still incomplete ``read_timeout`` after its headers wakes
  the app with ``READ_DEADLINE_PASSED`` in its scope, and the app answers 408 itself (so its
  log line and metrics say so); a fresh connection that sends nothing gets uvicorn's own
  keep-alive timeout;
- a connection cap: past ``max_connections`` open connections a new one may only ask for
  ``/healthz`` or ``/readyz`` (one request, then close); anything else gets
  ``503 too_many_connections`` with ``Retry-After``. Past the cap plus ``HEALTH_RESERVE`` a
  new connection is answered that 503 at once, unread, so the number of connections that can
  hold a header budget stays bounded;
- ``400 {"error": "malformed_request"}`` (JSON) instead of uvicorn's plain-text 400 for what
  the parser rejects (CL+TE together, a duplicate or non-decimal ``Content-Length``, bad
  chunking, a non-ASCII path, ...), and every protocol-level answer closes the connection;
- a close instead of a keep-alive when the app answered before the request body was complete
  (a 413 or a 404 answered early): the rest of that body is never read.

Timers are armed only when a read leaves headers or a body incomplete, so a request that
arrives in one piece (every request of a normal sender) costs three method overrides and a
few attribute checks: ~4k instructions, ~1% of a request (bench/README.md).

uvicorn internals this relies on (``tests/test_http_limits.py::
test_uvicorn_internals_the_bounded_protocol_relies_on`` fails loudly when an upgrade changes
them): the constructor ``(config, server_state, app_state, _loop)``; the attributes ``app``,
``loop``, ``connections``, ``transport``, ``flow``, ``cycle``, ``parser``, ``headers``,
``server_state.default_headers``, ``timeout_keep_alive``, ``timeout_keep_alive_task``; the
methods ``data_received`` (feeds the parser, answers parser errors through
``send_400_response``), ``on_headers_complete`` (builds ``cycle`` and starts the app with
``self.app``), ``on_message_complete``, ``on_response_complete`` (which a cycle calls through
its ``on_response``), ``timeout_keep_alive_handler``, ``_unset_keepalive_if_required``,
``_unsupported_upgrade_warning``; and ``RequestResponseCycle.keep_alive``, ``more_body``,
``response_started``, ``response_complete``, ``disconnected``, ``on_response``, ``scope`` and
``message_event``.
"""

from __future__ import annotations

import asyncio
import functools
import http
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from receiver import metrics
from receiver.logs import get_logger

# The scope key the protocol sets when a request body missed its deadline (app.py reads it).
READ_DEADLINE_PASSED = "receiver.read_deadline_passed"
# Paths a connection past the cap may still ask for: the probes of app.py's health routes.
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
HEALTH_METHODS = frozenset({"GET", "HEAD"})
# Connections past ``max_connections`` kept for health checks (probes and load balancers open a
# few short ones at a time); beyond these a connection is refused unread, so an attacker's
# connections cannot each hold a header budget.
HEALTH_RESERVE = 32
RETRY_AFTER_SECONDS = 5
MAX_LOGGED_REASON = 100
MAX_LOGGED_PATH = 200
log = get_logger("receiver.http")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the protocol answered itself, for the rejected-deliveries log (issue 14):
    the client, the path and header names as far as they were read. Never header values."""

    status: int
    code: str
    client: tuple[str, int] | None
    path: str
    header_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The bounds one server applies to every connection (``Settings`` supplies them).

    ``on_refusal`` hears of every request the protocol refuses (431, 408, 503, 400): the
    app records them beside the rejections it answers itself. Called on the refusal path
    only, so a normal request never pays for it."""

    max_header_bytes: int = 32_768
    read_timeout_seconds: float = 10.0
    max_connections: int = 1_000
    health_reserve: int = HEALTH_RESERVE
    on_refusal: Callable[[Refusal], None] | None = None


def bounded_protocol(limits: HttpLimits) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that applies ``limits``."""

    class ConfiguredProtocol(BoundedHttpToolsProtocol):
        pass

    ConfiguredProtocol.limits = limits
    ConfiguredProtocol.max_header_bytes = limits.max_header_bytes
    return ConfiguredProtocol


def raw_response(
    status: int,
    code: str,
    default_headers: Sequence[tuple[bytes, bytes]] = (),
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """A complete ``{"error": code}`` answer that closes the connection, as wire bytes."""
    body = orjson.dumps({"error": code})
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in (*default_headers, *extra_headers)]
    lines += [
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


_RETRY_AFTER = ((b"retry-after", str(RETRY_AFTER_SECONDS).encode()),)


# Base-class calls spell the class out: ``super()`` costs ~1k instructions per call on
# CPython 3.11 (no LOAD_SUPER_ATTR before 3.12), and these run four times per request.
_Base = HttpToolsProtocol


class _ConnectionState:
    """What the bounds track per connection, in one slotted object: uvicorn's protocol already
    sets 28 instance attributes, and past CPython's 30 shared keys per class every attribute
    access in uvicorn's per-request code loses its fast path (measured with callgrind: seven
    attributes of our own cost ~3.8k instructions per request more than this one does)."""

    __slots__ = ("body_timer", "done_reading", "full_app", "header_bytes", "header_timer",
                 "health_only", "reading_headers")  # fmt: skip

    def __init__(self) -> None:
        self.header_bytes = 0  # bytes of the current request while its headers are incomplete
        self.reading_headers = True  # from a request's first byte (or the connection's start)
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.done_reading = False  # refused, or its last request seen: nothing more is parsed
        self.health_only = False  # opened past the connection cap
        self.full_app: Any = None


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with a header budget, read deadlines and a connection cap."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    max_header_bytes: ClassVar[int] = limits.max_header_bytes  # read per request: one lookup
    bounds: _ConnectionState

    # -- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.bounds = state = _ConnectionState()
        _Base.connection_made(self, transport)
        metrics.CONNECTIONS_OPEN.inc()
        limits = self.limits
        open_now = len(self.connections)
        if open_now > limits.max_connections:
            if open_now > limits.max_connections + limits.health_reserve:
                self._refuse(503, "too_many_connections", _RETRY_AFTER)
                return
            state.health_only = True
            state.full_app, self.app = self.app, self._health_or_refuse
        # uvicorn arms its keep-alive timer only after a response, so a connection that never
        # sends a byte would stay open forever; the same timer bounds it from the start.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS_OPEN.dec()
        self._cancel_timers()
        self._unset_keepalive_if_required()  # uvicorn leaves it armed when exc is not None
        _Base.connection_lost(self, exc)

    # -- reading ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = self.bounds
        if state.done_reading:
            return
        if not state.reading_headers:
            _Base.data_received(self, data)
            if not state.done_reading and self.cycle.more_body and state.body_timer is None:
                self._watch_body()
            return
        if len(data) > self.max_header_bytes - state.header_bytes:
            self._feed_past_budget(data)
            return
        state.header_bytes += len(data)
        _Base.data_received(self, data)
        if state.reading_headers:
            if state.header_bytes and state.header_timer is None and not state.done_reading:
                self._watch_headers()  # headers still incomplete: their deadline runs
        elif not state.done_reading and self.cycle.more_body and state.body_timer is None:
            self._watch_body()  # headers complete, body not: its deadline runs

    def _after_header_read(self) -> None:
        state = self.bounds
        if state.done_reading:
            return
        if state.reading_headers:
            if state.header_bytes and state.header_timer is None:
                self._watch_headers()  # headers still incomplete: their deadline runs
        elif self.cycle.more_body and state.body_timer is None:
            self._watch_body()  # headers complete, body not: its deadline runs

    def _feed_past_budget(self, data: bytes) -> None:
        """A read that passes the header budget: the parser sees the budget's worth only. If
        the headers end within it, the rest is body (or a next request) and goes round again."""
        state = self.bounds
        while data and not state.done_reading:
            if not state.reading_headers:
                self.data_received(data)
                return
            room = self.max_header_bytes - state.header_bytes
            head, data = data[:room], data[room:]
            state.header_bytes += len(head)
            _Base.data_received(self, head)
            if state.reading_headers and state.header_bytes >= self.max_header_bytes:
                self._refuse(431, "request_header_fields_too_large")
                return
        self._after_header_read()

    def on_headers_complete(self) -> None:
        state = self.bounds
        state.reading_headers = False
        if state.header_timer is not None:
            state.header_timer.cancel()
            state.header_timer = None
        upgrade = self.parser.should_upgrade()
        if upgrade and _declares_body(self.headers):
            # httptools hands what follows an upgrade request's headers to "the new protocol",
            # so its body would reach the app as empty (a signed delivery would fail as
            # tampered) and arrive later as a request of its own. We upgrade to nothing:
            # RFC 9110 lets a server ignore Upgrade, but not with the body gone.
            self._refuse(400, "upgrade_not_supported")
            return
        _Base.on_headers_complete(
            self,
        )
        if upgrade or state.health_only:
            # One request on this connection, answered as plain HTTP/1.1: past the cap, or
            # after an upgrade request (the parser's later state is not to be trusted).
            self.cycle.keep_alive = False
            state.done_reading = upgrade

    def on_message_complete(self) -> None:
        # What follows belongs to the next request: its header budget starts now. (Bytes of it
        # that came in the same read as this message's end are not counted; at most one read.)
        state = self.bounds
        state.reading_headers = True
        state.header_bytes = 0
        if state.body_timer is not None:
            state.body_timer.cancel()
            state.body_timer = None
        if self.cycle is not None:  # None after an upgrade request refused in its headers
            _Base.on_message_complete(
                self,
            )

    def send_400_response(self, msg: str) -> None:
        """The parser refused the request: JSON, then close. uvicorn calls this inside its
        ``except HttpParserError``; llhttp's reason is a fixed text, never request bytes."""
        error = sys.exc_info()[1]
        reason = str(error)[:MAX_LOGGED_REASON] if error is not None else msg
        self._refuse(400, "malformed_request", reason=reason)

    def _unsupported_upgrade_warning(self) -> None:
        # ``Upgrade: h2c`` and friends are served as plain HTTP/1.1; uvicorn's warning would
        # add a line per such request and suggests installing websockets, which we disable.
        pass

    # -- deadlines --------------------------------------------------------------------------

    def _watch_headers(self) -> None:
        self.bounds.header_timer = self.loop.call_later(
            self.limits.read_timeout_seconds, self._header_deadline_passed
        )

    def _watch_body(self) -> None:
        cycle = self.cycle
        if not cycle.response_complete:
            self.bounds.body_timer = self.loop.call_later(
                self.limits.read_timeout_seconds, self._body_deadline_passed, cycle
            )
            # An answer before the body is complete (a 413, a 404) would leave uvicorn reading
            # and discarding the rest for as long as the sender sends: close instead. Hooked
            # only here, where a body spans reads, so a one-read request pays nothing.
            cycle.on_response = functools.partial(self._response_complete, cycle)

    def _response_complete(self, cycle: RequestResponseCycle) -> None:
        if cycle.more_body and not self.transport.is_closing():
            self.transport.close()
        _Base.on_response_complete(self)

    def _header_deadline_passed(self) -> None:
        state = self.bounds
        state.header_timer = None
        if state.reading_headers and not state.done_reading and not self.transport.is_closing():
            self._refuse(408, "request_timeout")

    def _body_deadline_passed(self, cycle: RequestResponseCycle) -> None:
        self.bounds.body_timer = None
        if cycle.more_body and not cycle.response_started and not self.transport.is_closing():
            # The app answers 408 (and closes) when its receive() wakes to this flag.
            cycle.scope[READ_DEADLINE_PASSED] = True  # type: ignore[literal-required]
            cycle.message_event.set()

    def _cancel_timers(self) -> None:
        state = self.bounds
        for timer in (state.header_timer, state.body_timer):
            if timer is not None:
                timer.cancel()
        state.header_timer = state.body_timer = None

    # -- answers ----------------------------------------------------------------------------

    def _refuse(
        self,
        status: int,
        code: str,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        reason: str | None = None,
    ) -> None:
        """Answer ``status`` with ``{"error": code}`` and close; stop reading at once."""
        state = self.bounds
        if state.done_reading and self.transport.is_closing():
            return  # already answered
        state.done_reading = True
        self._cancel_timers()
        _count_and_log(status, code, reason)
        self._report(status, code)
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not cycle.more_body:
                # An answer is coming (or being written) for a request this connection
                # already carried; ours would garble it. The connection ends after it instead.
                cycle.keep_alive = False
                return
            # The app waits for the rest of a body the parser has just refused: let it go
            # (its receive() reports a disconnect, its answer is dropped) and answer here.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.write(
            raw_response(status, code, self.server_state.default_headers, extra_headers)
        )
        self.transport.close()

    def _report(self, status: int, code: str) -> None:
        """Tell ``limits.on_refusal`` what was refused, as far as it was read."""
        listener = self.limits.on_refusal
        if listener is None:
            return
        url = getattr(self, "url", b"") or b""
        names = tuple(name.decode("latin-1") for name, _ in (getattr(self, "headers", None) or ()))
        refusal = Refusal(
            status=status,
            code=code,
            client=self.client,
            path=url.split(b"?", 1)[0].decode("latin-1")[:MAX_LOGGED_PATH],
            header_names=names,
        )
        try:
            listener(refusal)
        except Exception:  # a diagnostic must never turn a refusal into a failure
            log.exception("refusal_not_recorded")

    async def _health_or_refuse(self, scope: Any, receive: Any, send: Any) -> None:
        """The app of a connection past the cap: health checks only."""
        if scope["path"] in HEALTH_PATHS and scope["method"] in HEALTH_METHODS:
            await self.bounds.full_app(scope, receive, send)
            return
        _count_and_log(503, "too_many_connections")
        self._report(503, "too_many_connections")
        body = orjson.dumps({"error": "too_many_connections"})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *_RETRY_AFTER,
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _declares_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(
        (name == b"content-length" and value.strip(b"0 \t")) or name == b"transfer-encoding"
        for name, value in headers
    )


def _count_and_log(status: int, code: str, reason: str | None = None) -> None:
    """The metric and the one log line of a request the protocol answered (SPEC §8)."""
    metrics.child(metrics.HTTP_REJECTIONS, code).inc()
    if reason is None:
        log.info("http_rejected", status=status, error=code)
    else:
        log.info("http_rejected", status=status, error=code, reason=reason)

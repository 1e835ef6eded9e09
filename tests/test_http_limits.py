"""Bounded HTTP (SPEC §10, issue 12): header budget, read deadlines, connection cap, framing.

Every test talks to a real ``receiver serve`` process over raw sockets (tests/raw_http.py),
because the point is what the server does with bytes no well-behaved client would send.
"""

from __future__ import annotations

import inspect
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import Server

from receiver.http_protocol import HEALTH_RESERVE, RETRY_AFTER_SECONDS
from tests.factories import base_env, event_body, signed_headers
from tests.helpers import eventually
from tests.raw_http import (
    Answer,
    connect,
    count_open,
    exchange,
    read_answer,
    request_bytes,
    send_quietly,
    signed_request,
    trickle,
    wait_closed,
)
from tests.servers import ServiceProcess

READ_TIMEOUT = 1.0  # RECEIVER_READ_TIMEOUT of the shared service
SLACK = 4.0  # a busy machine answers late, never early
HEADER_LIMIT = 32_768  # the default RECEIVER_MAX_HEADER_BYTES
BODY_LIMIT = 262_144  # the default RECEIVER_MAX_BODY_BYTES
KEEP_ALIVE = 5.0  # uvicorn's keep-alive timeout, which also bounds a silent new connection


def start_serve(tmp_path: Path, redis_url: str, name: str, **env: str) -> ServiceProcess:
    """``serve --no-worker`` with its admin listener (for /metrics) on a port of its own."""
    environ = base_env(tmp_path, redis_url, RECEIVER_SINK="log:", **env)
    log = tmp_path / f"{name}.log"
    return ServiceProcess(environ, log, "serve", "--no-worker", admin=True).start()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[ServiceProcess]:
    """One serve process with the default limits and a 1 s read deadline."""
    running = start_serve(
        tmp_path_factory.mktemp("limits"), redis_url, "serve", RECEIVER_READ_TIMEOUT="1s"
    )
    yield running
    running.stop()


def assert_refused(answer: Answer, status: int, code: str) -> None:
    """The protocol-level answer: the status, the JSON code, and the connection closed."""
    assert (status, {"error": code}, "close", True) == (
        answer.status,
        answer.json(),
        answer.headers.get("connection"),
        answer.closed,
    )


def log_problems(output: str) -> list[str]:
    """Lines at error level or above, tracebacks, and lines that are not JSON.

    Only whole lines count: the service may be writing its last line as we read the file."""
    problems = []
    complete = output if output.endswith("\n") else output.rpartition("\n")[0]
    for line in complete.splitlines():
        try:
            parsed = orjson.loads(line)
        except orjson.JSONDecodeError:
            problems.append(line[:200])
            continue
        if parsed.get("level") in ("error", "critical") or "exception" in parsed:
            problems.append(line[:300])
    return problems


def head_of(size: int, path: str = "/healthz") -> bytes:
    """A GET whose request line and headers, blank line included, are exactly ``size`` bytes."""
    start = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: ".encode()
    padding = size - len(start) - len(b"\r\n\r\n")
    return start + b"a" * padding + b"\r\n\r\n"


# -- header budget ----------------------------------------------------------------------------


class TestHeaderBudget:
    @pytest.mark.parametrize(
        "request_head",
        [
            request_bytes(headers=[("x-big", "a" * 40_000)]),
            request_bytes(headers=[(f"x-h{i}", "v") for i in range(5_000)]),
            b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
            b"POST /webhooks/rivya HTTP/1.1\r\nx-endless: " + b"a" * (1024 * 1024),
        ],
        ids=["one-huge-header", "many-headers", "long-url", "no-end-of-headers"],
    )
    def test_oversized_headers_get_431_and_close(
        self, service: ServiceProcess, request_head: bytes
    ) -> None:
        """Request line plus headers past 32 KiB: 431 request_header_fields_too_large, closed."""
        answer = exchange(service.port, request_head)

        assert_refused(answer, 431, "request_header_fields_too_large")

    def test_headers_at_the_limit_are_served(self, service: ServiceProcess) -> None:
        """A request head of exactly the budget is served; one byte more is a 431."""
        at_limit = exchange(service.port, head_of(HEADER_LIMIT))
        over = exchange(service.port, head_of(HEADER_LIMIT + 1))

        assert (200, 431) == (at_limit.status, over.status)

    def test_budget_counts_from_each_request_on_a_kept_alive_connection(
        self, service: ServiceProcess
    ) -> None:
        """The budget is per request: three near-limit requests in turn on one connection."""
        statuses = []
        with connect(service.port) as sock:
            for _ in range(3):
                sock.sendall(head_of(HEADER_LIMIT - 10))
                statuses.append(read_answer(sock).status)

        assert [200, 200, 200] == statuses


SMALL_HEADER_LIMIT = 4096  # RECEIVER_MAX_HEADER_BYTES of the ``small_budget`` service


def signed_post_of(size: int) -> tuple[bytes, bytes]:
    """A signed delivery whose request line and headers, blank line included, are exactly
    ``size`` bytes (padded by one header), and its body: (head, body)."""
    body = event_body()
    headers = [*signed_headers(body).items(), ("content-length", str(len(body)))]
    unpadded = request_bytes(headers=[*headers, ("x-pad", "")], body=b"")
    padding = size - len(unpadded)
    assert padding >= 0, f"a signed head takes {len(unpadded)} bytes already"
    return request_bytes(headers=[*headers, ("x-pad", "a" * padding)], body=b""), body


@pytest.fixture(scope="module")
def small_budget(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[ServiceProcess]:
    """A serve process configured with a 4 KiB header budget."""
    running = start_serve(
        tmp_path_factory.mktemp("small-budget"), redis_url, "serve",
        RECEIVER_MAX_HEADER_BYTES="4KiB",
    )  # fmt: skip
    yield running
    running.stop()


class TestConfiguredHeaderBudget:
    """RECEIVER_MAX_HEADER_BYTES=4KiB, end to end over a socket: the setting is the budget."""

    def test_a_signed_delivery_at_the_budget_is_accepted(
        self, small_budget: ServiceProcess
    ) -> None:
        """Head of exactly 4096 bytes (the body, sent with it, does not count): 202."""
        for size in (SMALL_HEADER_LIMIT - 1, SMALL_HEADER_LIMIT):
            head, body = signed_post_of(size)
            assert size == len(head)
            answer = exchange(small_budget.port, head + body)
            assert (202, "accepted") == (answer.status, answer.json()["status"])  # type: ignore[index]

    def test_a_signed_delivery_past_the_budget_gets_431_and_close(
        self, small_budget: ServiceProcess
    ) -> None:
        """Head of 4097 bytes (far below the 32 KiB default): 431 with the JSON code and
        ``connection: close``, and the server closes the connection."""
        head, body = signed_post_of(SMALL_HEADER_LIMIT + 1)
        with connect(small_budget.port) as sock:
            sent = send_quietly(sock, head + body)
            answer = read_answer(sock)
        assert sent
        assert_refused(answer, 431, "request_header_fields_too_large")
        assert b"" == answer.extra  # nothing after the refusal: the body was never answered


# -- read deadlines ---------------------------------------------------------------------------


class TestReadDeadlines:
    def test_byte_at_a_time_headers_get_408_and_close(self, service: ServiceProcess) -> None:
        """Headers trickled a byte every 50 ms: 408 request_timeout at the deadline, closed."""
        with connect(service.port) as sock:
            answer = trickle(sock, signed_request(), interval=0.05)

        assert_refused(answer, 408, "request_timeout")
        assert READ_TIMEOUT * 0.9 <= answer.seconds <= READ_TIMEOUT + SLACK

    def test_byte_at_a_time_body_gets_408_and_close(self, service: ServiceProcess) -> None:
        """A body trickled a byte every 50 ms after prompt headers: 408 at the deadline, closed."""
        request = signed_request()
        head, body = request.split(b"\r\n\r\n", 1)
        with connect(service.port) as sock:
            sock.sendall(head + b"\r\n\r\n")
            answer = trickle(sock, body, interval=0.05)

        assert_refused(answer, 408, "request_timeout")
        assert READ_TIMEOUT * 0.9 <= answer.seconds <= READ_TIMEOUT + SLACK

    @pytest.mark.parametrize(
        "request_head",
        [
            request_bytes(headers={"content-length": "1000"}),
            request_bytes(headers={"transfer-encoding": "chunked"}, content_length=False),
            request_bytes(headers={"transfer-encoding": "chunked"}, content_length=False)
            + b"10\r\nonly half",
        ],
        ids=["declared-length", "chunked", "chunked-half-chunk"],
    )
    def test_body_that_never_comes_gets_408(
        self, service: ServiceProcess, request_head: bytes
    ) -> None:
        """Headers, then silence where the body should be: 408 at the deadline, closed."""
        answer = exchange(service.port, request_head)

        assert_refused(answer, 408, "request_timeout")
        assert READ_TIMEOUT * 0.9 <= answer.seconds <= READ_TIMEOUT + SLACK

    def test_slow_request_within_the_deadline_is_served(self, service: ServiceProcess) -> None:
        """Headers trickled over about a third of the deadline are answered normally."""
        request = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
        with connect(service.port) as sock:
            answer = trickle(sock, request, interval=READ_TIMEOUT / 3 / len(request))

        assert (200, {"status": "ok"}) == (answer.status, answer.json())

    def test_silent_new_connection_is_closed(self, service: ServiceProcess) -> None:
        """A connection that never sends a byte is closed by the keep-alive timeout."""
        with connect(service.port) as sock:
            started = time.monotonic()
            closed = wait_closed(sock, timeout=KEEP_ALIVE + SLACK)
            waited = time.monotonic() - started

        assert closed
        assert KEEP_ALIVE * 0.9 <= waited


# -- framing: Content-Length, Transfer-Encoding, upgrades ------------------------------------

_body = event_body()
_signed = signed_headers(_body)
MALFORMED = [
    pytest.param({"content-length": "5", "transfer-encoding": "chunked"}, id="cl-and-te"),
    pytest.param([("content-length", "5"), ("content-length", "5")], id="duplicate-cl"),
    pytest.param({"content-length": "5, 5"}, id="cl-list"),
    pytest.param({"content-length": "-5"}, id="negative-cl"),
    pytest.param({"content-length": "abc"}, id="garbage-cl"),
    pytest.param({"content-length": "9" * 5001}, id="cl-past-64-bits"),
    pytest.param({"transfer-encoding": "gzip"}, id="te-not-chunked"),
    pytest.param({"transfer-encoding": "chunked, chunked"}, id="te-chunked-twice"),
    pytest.param({"x-a": "a\x00b"}, id="nul-in-value"),
    pytest.param({"x a": "b"}, id="space-in-name"),
    pytest.param({"x\xff": "b"}, id="non-ascii-name"),
]


class TestFraming:
    @pytest.mark.parametrize("headers", MALFORMED)
    def test_malformed_framing_is_400_json_and_close(
        self, service: ServiceProcess, headers: dict[str, str] | list[tuple[str, str]]
    ) -> None:
        """What the HTTP parser refuses is 400 malformed_request in JSON, then closed."""
        pairs = list(headers.items()) if isinstance(headers, dict) else headers
        request = request_bytes(headers=[*_signed.items(), *pairs], body=b"hello")

        assert_refused(exchange(service.port, request), 400, "malformed_request")

    @pytest.mark.parametrize(
        "raw",
        [
            b"POST /webhooks/rivya\xc3\xa9 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
            b"GET /healthz HTTP/1.1\nhost: x\n\n",
            b"GET /healthz HTTP/9.9\r\nhost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"POST /webhooks/rivya HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n",
        ],
        ids=["non-ascii-path", "bare-lf", "unknown-version", "http2-preface", "bad-chunk-size"],
    )
    def test_malformed_request_line_or_chunks_is_400_json(
        self, service: ServiceProcess, raw: bytes
    ) -> None:
        """A broken request line, line ending or chunk size is 400 malformed_request, closed."""
        assert_refused(exchange(service.port, raw), 400, "malformed_request")

    def test_content_length_of_5001_digits_over_the_limit_is_413(
        self, service: ServiceProcess
    ) -> None:
        """5,001 digits (leading zeros, so the parser takes it) declaring 1 MB: 413, closed."""
        declared = "0" * (5001 - 7) + "1000000"
        request = request_bytes(headers=[*_signed.items(), ("content-length", declared)])

        assert_refused(exchange(service.port, request), 413, "payload_too_large")

    def test_content_length_of_5001_digits_within_the_limit_is_accepted(
        self, service: ServiceProcess
    ) -> None:
        """5,001 digits declaring the true length of a signed body: an ordinary 202."""
        body = event_body()
        declared = str(len(body)).rjust(5001, "0")
        request = request_bytes(
            headers=[*signed_headers(body).items(), ("content-length", declared)], body=body
        )

        answer = exchange(service.port, request)

        assert (202, "accepted") == (answer.status, answer.json()["status"])  # type: ignore[index]

    def test_chunked_signed_delivery_is_accepted(self, service: ServiceProcess) -> None:
        """A signed body sent in chunks is verified on the reassembled bytes: 202."""
        body = event_body()
        chunks = [body[:100], body[100:400], body[400:]]
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        headers = {**signed_headers(body), "transfer-encoding": "chunked"}
        request = request_bytes(headers=headers, body=encoded, content_length=False)

        answer = exchange(service.port, request)

        assert (202, "accepted") == (answer.status, answer.json()["status"])  # type: ignore[index]

    def test_chunked_body_over_the_limit_is_413_and_close(self, service: ServiceProcess) -> None:
        """Chunks past the body limit: 413 while streaming, then closed."""
        chunk = b"a" * 65_536
        encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5))
        headers = {**_signed, "transfer-encoding": "chunked"}
        request = request_bytes(headers=headers, body=encoded, content_length=False)

        assert_refused(exchange(service.port, request), 413, "payload_too_large")

    def test_413_stops_reading_the_body(self, service: ServiceProcess) -> None:
        """A declared 3 MiB body: 413 and close after the headers; the rest finds no reader."""
        request = request_bytes(headers=[*_signed.items(), ("content-length", str(3 * 2**20))])
        with connect(service.port) as sock:
            sock.sendall(request + b"a" * 65_536)
            answer = read_answer(sock)
            rest_sent = send_quietly(sock, b"a" * (3 * 2**20))

        assert_refused(answer, 413, "payload_too_large")
        assert not rest_sent, "the server kept reading after its 413"

    def test_answer_before_the_body_closes_the_connection(self, service: ServiceProcess) -> None:
        """A 404 answered while the body is still coming: closed, though the sender goes on
        sending (uvicorn alone would read and discard it for as long as bytes come)."""
        request = request_bytes(
            path="/webhooks/nope", headers=[*_signed.items(), ("content-length", "100000")]
        )
        with connect(service.port) as sock:
            sock.sendall(request + b"a" * 10)
            answer = read_answer(sock)
            closed = False
            for _ in range(30):  # a byte every 0.1 s for 3 s, well inside the keep-alive
                closed = not send_quietly(sock, b"a") or wait_closed(sock, timeout=0.1)
                if closed:
                    break

        assert (404, {"error": "unknown_source"}, True) == (answer.status, answer.json(), closed)

    def test_upgrade_with_a_body_is_refused(self, service: ServiceProcess) -> None:
        """An Upgrade request with a body (the parser would drop it): 400 upgrade_not_supported."""
        body = event_body()
        headers = {**signed_headers(body), "connection": "upgrade", "upgrade": "h2c"}

        answer = exchange(service.port, request_bytes(headers=headers, body=body))

        assert_refused(answer, 400, "upgrade_not_supported")

    def test_upgrade_without_a_body_is_plain_http_once(self, service: ServiceProcess) -> None:
        """A body-less WebSocket upgrade is served as HTTP/1.1 and nothing after it is parsed."""
        upgrade = [
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ]
        with connect(service.port) as sock:
            sock.sendall(request_bytes("GET", "/healthz", upgrade, content_length=False))
            answer = read_answer(sock)
            send_quietly(sock, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            closed = wait_closed(sock)

        assert (200, "close", True) == (answer.status, answer.headers.get("connection"), closed)
        assert "Unsupported upgrade" not in service.output()

    def test_non_latin1_header_bytes_are_a_clean_4xx(self, service: ServiceProcess) -> None:
        """UTF-8 and stray high bytes in header values reach the app as text: a 401, no 5xx."""
        odd_id = ("msg_é€".encode() + b"\xff\x80").decode("latin-1")  # sent as these bytes
        request = request_bytes(headers=[*_signed.items(), ("webhook-id", odd_id)], body=_body)

        answer = exchange(service.port, request)

        assert (401, {"error": "invalid_signature"}) == (answer.status, answer.json())


# -- many connections -------------------------------------------------------------------------


def _partial(kind: str) -> bytes:
    if kind == "headers":
        return b"POST /webhooks/rivya HTTP/1.1\r\nhost: x\r\nx-slow: "
    return request_bytes(headers={**_signed, "content-length": str(len(_body))}) + _body[:100]


@pytest.mark.slow
def test_a_thousand_slow_connections_do_not_stop_deliveries(tmp_path: Path, redis_url: str) -> None:
    """1,000 half-sent requests held open: signed deliveries still get 202, /healthz answers."""
    service = start_serve(
        tmp_path, redis_url, "serve", RECEIVER_READ_TIMEOUT="60s", RECEIVER_MAX_CONNECTIONS="1100"
    )
    held: list[socket.socket] = []
    try:
        for index in range(1_000):
            sock = connect(service.port)
            sock.sendall(_partial("headers" if index % 2 else "body"))
            held.append(sock)
        with (
            httpx.Client(base_url=service.url, timeout=30) as client,
            httpx.Client(base_url=service.admin_url, timeout=30) as admin,
        ):
            eventually(
                lambda: _gauge(admin, "receiver_connections_open") >= 1_000,
                what="the server to see 1,000 connections",
            )
            statuses = []
            for _ in range(20):
                body = event_body()
                response = client.post(
                    "/webhooks/rivya", content=body, headers=signed_headers(body)
                )
                statuses.append(response.status_code)
            started = time.monotonic()
            health = client.get("/healthz")
            health_seconds = time.monotonic() - started
        still_open = count_open(held)
    finally:
        for sock in held:
            sock.close()
        service.stop()

    assert [202] * 20 == statuses
    assert (200, True) == (health.status_code, health_seconds < SLACK)
    assert 1_000 == still_open
    assert [] == log_problems(service.output())


class TestConnectionCap:
    CAP = 4

    @pytest.fixture
    def capped(self, tmp_path: Path, redis_url: str) -> Iterator[ServiceProcess]:
        running = start_serve(
            tmp_path,
            redis_url,
            "capped",
            RECEIVER_MAX_CONNECTIONS=str(self.CAP),
            RECEIVER_READ_TIMEOUT="60s",
        )
        yield running
        running.stop()

    def hold(self, port: int, count: int) -> list[socket.socket]:
        """``count`` connections that each sent half a request (so none times out soon)."""
        held = []
        for _ in range(count):
            sock = connect(port)
            sock.sendall(_partial("headers"))
            held.append(sock)
        time.sleep(0.2)  # let the server accept them all before the next one arrives
        return held

    def test_past_the_cap_deliveries_get_503_and_health_answers(
        self, capped: ServiceProcess
    ) -> None:
        """Cap reached: a delivery gets 503 too_many_connections + Retry-After; probes get 200."""
        held = self.hold(capped.port, self.CAP)
        try:
            delivery = exchange(capped.port, signed_request())
            healthz = exchange(capped.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            readyz = exchange(capped.port, b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        finally:
            for sock in held:
                sock.close()

        assert_refused(delivery, 503, "too_many_connections")
        assert str(RETRY_AFTER_SECONDS) == delivery.headers.get("retry-after")
        assert (200, "close", True) == (
            healthz.status,
            healthz.headers["connection"],
            healthz.closed,
        )
        assert 200 == readyz.status

    def test_past_the_health_reserve_connections_are_refused_unread(
        self, capped: ServiceProcess
    ) -> None:
        """Cap and health reserve full: a new connection gets the 503 before it sends a byte."""
        held = self.hold(capped.port, self.CAP + HEALTH_RESERVE)
        try:
            with connect(capped.port) as sock:
                answer = read_answer(sock)
        finally:
            for sock in held:
                sock.close()

        assert_refused(answer, 503, "too_many_connections")
        assert str(RETRY_AFTER_SECONDS) == answer.headers.get("retry-after")

    def test_closed_connections_free_the_cap(self, capped: ServiceProcess) -> None:
        """Once the held connections close, deliveries are accepted again."""
        for sock in self.hold(capped.port, self.CAP + 3):
            sock.close()

        eventually(
            lambda: exchange(capped.port, signed_request()).status == 202,
            what="a delivery to be accepted after the connections closed",
        )


# -- memory -----------------------------------------------------------------------------------

PER_CONNECTION_BOUND = BODY_LIMIT + HEADER_LIMIT + 65_536  # stated in README "Performance"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_rss_stays_bounded_with_500_slow_or_oversized_connections(
    tmp_path: Path, redis_url: str
) -> None:
    """250 near-limit bodies and 250 near-limit headers held open, 50 senders of 4 MiB headers:
    serve's RSS grows by less than 500 x (body limit + header limit + 64 KiB)."""
    service = start_serve(
        tmp_path, redis_url, "serve", RECEIVER_READ_TIMEOUT="60s", RECEIVER_MAX_CONNECTIONS="600"
    )
    assert service.process is not None
    held: list[socket.socket] = []
    refused: list[Answer] = []
    try:
        exchange(service.port, signed_request())  # warm: imports, Redis script, first log line
        baseline = _rss_bytes(service.process.pid)
        body_head = request_bytes(headers={**_signed, "content-length": str(BODY_LIMIT)})
        for index in range(500):
            sock = connect(service.port)
            if index % 2:
                sock.sendall(body_head + b"a" * (BODY_LIMIT - 1))
            else:
                sock.sendall(
                    b"POST /webhooks/rivya HTTP/1.1\r\nx-pad: " + b"a" * (HEADER_LIMIT - 100)
                )
            held.append(sock)
        for _ in range(50):
            with connect(service.port) as sock:
                send_quietly(sock, b"POST /webhooks/rivya HTTP/1.1\r\nx-pad: " + b"a" * 4 * 2**20)
                refused.append(read_answer(sock))
        with httpx.Client(base_url=service.admin_url, timeout=30) as admin:
            eventually(
                lambda: _gauge(admin, "receiver_connections_open") >= 500,
                what="the server to hold the 500 connections",
            )
        time.sleep(1)  # let the last reads land
        grown = _rss_bytes(service.process.pid) - baseline
        still_open = count_open(held)
    finally:
        for sock in held:
            sock.close()
        service.stop()

    assert 500 == still_open
    assert {431} == {answer.status for answer in refused}
    assert grown < 500 * PER_CONNECTION_BOUND, f"RSS grew {grown / 2**20:.0f} MiB"


# -- metrics ----------------------------------------------------------------------------------


def _gauge(admin: httpx.Client, name: str, labels: str = "") -> float:
    """A series' value from the admin listener's /metrics (0 when absent)."""
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_count_rejections_and_open_connections(service: ServiceProcess) -> None:
    """receiver_http_rejections_total{code} rises per refusal; receiver_connections_open counts."""
    with httpx.Client(base_url=service.admin_url, timeout=10) as client:
        code = '{code="request_header_fields_too_large"}'
        before = _gauge(client, "receiver_http_rejections_total", code)
        exchange(service.port, request_bytes(headers=[("x-big", "a" * 40_000)]))
        after = _gauge(client, "receiver_http_rejections_total", code)
        idle = _gauge(client, "receiver_connections_open")
        with connect(service.port), connect(service.port):
            eventually(
                lambda: _gauge(client, "receiver_connections_open") >= idle + 2,
                what="two more open connections",
            )

    assert 1 == after - before


# -- any input --------------------------------------------------------------------------------

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=20)
FIELD_NAMES = st.one_of(
    st.sampled_from(
        ["content-length", "transfer-encoding", "content-type", "webhook-id",
         "webhook-timestamp", "webhook-signature", "expect", "connection", "upgrade", "host"]
    ),
    TOKEN,
)  # fmt: skip
FIELD_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=120),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),  # control bytes, CR, LF
    st.sampled_from(["chunked", "gzip, chunked", "identity", "100-continue", "close", "upgrade"]),
    st.text(alphabet="0123456789", min_size=1, max_size=6_000),
    st.integers(min_value=-10, max_value=2**70).map(str),
)
# How the body is framed: most honestly, the rest the ways broken clients and attackers do.
FRAMINGS = ["length", "length", "chunked", "none", "short", "long", "zeros", "both", "over"]


def _chunked(body: bytes, cut: int) -> bytes:
    pieces = [body[:cut], body[cut:]] if 0 < cut < len(body) else [body]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request as an attacker or a broken client might send it."""
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "HEAD", "PUT", "OPTIONS", "BREW"]))
    path = draw(
        st.sampled_from(
            ["/webhooks/rivya"] * 6
            + ["/webhooks/nope", "/healthz", "/readyz", "/webhooks/rivya/x", "/webhooks/%ff", "*"]
        )
    )
    body = draw(
        st.one_of(st.binary(max_size=600), st.just(event_body()), st.binary(max_size=6_000))
    )
    headers: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)) < 7:
        headers += list(signed_headers(body).items())
    headers += draw(
        st.lists(st.tuples(FIELD_NAMES, FIELD_VALUES), max_size=draw(st.sampled_from([3, 40])))
    )
    padding = draw(st.sampled_from([0, 0, 0, 1_000, HEADER_LIMIT - 2_000, HEADER_LIMIT + 10]))
    if padding:
        headers.append(("x-pad", "p" * padding))
    framing = draw(st.sampled_from(FRAMINGS))
    length = {
        "short": max(0, len(body) - draw(st.integers(1, 50))),
        "long": len(body) + draw(st.integers(1, 100)),
        "zeros": len(body),
        "over": 10**6,
    }.get(framing, len(body))
    if framing == "zeros":
        headers.append(("content-length", str(length).rjust(5_001, "0")))
    elif framing in ("length", "short", "long", "over", "both"):
        headers.append(("content-length", str(length)))
    if framing in ("chunked", "both"):
        headers.append(("transfer-encoding", "chunked"))
        body = _chunked(body, draw(st.integers(0, len(body))))
    return request_bytes(method, path, headers, body, content_length=False)


@pytest.fixture(scope="module")
def fuzz_service(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[ServiceProcess]:
    """A serve process with a short deadline and a small body limit, so examples stay fast."""
    running = start_serve(
        tmp_path_factory.mktemp("fuzz"),
        redis_url,
        "fuzz",
        RECEIVER_READ_TIMEOUT="300ms",
        RECEIVER_MAX_BODY_BYTES="4096",
    )
    yield running
    running.stop()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=raw_requests())
def test_any_raw_request_gets_a_4xx_or_2xx(fuzz_service: ServiceProcess, request: bytes) -> None:
    """Arbitrary Content-Length, Transfer-Encoding, header counts and sizes over a real socket:
    a 2xx or a 4xx with a JSON error, never a 5xx, never an error line or traceback."""
    answer = exchange(fuzz_service.port, request, head_request=request.startswith(b"HEAD "))
    event(f"status {answer.status}")

    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, answer
    if answer.status >= 400 and not request.startswith(b"HEAD "):
        assert {"error"} <= set(answer.json())  # type: ignore[arg-type]
    assert [] == log_problems(fuzz_service.output())


# -- uvicorn internals ------------------------------------------------------------------------


def test_uvicorn_internals_the_bounded_protocol_relies_on() -> None:
    """The uvicorn names receiver/http_protocol.py uses are still there and still mean the same.
    When this fails after a uvicorn upgrade, re-read httptools_impl.py before changing it."""
    protocol = httptools_impl.HttpToolsProtocol
    source = inspect.getsource(protocol)
    cycle_init = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    startup = inspect.getsource(Server.startup)

    expectations = {
        "constructor": list(inspect.signature(protocol.__init__).parameters)
        == ["self", "config", "server_state", "app_state", "_loop"],
        "server builds it by keyword": "config=config" in startup
        and "server_state=self.server_state" in startup,
        "methods": all(
            callable(getattr(protocol, name, None))
            for name in (
                "connection_made", "connection_lost", "data_received", "on_headers_complete",
                "on_message_complete", "on_response_complete", "send_400_response",
                "timeout_keep_alive_handler", "_unset_keepalive_if_required",
                "_unsupported_upgrade_warning",
            )
        ),
        "attributes": all(
            f"self.{name} =" in source or f"self.{name}:" in source
            for name in (
                "app", "loop", "connections", "transport", "flow", "cycle", "parser",
                "headers", "timeout_keep_alive", "timeout_keep_alive_task",
            )
        ),
        "app started from self.app": "app = self.app" in source,
        "parser errors answered via send_400_response": "self.send_400_response(" in source,
        "keep-alive armed only after a response": source.count("call_later(") == 1,
        "cycle state": all(
            f"self.{name} =" in cycle_init
            for name in (
                "keep_alive", "more_body", "response_started", "response_complete",
                "disconnected", "on_response", "scope", "message_event",
            )
        ),
        "default headers on the server state": "default_headers"
        in inspect.getsource(httptools_impl.HttpToolsProtocol.send_400_response),
    }  # fmt: skip

    assert [] == [name for name, holds in expectations.items() if not holds]


# CPython shares one key table among a class's instance dicts up to this many keys; past it
# each instance gets its own dict and attribute reads in uvicorn's per-request code slow down
# (Objects/dictobject.c, SHARED_KEYS_MAX_SIZE).
CPYTHON_SHARED_KEYS = 30


def test_protocol_instances_stay_within_cpythons_shared_keys(
    tmp_path: Path, redis_url: str, clean_redis: object
) -> None:
    """After a request, a protocol instance has at most 30 attributes (uvicorn's 28 + ours),
    so CPython keeps its fast attribute path (measured: ~3.8k instructions a request past it)."""
    from receiver.settings import Settings
    from tests.servers import ServiceThread

    settings = Settings.from_env(base_env(tmp_path, redis_url, RECEIVER_SINK="log:"))
    with ServiceThread(settings) as running, connect(running.port) as sock:
        sock.sendall(signed_request())
        assert 202 == read_answer(sock).status
        (protocol,) = running.server.server_state.connections

        assert len(vars(protocol)) <= CPYTHON_SHARED_KEYS, sorted(vars(protocol))

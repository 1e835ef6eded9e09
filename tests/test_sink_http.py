"""HttpSink against a real HTTP server that checks every forward signature.

The server (uvicorn in a thread) plays a downstream system: it verifies the Standard
Webhooks signature with ``receiver.signing.Verifier``, keeps records with the ordering
guard (409 for stale, 2xx again for a ``webhook-id`` it already holds), records every
request, and offers ``/status/{code}`` and ``/slow`` for the error mapping, ``/verified``
(checked by the ``standardwebhooks`` reference library instead) and ``/huge`` (a 200 MB
answer when armed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import standardwebhooks
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from receiver.errors import (
    ConfigError,
    DeliveryRejected,
    PermanentSinkError,
    SinkError,
    TransientSinkError,
)
from receiver.models import STATUS_RANK, ApplyOutcome, Record, SinkResult, outcome_of, parse_time
from receiver.settings import Settings
from receiver.signing import Scheme, Verifier
from receiver.sinks.base import find_factory
from receiver.sinks.http import HttpSink
from tests.conftest import TEST_SECRET, free_port
from tests.helpers import eventually
from tests.sink_contract import (
    Backend,
    SinkContract,
    full_record,
    make_record,
    new_key,
    sink_settings,
)

OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LWZvci1yb3RhdGlvbi0wMQ=="
SLOW_SECONDS = 1.0
HUGE_CHUNK = b"x" * (1024 * 1024)
HUGE_CHUNKS = 200  # a 200 MB answer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    client_port: int = 0  # the same port twice: the same (reused) connection


class Downstream:
    """A downstream system: verifies, guards order, remembers what it got."""

    def __init__(self) -> None:
        self.verifier = Verifier(Scheme.STANDARD, [TEST_SECRET])
        self.reference = standardwebhooks.Webhook(TEST_SECRET)
        self.received: list[Received] = []
        self.records: dict[str, dict[str, Any]] = {}
        self.huge_answers_left = 0
        self.app = Starlette(
            routes=[
                Route("/records", self.records_endpoint, methods=["POST"]),
                Route("/status/{code:int}", self.status_endpoint, methods=["POST"]),
                Route("/slow", self.slow_endpoint, methods=["POST"]),
                Route("/verified", self.verified_endpoint, methods=["POST"]),
                Route("/huge", self.huge_endpoint, methods=["POST"]),
                Route("/explain/{code:int}", self.explain_endpoint, methods=["POST"]),
            ]
        )

    def requests_to(self, path: str) -> list[Received]:
        return [request for request in self.received if request.path == path]

    async def _receive(self, request: Request) -> Received:
        body = await request.body()
        headers = dict(request.headers)
        try:
            self.verifier.verify(headers, body, time.time())
            verified = True
        except DeliveryRejected:
            verified = False
        port = request.client.port if request.client else 0
        received = Received(request.url.path, headers, body, verified, port)
        self.received.append(received)
        return received

    async def records_endpoint(self, request: Request) -> Response:
        received = await self._receive(request)
        if not received.verified:
            return Response(status_code=401)
        incoming = orjson.loads(received.body)
        stored = self.records.get(incoming["record_key"])
        if stored is not None and stored["last_event_id"] == received.headers["webhook-id"]:
            return Response(status_code=200)  # a redelivery: deduplicated by webhook-id
        record = Record(
            record_key=incoming["record_key"],
            status=incoming["status"],
            source_updated_at=parse_time(incoming["source_updated_at"]),
            last_event_id=incoming["last_event_id"],
        )
        if stored is not None and not record.is_newer_than(
            stored["status"], parse_time(stored["source_updated_at"])
        ):
            return Response(status_code=409)
        assert incoming["status"] in STATUS_RANK
        self.records[incoming["record_key"]] = incoming
        return Response(status_code=204)

    async def status_endpoint(self, request: Request) -> Response:
        await self._receive(request)
        code = request.path_params["code"]
        headers = {"location": "/elsewhere"} if 300 <= code < 400 else {}
        return Response(status_code=code, headers=headers)

    async def explain_endpoint(self, request: Request) -> Response:
        """Answers with a body that explains, as real APIs do (and echoes a token)."""
        await self._receive(request)
        body = (
            b'{"error":"invalid_record","detail":"model z-image unknown",'
            b'"auth":"Bearer rvya_sk_test_ECHOED0123","api_key":"plainECHOEDkey",'
            b'"X-Api-Key":"plainECHOEDheader","password":"plainECHOEDpassword",'
            b'"pad":"' + b"x" * 2000 + b'"}'
        )
        return Response(body, status_code=request.path_params["code"])

    async def slow_endpoint(self, request: Request) -> Response:
        await self._receive(request)
        await asyncio.sleep(SLOW_SECONDS)
        return Response(status_code=200)

    async def verified_endpoint(self, request: Request) -> Response:
        """Checked by the reference library, as a downstream built on it would."""
        body = await request.body()
        headers = dict(request.headers)
        try:
            self.reference.verify(body, headers, json_parse=False)
            verified = True
        except standardwebhooks.WebhookVerificationError:
            verified = False
        self.received.append(Received(request.url.path, headers, body, verified))
        return Response(status_code=204 if verified else 401)

    async def huge_endpoint(self, request: Request) -> Response:
        """A 200 MB answer while ``huge_answers_left``, an empty one after."""
        await self._receive(request)
        if self.huge_answers_left <= 0:
            return Response(status_code=204)
        self.huge_answers_left -= 1

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(HUGE_CHUNKS):
                yield HUGE_CHUNK

        return StreamingResponse(chunks(), status_code=200)


@dataclass
class Server:
    downstream: Downstream
    base_url: str


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The downstream, served by uvicorn on a free port in its own thread."""
    downstream = Downstream()
    port = free_port()
    config = uvicorn.Config(
        downstream.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
    )
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, name="downstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uvicorn_server.started:
        assert time.monotonic() < deadline, "downstream did not start"
        time.sleep(0.01)
    yield Server(downstream, f"http://127.0.0.1:{port}")
    uvicorn_server.should_exit = True
    thread.join(10)


@pytest.fixture
async def make_sink(server: Server, tmp_path: Path) -> AsyncIterator[Any]:
    """Build sinks for a path on the downstream (``**environ`` tunes settings)."""
    sinks: list[HttpSink] = []

    def make(path: str, **environ: str) -> HttpSink:
        url = server.base_url + path
        sink = HttpSink(url, sink_settings(tmp_path, url, **environ))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.aclose()


@pytest.fixture
async def backend(server: Server, tmp_path: Path) -> AsyncIterator[Backend]:
    url = server.base_url + "/records"
    settings = sink_settings(tmp_path, url)

    async def read(key: str) -> dict[str, Any] | None:
        return server.downstream.records.get(key)

    backend = Backend(lambda: HttpSink(url, settings), read, keeps_applied_at=False)
    yield backend
    await backend.aclose()


class TestContract(SinkContract):
    """The shared sink contract, with the guard held by the downstream system."""

    # The downstream holds the records: there is nothing to read, and a 409 says no more.
    readable = False
    reports_held = False


class TestStatusMapping:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            pytest.param(status, expected, id=f"{status}-{name}")
            for name, expected, statuses in [
                ("applied", ApplyOutcome.APPLIED, (200, 201, 204)),
                ("stale", ApplyOutcome.STALE, (409,)),
                ("transient", TransientSinkError, (408, 429, 500, 503)),
                ("permanent", PermanentSinkError, (400, 401, 404, 422, 301)),
            ]
            for status in statuses
        ],
    )
    async def test_status(self, make_sink: Any, status: int, expected: Any) -> None:
        """Each downstream status maps to an outcome or an error class (SPEC §5)."""
        sink = make_sink(f"/status/{status}")
        record = make_record(new_key(), "succeeded")
        if isinstance(expected, ApplyOutcome):
            assert outcome_of(await sink.apply(record)) is expected
        else:
            with pytest.raises(expected, match=str(status)):
                await sink.apply(record)

    async def test_redirect_is_not_followed(self, make_sink: Any, server: Server) -> None:
        """A 3xx is not followed: only one request reaches the downstream."""
        sink = make_sink("/status/307")
        record = make_record(new_key(), "succeeded")
        with pytest.raises(PermanentSinkError):
            await sink.apply(record)
        ids = [r.headers["webhook-id"] for r in server.downstream.received]
        assert ids.count(record.last_event_id) == 1


class TestAnswerReport:
    @pytest.mark.parametrize(
        ("status", "error"),
        [(400, PermanentSinkError), (503, TransientSinkError)],
        ids=["permanent-400", "transient-503"],
    )
    async def test_failure_carries_status_and_redacted_snippet(
        self, make_sink: Any, status: int, error: type[Exception]
    ) -> None:
        """A failing answer's status and first 512 bytes (redacted) travel with the error."""
        sink = make_sink(f"/explain/{status}")
        with pytest.raises(error) as raised:
            await sink.apply(make_record(new_key(), "succeeded"))
        assert isinstance(raised.value, SinkError)
        assert raised.value.status == status
        answer = raised.value.answer
        assert answer is not None
        assert answer.startswith('{"error":"invalid_record","detail":"model z-image unknown"')
        assert len(answer.encode()) <= 512
        assert "rvya_sk_test_ECHOED0123" not in answer
        # Values under a secret's name are masked whatever they look like.
        assert "plainECHOED" not in answer
        assert '"api_key":"[REDACTED]","X-Api-Key":"[REDACTED]"' in answer

    async def test_applied_answer_is_reported(self, make_sink: Any) -> None:
        """A 2xx answer's status and body start come back with the applied outcome."""
        result = await make_sink("/explain/201").apply(make_record(new_key(), "succeeded"))
        assert isinstance(result, SinkResult)
        assert (result.outcome, result.status) == (ApplyOutcome.APPLIED, 201)
        assert result.answer is not None
        assert "invalid_record" in result.answer


class TestTransport:
    async def test_timeout_is_transient(self, make_sink: Any) -> None:
        """A downstream slower than the sink timeout is a transient error."""
        sink = make_sink("/slow", RECEIVER_SINK_TIMEOUT="200ms")
        started = time.monotonic()
        with pytest.raises(TransientSinkError, match="Timeout"):
            await sink.apply(make_record(new_key(), "queued"))
        assert time.monotonic() - started < SLOW_SECONDS

    async def test_connection_refused_is_transient(self, tmp_path: Path) -> None:
        """Nothing listening is a transient error, for apply and for ping."""
        url = f"http://127.0.0.1:{free_port()}/records"
        sink = HttpSink(url, sink_settings(tmp_path, url))
        with pytest.raises(TransientSinkError, match="ConnectError"):
            await sink.apply(make_record(new_key(), "queued"))
        with pytest.raises(TransientSinkError):
            await sink.ping()
        await sink.aclose()

    async def test_ping_accepts_any_answer(self, make_sink: Any) -> None:
        """A HEAD answered with 405 still proves the downstream is reachable."""
        await make_sink("/records").ping()

    async def test_messages_hide_query_and_credentials(
        self, server: Server, tmp_path: Path
    ) -> None:
        """Errors show the URL without its password or query string."""
        port = server.base_url.rsplit(":", 1)[1]
        url = f"http://user:hunter2-pass@127.0.0.1:{port}/status/500?token=sekrit-token"
        sink = HttpSink(url, sink_settings(tmp_path, url))
        with pytest.raises(TransientSinkError) as caught:
            await sink.apply(make_record(new_key(), "queued"))
        await sink.aclose()
        message = str(caught.value)
        assert "hunter2-pass" not in message
        assert "sekrit-token" not in message
        assert "/status/500" in message

    async def test_unsupported_scheme_is_permanent(self, tmp_path: Path) -> None:
        """A URL httpx cannot send to is a permanent error."""
        sink = HttpSink("ftp://127.0.0.1/x", sink_settings(tmp_path, "https://x/"))
        with pytest.raises(PermanentSinkError):
            await sink.apply(make_record(new_key(), "queued"))
        await sink.aclose()


class TestSigning:
    async def test_request_is_signed_and_carries_the_record(
        self, make_sink: Any, server: Server
    ) -> None:
        """The body is the record as JSON, and its signature verifies downstream."""
        record = full_record(new_key())
        assert outcome_of(await make_sink("/records").apply(record)) is ApplyOutcome.APPLIED
        (request,) = [
            r for r in server.downstream.received if r.headers["webhook-id"] == record.last_event_id
        ]
        assert request.verified
        assert request.headers["content-type"] == "application/json"
        assert orjson.loads(request.body) == record.event_json()
        assert "applied_at" not in orjson.loads(request.body), "the attempt's time is not sent"
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5

    async def test_same_webhook_id_on_retry(self, make_sink: Any, server: Server) -> None:
        """Every attempt of one event carries the event id as webhook-id, each signed."""
        sink = make_sink("/status/503")
        record = make_record(new_key(), "succeeded")
        for _ in range(3):
            with pytest.raises(TransientSinkError):
                await sink.apply(record)
        attempts = [
            r
            for r in server.downstream.received
            if r.body and orjson.loads(r.body)["record_key"] == record.record_key
        ]
        assert [r.headers["webhook-id"] for r in attempts] == [record.last_event_id] * 3
        assert all(r.verified for r in attempts)

    async def test_same_body_on_every_attempt(self, make_sink: Any, server: Server) -> None:
        """Attempts of one event send the same bytes, however far apart (applied_at, the
        attempt's own time, once changed them); only the timestamp and signature move."""
        record = full_record(new_key())
        sink = make_sink("/status/503")
        with pytest.raises(TransientSinkError):
            await sink.apply(record)
        first_second = int(
            server.downstream.requests_to("/status/503")[-1].headers["webhook-timestamp"]
        )
        # The next attempt falls in a later second, so its signature differs.
        eventually(lambda: int(time.time()) > first_second, what="the next second")
        with pytest.raises(TransientSinkError):
            await sink.apply(dataclasses.replace(record, applied_at=datetime.now(UTC)))
        first, second = [
            r
            for r in server.downstream.requests_to("/status/503")
            if r.headers["webhook-id"] == record.last_event_id
        ]
        assert first.body == second.body
        assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
        assert first.verified
        assert second.verified

    async def test_wrong_secret_is_rejected_downstream(self, make_sink: Any) -> None:
        """The downstream really checks: a sink with another secret gets 401, permanent."""
        sink = make_sink("/records", RECEIVER_FORWARD_SECRET=OTHER_SECRET)
        with pytest.raises(PermanentSinkError, match="401"):
            await sink.apply(make_record(new_key(), "queued"))

    def test_forward_secret_required(self, tmp_path: Path) -> None:
        """Without a forward secret the sink refuses to start."""
        settings = sink_settings(tmp_path, "log:", RECEIVER_FORWARD_SECRET="")
        with pytest.raises(ConfigError, match="RECEIVER_FORWARD_SECRET"):
            find_factory("https")("https://example.invalid/hook", settings)


class TestReplay:
    def test_replay_sends_the_same_bytes_and_id(
        self, server: Server, tmp_path: Path, redis_url: str, clean_redis: Any
    ) -> None:
        """A delivered event and its replay reach the downstream as the same body under the
        same webhook-id, each signed afresh and verified by the standardwebhooks library."""
        from receiver.keys import member_of
        from receiver.redis_client import create_client
        from receiver.store import EventStore
        from tests.factories import base_env, event_body, signed_headers
        from tests.servers import ServiceThread

        url = server.base_url + "/verified"
        settings = Settings.from_env(
            base_env(tmp_path, redis_url, RECEIVER_SINK=url, RECEIVER_FORWARD_SECRET=TEST_SECRET)
        )
        event_id = f"msg_{uuid.uuid4().hex}"
        body = event_body()

        def forwarded() -> list[Received]:
            return [
                r
                for r in server.downstream.requests_to("/verified")
                if r.headers["webhook-id"] == event_id
            ]

        with ServiceThread(settings, run_worker=True) as service:
            headers = signed_headers(body, event_id=event_id)
            assert (
                202
                == httpx.post(
                    f"{service.url}/webhooks/rivya", content=body, headers=headers
                ).status_code
            )
            eventually(lambda: len(forwarded()) == 1, what="the first forward")
            first_second = int(forwarded()[0].headers["webhook-timestamp"])
            eventually(lambda: int(time.time()) > first_second, what="the next second")

            async def requeue() -> bool:
                client = create_client(redis_url)
                try:
                    return await EventStore(client, retention_seconds=3600).requeue(
                        member_of("rivya", event_id), by="test"
                    )
                finally:
                    await client.aclose()

            assert asyncio.run(requeue())
            eventually(lambda: len(forwarded()) == 2, what="the replayed forward")
        first, replayed = forwarded()
        assert (first.body, first.headers["webhook-id"]) == (
            replayed.body,
            replayed.headers["webhook-id"],
        )
        assert first.verified
        assert replayed.verified
        assert first.headers["webhook-timestamp"] != replayed.headers["webhook-timestamp"]


def peak_rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


class EndlessAnswer:
    """A downstream on a raw socket that answers one request with a 200 MB body and counts
    what it managed to send before the client dropped the connection.

    Its send buffer is shrunk (SO_SNDBUF 4 KiB), so the count measures what the client
    took in (its receive buffer included), not what this side's kernel would queue."""

    TOTAL = 200 * 1024 * 1024

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.outcome = ""  # "dropped" (reset or broken pipe), "stalled" or "complete"
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="endless", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/records"

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(10)  # a client that stops reading yet keeps the connection
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.TOTAL)
            chunk = b"x" * 65536
            try:
                while self.sent < self.TOTAL:
                    self.sent += conn.send(chunk[: self.TOTAL - self.sent])
                self.outcome = "complete"
            except (ConnectionResetError, BrokenPipeError):
                self.outcome = "dropped"
            except TimeoutError:
                self.outcome = "stalled"
        self.finished.set()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(15)


class TestAnswers:
    async def test_huge_answer_stops_being_read_within_a_bound(self, tmp_path: Path) -> None:
        """A downstream answering 200 MB managed to send at most 1 MiB (the sink reads 64 KiB,
        the rest is what the socket buffers hold) before the sink dropped the connection:
        the sink stops reading and closes, rather than draining or leaving it open."""
        downstream = EndlessAnswer()
        sink = HttpSink(downstream.url, sink_settings(tmp_path, downstream.url))
        try:
            outcome = outcome_of(await sink.apply(make_record(new_key(), "succeeded")))
            finished = await asyncio.to_thread(downstream.finished.wait, 30)
        finally:
            await sink.aclose()
            downstream.close()
        assert (ApplyOutcome.APPLIED, True, "dropped") == (outcome, finished, downstream.outcome)
        assert downstream.sent <= 1024 * 1024, f"the sink took in {downstream.sent} bytes"

    async def test_huge_answer_is_not_read(self, make_sink: Any, server: Server) -> None:
        """A 200 MB answer is not read: its status decides, peak memory barely moves, and
        its connection is dropped rather than drained (the next request opens another)."""
        sink = make_sink("/huge")
        server.downstream.huge_answers_left = 1
        await asyncio.to_thread(Path("/proc/self/clear_refs").write_text, "5")  # peak := now
        before = peak_rss_kib()

        assert (
            outcome_of(await sink.apply(make_record(new_key(), "succeeded")))
            is ApplyOutcome.APPLIED
        )

        grown_mib = (peak_rss_kib() - before) / 1024
        assert grown_mib < 32, f"peak RSS grew by {grown_mib:.0f} MiB"
        assert (
            outcome_of(await sink.apply(make_record(new_key(), "queued"))) is ApplyOutcome.APPLIED
        )
        huge, small = server.downstream.requests_to("/huge")[-2:]
        assert huge.client_port != small.client_port

    async def test_small_answers_keep_the_connection(self, make_sink: Any, server: Server) -> None:
        """Answers under the bound are read to their end, so one connection serves them all."""
        sink = make_sink("/records")
        records = [make_record(new_key(), "queued") for _ in range(3)]
        for record in records:
            assert outcome_of(await sink.apply(record)) is ApplyOutcome.APPLIED
        ids = {record.last_event_id for record in records}
        ports = {
            r.client_port for r in server.downstream.received if r.headers["webhook-id"] in ids
        }
        assert 1 == len(ports)


class ProxyListener:
    """A TCP listener standing in for an HTTP proxy: it records who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            conn.close()

    def __enter__(self) -> ProxyListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class TestEnvironment:
    async def test_proxy_variables_are_ignored(
        self, make_sink: Any, server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """HTTP_PROXY (and friends) in the environment never see the sink URL: the record
        goes straight to the downstream."""
        with ProxyListener() as proxy:
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
                monkeypatch.setenv(name, proxy.url)
            for name in ("NO_PROXY", "no_proxy"):
                monkeypatch.delenv(name, raising=False)
            record = make_record(new_key(), "queued")
            assert outcome_of(await make_sink("/records").apply(record)) is ApplyOutcome.APPLIED
        assert 0 == proxy.connections
        ids = [r.headers["webhook-id"] for r in server.downstream.requests_to("/records")]
        assert record.last_event_id in ids

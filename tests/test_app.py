"""The HTTP interface (SPEC §3, §9) over a real socket, against a real Redis."""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from receiver.keys import all_shards, member_of
from receiver.settings import Settings
from receiver.signing import sign_standard
from tests.conftest import TEST_SECRET
from tests.factories import event_body, signed_headers
from tests.servers import ServiceThread

OTHER_SECRET = "whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC0xMjM0NTY="


def settings_for(tmp_path: Path, redis_url: str, **extra: str) -> Settings:
    env = {
        "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
        "RECEIVER_REDIS_URL": redis_url,
        "RECEIVER_DATA_DIR": str(tmp_path),
        "RECEIVER_SINK": "log:",
        "RECEIVER_MAX_BODY_BYTES": "4096",
    }
    env.update(extra)
    return Settings.from_env(env)


@pytest.fixture
def service(tmp_path: Path, redis_url: str, clean_redis: redis.Redis) -> Iterator[ServiceThread]:
    with ServiceThread(settings_for(tmp_path, redis_url), admin=True) as running:
        yield running


@pytest.fixture
def http(service: ServiceThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        yield client


@pytest.fixture
def admin(service: ServiceThread) -> Iterator[httpx.Client]:
    """The admin listener of the same service (metrics live there, SPEC §10)."""
    with httpx.Client(base_url=service.admin_url, timeout=10) as client:
        yield client


def stored_events(client: redis.Redis) -> list[bytes]:
    return [m for shard in all_shards(1) for m in client.zrange(shard.index, 0, -1)]


Case = Callable[[httpx.Client], httpx.Response]


def _post(body: bytes, headers: dict[str, str], path: str = "/webhooks/rivya") -> Case:
    return lambda client: client.post(path, content=body, headers=headers)


def _without(header: str) -> Case:
    body = event_body()
    headers = signed_headers(body)
    del headers[header]
    return _post(body, headers)


def _stale(offset: int) -> Case:
    body = event_body()
    # Signed when sent, not when collected: the offset is relative to the request.
    return lambda client: _post(body, signed_headers(body, timestamp=int(time.time()) + offset))(
        client
    )


def _streamed_over_limit(client: httpx.Client) -> httpx.Response:
    body = event_body()
    chunks = iter([body, b" " * 8192])  # no Content-Length: the limit must hold while streaming
    return client.post("/webhooks/rivya", content=chunks, headers=signed_headers(body))


_body = event_body()
REJECTIONS: list[Any] = [
    pytest.param(
        _post(_body, signed_headers(_body), "/webhooks/nope"),
        404,
        "unknown_source",
        id="unknown-source",
    ),
    pytest.param(
        _post(_body, signed_headers(_body), "/webhooks/rivya/x"), 404, "not_found", id="extra-path"
    ),
    pytest.param(lambda c: c.get("/webhooks/rivya"), 405, "method_not_allowed", id="get"),
    pytest.param(
        lambda c: c.put("/webhooks/rivya", content=b"{}"), 405, "method_not_allowed", id="put"
    ),
    pytest.param(
        _post(b"x" * 5000, signed_headers(b"x" * 5000)),
        413,
        "payload_too_large",
        id="declared-length",
    ),
    pytest.param(_streamed_over_limit, 413, "payload_too_large", id="streamed"),
    pytest.param(
        _post(_body, {**signed_headers(_body), "content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        id="text-plain",
    ),
    pytest.param(
        _post(_body, {k: v for k, v in signed_headers(_body).items() if k != "content-type"}),
        415,
        "unsupported_media_type",
        id="no-content-type",
    ),
    pytest.param(_without("webhook-id"), 400, "missing_signature_header", id="missing-id"),
    pytest.param(
        _without("webhook-timestamp"), 400, "missing_signature_header", id="missing-timestamp"
    ),
    pytest.param(
        _without("webhook-signature"), 400, "missing_signature_header", id="missing-signature"
    ),
    pytest.param(
        _post(_body, {**signed_headers(_body), "webhook-signature": "v1,AAAA"}),
        401,
        "invalid_signature",
        id="bad-signature",
    ),
    pytest.param(
        _post(_body, signed_headers(_body, secret=OTHER_SECRET)),
        401,
        "invalid_signature",
        id="unknown-key",
    ),
    pytest.param(
        _post(_body + b" ", signed_headers(_body)), 401, "invalid_signature", id="tampered-body"
    ),
    pytest.param(
        _post(_body, {**signed_headers(_body), "webhook-timestamp": "soon"}),
        401,
        "invalid_timestamp",
        id="bad-timestamp",
    ),
    pytest.param(_stale(-301), 401, "timestamp_out_of_tolerance", id="too-old"),
    # 302, not 301: the stamp is floored to the second, so 301 ahead passes once the request
    # crosses a second boundary on the way (a flaky 202).
    pytest.param(_stale(302), 401, "timestamp_out_of_tolerance", id="too-new"),
]


# SPEC §10: a 400 names the headers the source's scheme expects (here: standard).
EXTRA_FIELDS: dict[str, dict[str, Any]] = {
    "missing_signature_header": {
        "expected": ["webhook-id", "webhook-timestamp", "webhook-signature"]
    }
}


class TestRejections:
    @pytest.mark.parametrize(("send", "status", "code"), REJECTIONS)
    def test_rejection_answer(
        self, http: httpx.Client, clean_redis: redis.Redis, send: Case, status: int, code: str
    ) -> None:
        """Each bad delivery gets its precise status and JSON code, and nothing is stored."""
        response = send(http)
        expected = {"error": code, **EXTRA_FIELDS.get(code, {})}
        assert (status, expected) == (response.status_code, response.json())
        assert response.headers["content-type"] == "application/json"
        assert stored_events(clean_redis) == []

    def test_method_not_allowed_names_post(self, http: httpx.Client) -> None:
        """A 405 says which method is allowed."""
        assert http.get("/webhooks/rivya").headers["allow"] == "POST"

    def test_error_body_echoes_nothing(self, http: httpx.Client) -> None:
        """A rejection never repeats the body, the signature or the secret."""
        body = b'{"marker": "rvya_sk_test_echo"}'
        headers = {**signed_headers(body), "webhook-signature": "v1,c2lnbmF0dXJlLWVjaG8="}
        text = http.post("/webhooks/rivya", content=body, headers=headers).text
        for needle in ("rvya_sk_test_echo", "c2lnbmF0dXJlLWVjaG8=", TEST_SECRET):
            assert needle not in text


class TestAccept:
    def test_new_event_is_stored_then_answered(
        self, http: httpx.Client, clean_redis: redis.Redis
    ) -> None:
        """A valid new delivery answers 202 with its id and is stored pending and queued."""
        body = event_body(task_id="task_accept")
        headers = signed_headers(body, event_id="msg_accept")
        response = http.post("/webhooks/rivya", content=body, headers=headers)
        assert (
            response.status_code,
            response.json(),
        ) == (202, {"status": "accepted", "event_id": "msg_accept"})
        shard = all_shards(1)[0]
        member = member_of("rivya", "msg_accept")
        stored = clean_redis.hgetall(shard.event(member))
        assert stored[b"body"] == body
        assert (
            stored[b"state"],
            stored[b"record_key"],
            stored[b"type"],
        ) == (b"pending", b"task_accept", b"generation.succeeded")
        assert clean_redis.xlen(shard.stream) == 1
        assert 0 < clean_redis.pttl(shard.event(member)) <= 30 * 86400 * 1000

    def test_duplicate_same_body(self, http: httpx.Client, clean_redis: redis.Redis) -> None:
        """The same id and body again is a 200 duplicate, stored and queued once."""
        body = event_body()
        headers = signed_headers(body, event_id="msg_dup")
        first = http.post("/webhooks/rivya", content=body, headers=headers)
        second = http.post("/webhooks/rivya", content=body, headers=headers)
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json() == {"status": "duplicate", "event_id": "msg_dup"}
        assert clean_redis.xlen(all_shards(1)[0].stream) == 1

    def test_conflict_keeps_first_copy_and_counts(
        self, http: httpx.Client, admin: httpx.Client, clean_redis: redis.Redis
    ) -> None:
        """Same id, different body: answered as duplicate, first copy stands, counted."""
        first_body, second_body = event_body(task_id="task_a"), event_body(task_id="task_b")
        http.post(
            "/webhooks/rivya",
            content=first_body,
            headers=signed_headers(first_body, event_id="msg_c"),
        )
        before = _metric(admin, 'receiver_conflicts_total{source="rivya"}')
        response = http.post(
            "/webhooks/rivya",
            content=second_body,
            headers=signed_headers(second_body, event_id="msg_c"),
        )
        assert (response.status_code, response.json()["status"]) == (200, "duplicate")
        stored = clean_redis.hget(all_shards(1)[0].event(member_of("rivya", "msg_c")), "body")
        assert stored == first_body
        assert _metric(admin, 'receiver_conflicts_total{source="rivya"}') == before + 1

    @pytest.mark.parametrize(
        ("body", "reason", "code"),
        [
            pytest.param(
                b"not json at all \xff", "unmappable: not_json", "not_json", id="not-json"
            ),
            pytest.param(b"[1, 2]", "unmappable: not_an_object", "unmappable", id="array"),
            pytest.param(
                b'{"type": "generation.succeeded", "data": {"status": "succeeded"}}',
                "unmappable: missing_task_id",
                "unmappable",
                id="no-task-id",
            ),
            pytest.param(
                b'{"data": {"id": "t1", "status": "exploded"}}',
                "unmappable: unknown_status",
                "unmappable",
                id="bad-status",
            ),
            pytest.param(
                b'{"data": {"id": "t1", "status": "queued", "final_credits": 9223372036854775808}}',
                "unmappable: invalid_number: final_credits is outside 0..2^53",
                "invalid_number",
                id="credits-2^63",
            ),
            pytest.param(
                b'{"data": {"id": "t1", "status": "queued", "reserved_credits": 1e400}}',
                "unmappable: invalid_number: a number is infinite as a double",
                "invalid_number",
                id="credits-1e400",
            ),
        ],
    )
    def test_authentic_but_unmappable_is_stored_dead(
        self, http: httpx.Client, clean_redis: redis.Redis, body: bytes, reason: str, code: str
    ) -> None:
        """A correctly signed body we cannot map is answered 202 and stored dead with its reason."""
        event_id = f"msg_{uuid.uuid4().hex}"
        response = http.post(
            "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
        )
        assert response.status_code == 202
        shard = all_shards(1)[0]
        stored = clean_redis.hgetall(shard.event(member_of("rivya", event_id)))
        assert (b"dead", reason.encode(), code.encode(), body) == (
            stored[b"state"],
            stored[b"last_error"],
            stored[b"reason_code"],
            stored[b"body"],
        )
        assert clean_redis.xlen(shard.stream) == 0
        assert clean_redis.zscore(shard.dead, member_of("rivya", event_id)) is not None

    def test_fifty_concurrent_copies_store_once(
        self, service: ServiceThread, clean_redis: redis.Redis
    ) -> None:
        """50 concurrent deliveries of one message: exactly one 202, one stored event."""
        body = event_body()
        headers = signed_headers(body, event_id="msg_race")

        def deliver(_: int) -> int:
            with httpx.Client(timeout=10) as client:
                return client.post(
                    f"{service.url}/webhooks/rivya", content=body, headers=headers
                ).status_code

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            statuses = list(pool.map(deliver, range(50)))
        assert (statuses.count(202), statuses.count(200)) == (1, 49)
        assert [member_of("rivya", "msg_race").encode()] == stored_events(clean_redis)
        assert clean_redis.xlen(all_shards(1)[0].stream) == 1

    def test_svix_headers_are_accepted(self, http: httpx.Client) -> None:
        """The svix-* aliases of the Standard Webhooks headers work end to end."""
        body = event_body()
        headers = {
            f"svix-{k[8:]}" if k.startswith("webhook-") else k: v
            for k, v in signed_headers(body).items()
        }
        assert http.post("/webhooks/rivya", content=body, headers=headers).status_code == 202


class TestStripeScheme:
    def test_stripe_event_id_comes_from_body(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """With the stripe scheme the body's id is the event id and the dedup key."""
        from receiver.signing import sign_stripe

        settings = settings_for(
            tmp_path,
            redis_url,
            RECEIVER_SIGNATURE_SCHEME="stripe",
            RECEIVER_WEBHOOK_SECRET="plain-stripe-secret",
        )
        body = event_body()
        event_id = orjson.loads(body)["id"]
        header = sign_stripe("plain-stripe-secret", int(time.time()), body)
        with ServiceThread(settings) as service, httpx.Client(base_url=service.url) as client:
            headers = {"content-type": "application/json", "rivya-signature": header}
            first = client.post("/webhooks/rivya", content=body, headers=headers)
            second = client.post("/webhooks/rivya", content=body, headers=headers)
            missing = client.post(
                "/webhooks/rivya", content=body, headers={"content-type": "application/json"}
            )
        assert (202, event_id, 200) == (
            first.status_code,
            first.json()["event_id"],
            second.status_code,
        )
        assert (400, {"error": "missing_signature_header", "expected": ["Rivya-Signature"]}) == (
            missing.status_code,
            missing.json(),
        )


class TestOperationalRoutes:
    def test_health_ready_metrics(self, http: httpx.Client, admin: httpx.Client) -> None:
        """/healthz and /readyz answer 200; /metrics speaks Prometheus text on the admin port."""
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json() == {"status": "ready"}
        assert http.get("/metrics").status_code == 404
        text = admin.get("/metrics").text
        for name in (
            "receiver_requests_total",
            "receiver_request_duration_seconds",
            "receiver_verification_failures_total",
            "receiver_duplicates_total",
            "receiver_conflicts_total",
        ):
            assert f"# TYPE {name.removesuffix('_total')}" in text

    def test_unknown_route_is_json_404(self, http: httpx.Client) -> None:
        """Paths outside the contract get a JSON 404 too."""
        response = http.get("/nothing-here")
        assert (response.status_code, response.json()) == (404, {"error": "not_found"})

    def test_verification_failures_are_counted_by_reason(
        self, http: httpx.Client, admin: httpx.Client
    ) -> None:
        """A bad signature increments the failure counter for its reason."""
        metric = 'receiver_verification_failures_total{reason="invalid_signature"}'
        before = _metric(admin, metric)
        body = event_body()
        http.post(
            "/webhooks/rivya",
            content=body,
            headers={**signed_headers(body), "webhook-signature": "v1,AAAA"},
        )
        assert _metric(admin, metric) == before + 1


def _metric(http: httpx.Client, sample: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_sign_helper_matches_headers() -> None:
    """The factory signs with the same function the service verifies against."""
    headers = signed_headers(b"{}", event_id="msg_1", timestamp=1)
    assert headers["webhook-signature"] == sign_standard(TEST_SECRET, "msg_1", 1, b"{}")


def test_readiness_does_not_depend_on_the_sink(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """A sink nobody answers for: serve stays ready and accepts (events wait in Redis), and
    readiness never calls the sink (SPEC §3: the sink's health is the worker's)."""
    from tests.conftest import free_port

    settings = settings_for(
        tmp_path, redis_url, RECEIVER_SINK=f"http://127.0.0.1:{free_port()}/gone",
        RECEIVER_FORWARD_SECRET=TEST_SECRET,
    )  # fmt: skip
    with ServiceThread(settings) as service:
        ready = httpx.get(f"{service.url}/readyz")
        body = event_body()
        accepted = httpx.post(
            f"{service.url}/webhooks/rivya", content=body, headers=signed_headers(body)
        )
    assert (200, {"status": "ready"}, 202) == (
        ready.status_code,
        ready.json(),
        accepted.status_code,
    )

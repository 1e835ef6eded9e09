"""The admin listener over real HTTP: who gets in, what each role may do, and what the
public port never shows (SPEC §10), against a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from receiver.console.api import API
from receiver.console.users import Role, hash_token
from receiver.settings import Settings
from tests.conftest import TEST_SECRET
from tests.console_helpers import Person, csrf_of, sign_in, write_users
from tests.factories import event_body, signed_headers
from tests.helpers import eventually
from tests.servers import ServiceThread

PEOPLE = (("olga", Role.OPERATOR), ("vic", Role.VIEWER))
PAGES = ("/", "/events", "/failed", "/audit", "/events/msg_x")
# Every path the admin listener serves, as the public port must refuse them.
ADMIN_PATHS = (*PAGES, "/metrics", "/sign-in", "/static/console.css",
               *(route.path.replace("{event_id:path}", "msg_x")
                 .replace("{record_key:path}", "task_x") for route in API))  # fmt: skip


def settings(tmp_path: Path, redis_url: str, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "RECEIVER_WEBHOOK_SECRET": TEST_SECRET,
            "RECEIVER_REDIS_URL": redis_url,
            "RECEIVER_DATA_DIR": str(tmp_path),
            "RECEIVER_SINK": "log:",
            **extra,
        }
    )


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Person]]:
    path = tmp_path_factory.mktemp("console") / "users"
    return path, write_users(path, *PEOPLE)


@pytest.fixture(scope="module")
def service(
    people: tuple[Path, dict[str, Person]],
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceThread]:
    redis.Redis.from_url(redis_url).flushdb()
    users_file, _ = people
    config = settings(
        tmp_path_factory.mktemp("data"), redis_url, RECEIVER_ADMIN_USERS_FILE=str(users_file)
    )
    with ServiceThread(config, admin=True) as running:
        yield running


def client(service: ServiceThread) -> httpx.Client:
    return httpx.Client(base_url=service.admin_url, timeout=10, follow_redirects=False)


@pytest.fixture
def olga(people: tuple[Path, dict[str, Person]]) -> Person:
    return people[1]["olga"]


@pytest.fixture
def vic(people: tuple[Path, dict[str, Person]]) -> Person:
    return people[1]["vic"]


def api_requests() -> list[tuple[str, str]]:
    return [
        (route.method, "/api/v1" + route.path.replace("{event_id:path}", "msg_x")
         .replace("{record_key:path}", "task_x"))
        for route in API
    ]  # fmt: skip


class TestNobodyGetsIn:
    @pytest.mark.parametrize(("method", "path"), api_requests())
    def test_api_refuses_without_session_or_token(
        self, service: ServiceThread, method: str, path: str
    ) -> None:
        """Every API route answers 401 unauthenticated to a request with no credentials."""
        with client(service) as http:
            response = http.request(method, path, json={} if method == "POST" else None)
        assert (401, {"error": "unauthenticated"}) == (response.status_code, response.json())

    @pytest.mark.parametrize("path", PAGES)
    def test_pages_send_strangers_to_sign_in(self, service: ServiceThread, path: str) -> None:
        """Every page redirects a visitor without a session to the sign-in page."""
        with client(service) as http:
            response = http.get(path)
        assert 303 == response.status_code
        assert response.headers["location"].startswith("/sign-in?next=")

    def test_actions_refuse_without_session(self, service: ServiceThread) -> None:
        """A form post without a session is refused and changes nothing."""
        with client(service) as http:
            response = http.post("/actions/replay", data={"event_id": "msg_x"})
        assert 401 == response.status_code

    def test_metrics_and_readiness_need_no_sign_in(self, service: ServiceThread) -> None:
        """/metrics and the detailed /readyz stay open for Prometheus and probes."""
        with client(service) as http:
            assert http.get("/metrics").status_code == 200
            ready = http.get("/readyz")
        assert (200, "ready", "ok") == (
            ready.status_code, ready.json()["status"], ready.json()["redis"],
        )  # fmt: skip


class TestTokens:
    def test_a_wrong_token_is_never_accepted(self, service: ServiceThread, olga: Person) -> None:
        """Near misses, the stored hash and junk are 401; only the exact token is let in."""
        wrong = [
            olga.token[:-1] + ("A" if olga.token[-1] != "A" else "B"),
            olga.token + "x",
            olga.token[:-4],
            hash_token(olga.token),
            hash_token(olga.token).removeprefix("sha256:"),
            "rcvadm_" + "A" * 43,
            "x",
        ]
        with client(service) as http:
            answers = [
                http.get("/api/v1/events", headers={"Authorization": f"Bearer {token}"})
                for token in wrong
            ]
            right = http.get("/api/v1/events", headers=olga.bearer)
        assert [401] * len(wrong) == [answer.status_code for answer in answers]
        assert 200 == right.status_code

    def test_bearer_scheme_is_required(self, service: ServiceThread, olga: Person) -> None:
        """A token sent as Basic (or bare) credentials is refused."""
        with client(service) as http:
            response = http.get("/api/v1/events", headers={"Authorization": f"Basic {olga.token}"})
        assert 401 == response.status_code


class TestRoles:
    @pytest.mark.parametrize(
        ("method", "path"), [r for r in api_requests() if r[0] == "POST"], ids=lambda v: v
    )
    def test_viewers_get_403_on_every_action(
        self, service: ServiceThread, vic: Person, method: str, path: str
    ) -> None:
        """Every POST route answers 403 forbidden to a viewer, by token."""
        with client(service) as http:
            response = http.request(method, path, headers=vic.bearer, json={})
        assert (403, {"error": "forbidden"}) == (response.status_code, response.json())

    @pytest.mark.parametrize(
        ("method", "path"), [r for r in api_requests() if r[0] == "POST"], ids=lambda v: v
    )
    def test_operators_pass_the_role_check(
        self, service: ServiceThread, olga: Person, method: str, path: str
    ) -> None:
        """The same routes let an operator through (the answer is about the request)."""
        with client(service) as http:
            response = http.request(method, path, headers=olga.bearer, json={})
        assert response.status_code not in (401, 403)

    def test_viewers_read(self, service: ServiceThread, vic: Person) -> None:
        """A viewer reads events and the audit log."""
        with client(service) as http:
            assert http.get("/api/v1/events", headers=vic.bearer).status_code == 200
            assert http.get("/api/v1/audit", headers=vic.bearer).status_code == 200


class TestSessions:
    def test_sign_in_sets_a_strict_http_only_cookie(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """The session cookie is HttpOnly, SameSite=Strict, expiring, not Secure over HTTP."""
        with client(service) as http:
            response = http.post("/sign-in", data={"token": olga.token})
        cookie = response.headers["set-cookie"].lower()
        assert 303 == response.status_code
        assert {"httponly", "samesite=strict", "path=/"} <= {
            part.strip() for part in cookie.split(";")
        }
        assert "max-age=" in cookie
        assert "secure" not in {part.strip() for part in cookie.split(";")}
        assert olga.token.lower() not in cookie

    def test_cookie_is_secure_behind_https(self, service: ServiceThread, olga: Person) -> None:
        """Behind a TLS proxy (X-Forwarded-Proto: https) the cookie is Secure."""
        with client(service) as http:
            response = http.post(
                "/sign-in", data={"token": olga.token}, headers={"X-Forwarded-Proto": "https"}
            )
        cookie = response.headers["set-cookie"].lower()
        assert "secure" in {part.strip() for part in cookie.split(";")}

    def test_a_post_without_the_csrf_token_is_refused(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """Signed in by cookie, an action without (or with a wrong) CSRF token is 403."""
        with client(service) as http:
            csrf = sign_in(http, olga)
            bare = http.post("/api/v1/replays", json={"filter": {"state": "dead"}})
            wrong = http.post(
                "/api/v1/replays",
                json={"filter": {"state": "dead"}},
                headers={"X-CSRF-Token": csrf[:-1] + ("y" if csrf.endswith("x") else "x")},
            )
            form = http.post("/actions/replay", data={"event_id": "msg_x"})
            good = http.post(
                "/api/v1/replays",
                json={"filter": {"state": "dead"}, "dry_run": True},
                headers={"X-CSRF-Token": csrf},
            )
        assert [403, 403, 403] == [bare.status_code, wrong.status_code, form.status_code]
        assert {"error": "csrf_failed"} == bare.json()
        assert 200 == good.status_code

    def test_every_role_can_sign_out(self, service: ServiceThread, vic: Person) -> None:
        """A viewer signs out (the one POST not reserved to operators); the cookie is gone."""
        with client(service) as http:
            csrf = sign_in(http, vic)
            response = http.post("/sign-out", data={"csrf": csrf})
            after = http.get("/api/v1/events")
        assert (303, 401) == (response.status_code, after.status_code)

    def test_a_cross_site_origin_is_refused(self, service: ServiceThread, olga: Person) -> None:
        """A POST whose Origin is another site is refused even with the right token."""
        with client(service) as http:
            csrf = sign_in(http, olga)
            response = http.post(
                "/api/v1/replays",
                json={"filter": {"state": "dead"}, "dry_run": True},
                headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"},
            )
        assert 403 == response.status_code

    def test_a_tampered_cookie_is_not_a_session(self, service: ServiceThread, olga: Person) -> None:
        """Changing one character of the signed cookie signs the person out."""
        with client(service) as http:
            sign_in(http, olga)
            value = http.cookies["receiver_session"]
            http.cookies.set(
                "receiver_session", value[:-2] + ("aa" if value[-2:] != "aa" else "bb")
            )
            response = http.get("/api/v1/events")
        assert 401 == response.status_code

    def test_pages_carry_the_security_headers(self, service: ServiceThread, olga: Person) -> None:
        """Data pages are never cached, never framed, and allow only this origin's files."""
        with client(service) as http:
            sign_in(http, olga)
            response = http.get("/events")
        headers = response.headers
        assert 200 == response.status_code
        assert "default-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert ("DENY", "no-referrer", "nosniff", "no-store") == (
            headers["x-frame-options"], headers["referrer-policy"],
            headers["x-content-type-options"], headers["cache-control"],
        )  # fmt: skip


def test_public_port_serves_no_console_path(service: ServiceThread, olga: Person) -> None:
    """Every console, API and metrics path answers 404 on the public port, even signed in."""
    with httpx.Client(base_url=service.url, timeout=10) as http:
        answers = {
            path: http.request(method, path, headers=olga.bearer).status_code
            for path in ADMIN_PATHS
            for method in ("GET", "POST")
        }
        assert http.get("/healthz").status_code == 200
    assert dict.fromkeys(ADMIN_PATHS, 404) == answers


def test_removing_a_person_ends_their_session(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """Deleting a line from the users file signs that person out without a restart."""
    users_file = tmp_path / "users"
    made = write_users(users_file, ("olga", Role.OPERATOR), ("ann", Role.OPERATOR))
    config = settings(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(users_file))
    with ServiceThread(config, admin=True) as running, client(running) as http:
        sign_in(http, made["ann"])
        assert http.get("/api/v1/events").status_code == 200
        kept = [line for line in users_file.read_text().splitlines() if not line.startswith("ann ")]
        users_file.write_text("\n".join(kept) + "\n")
        eventually(lambda: http.get("/api/v1/events").status_code == 401, what="ann signed out")
        assert http.get("/api/v1/events", headers=made["olga"].bearer).status_code == 200


def test_without_a_users_file_nobody_signs_in(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    """No RECEIVER_ADMIN_USERS_FILE: console and API refuse everything, metrics still work."""
    with (
        ServiceThread(settings(tmp_path, redis_url), admin=True) as running,
        client(running) as http,
    ):
        api = http.get("/api/v1/events", headers={"Authorization": "Bearer rcvadm_x"})
        page = http.get("/sign-in")
        assert http.get("/metrics").status_code == 200
    assert (401, {"error": "console_disabled"}) == (api.status_code, api.json())
    assert "no users file is configured" in page.text


class TestSignInLimit:
    def test_failed_sign_ins_are_limited_per_address(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """After 10 failures from one address even the right token waits (429, Retry-After)."""
        users_file = tmp_path / "users"
        made = write_users(users_file, ("olga", Role.OPERATOR))
        config = settings(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(users_file))
        with ServiceThread(config, admin=True) as running, client(running) as http:
            failures = [
                http.post("/sign-in", data={"token": f"rcvadm_wrong{n}"}).status_code
                for n in range(10)
            ]
            limited = http.post("/sign-in", data={"token": made["olga"].token})
            by_token = http.get("/api/v1/events", headers=made["olga"].bearer)
            elsewhere = http.get(
                "/api/v1/events", headers={**made["olga"].bearer, "X-Forwarded-For": "10.9.9.9"}
            )
        assert [401] * 10 == failures
        assert (429, 429) == (limited.status_code, by_token.status_code)
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        assert 200 == elsewhere.status_code, "another address is not limited"

    def test_failed_sign_ins_are_limited_globally(
        self, tmp_path: Path, redis_url: str, clean_redis: redis.Redis
    ) -> None:
        """100 failures spread over 100 addresses stop sign-ins from a 101st address too."""
        users_file = tmp_path / "users"
        made = write_users(users_file, ("olga", Role.OPERATOR))
        config = settings(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(users_file))
        with ServiceThread(config, admin=True) as running, client(running) as http:
            for n in range(100):
                http.post(
                    "/sign-in",
                    data={"token": "rcvadm_wrong"},
                    headers={"X-Forwarded-For": f"10.0.{n // 250}.{n % 250 + 1}"},
                )
            fresh = http.post(
                "/sign-in",
                data={"token": made["olga"].token},
                headers={"X-Forwarded-For": "10.1.0.1"},
            )
        assert 429 == fresh.status_code
        assert "Retry-After" in fresh.headers


def test_failed_sign_ins_are_logged_without_the_token(
    tmp_path: Path, redis_url: str, clean_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed sign-in logs who tried from where, never the token that was tried."""
    users_file = tmp_path / "users"
    write_users(users_file, ("olga", Role.OPERATOR))
    config = settings(tmp_path, redis_url, RECEIVER_ADMIN_USERS_FILE=str(users_file))
    tried = "rcvadm_" + "Z" * 43
    with ServiceThread(config, admin=True) as running, client(running) as http:
        http.post("/sign-in", data={"token": tried})
        http.get("/api/v1/events", headers={"Authorization": f"Bearer {tried}x"})
        time.sleep(0.2)
    output = capsys.readouterr()
    text = output.out + output.err
    assert "admin_sign_in_failed" in text
    assert tried not in text


def test_replay_by_api_is_audited_with_the_persons_name(
    service: ServiceThread, olga: Person
) -> None:
    """POST /api/v1/events/{id}/replay queues the event and the audit names the person."""
    body = event_body()
    headers = signed_headers(body)
    with httpx.Client(base_url=service.url, timeout=10) as public:
        assert public.post("/webhooks/rivya", content=body, headers=headers).status_code == 202
    event_id = headers["webhook-id"]
    with client(service) as http:
        replayed = http.post(f"/api/v1/events/{event_id}/replay", headers=olga.bearer)
        missing = http.post("/api/v1/events/msg_none/replay", headers=olga.bearer)
        audit = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"]
    assert (202, 1) == (replayed.status_code, replayed.json()["queued"])
    assert (404, {"error": "unknown_event"}) == (missing.status_code, missing.json())
    assert ("olga", 1) == (audit[0]["actor"], audit[0]["queued"])


def test_console_pages_render_for_a_signed_in_person(service: ServiceThread, olga: Person) -> None:
    """Each page answers 200 HTML with the person's CSRF token in its forms."""
    with client(service) as http:
        csrf = sign_in(http, olga)
        answers = {path: http.get(path) for path in ("/", "/events", "/failed", "/audit")}
    assert dict.fromkeys(answers, 200) == {p: r.status_code for p, r in answers.items()}
    assert csrf == csrf_of(answers["/events"].text)


class TestTrackTasks:
    def test_an_operator_token_tracks_submitted_tasks(
        self, service: ServiceThread, olga: Person, redis_url: str
    ) -> None:
        """POST /api/v1/tasks watches the tasks (202), again is idempotent, and status shows
        them in its reconcile section (issue 16)."""
        from tests.reconcilers import watched

        body = {"task_ids": ["task_api_1", "task_api_2", "task_api_1"]}
        with client(service) as http:
            first = http.post("/api/v1/tasks", headers=olga.bearer, json=body)
            again = http.post(
                "/api/v1/tasks", headers=olga.bearer, json={"task_ids": ["task_api_2"]}
            )
            status = http.get("/api/v1/status", headers=olga.bearer).json()
        assert 202 == first.status_code
        assert (["task_api_1", "task_api_2"], 2, 0) == (
            first.json()["task_ids"],
            first.json()["newly_watched"],
            first.json()["already_watched"],
        )
        assert (0, 1) == (again.json()["newly_watched"], again.json()["already_watched"])
        with redis.Redis.from_url(redis_url) as admin:
            assert {"task_api_1", "task_api_2"} <= set(watched(admin))
        assert status["reconcile"]["watched"] >= 2
        assert status["reconcile"]["key_refused"] is False

    @pytest.mark.parametrize(
        ("body", "detail"),
        [
            ({}, "task_ids: a list"),
            ({"task_ids": "task_1"}, "task_ids: a list"),
            ({"task_ids": []}, "at least one"),
            ({"task_ids": ["ok", "has space"]}, "item 2 is not a task id"),
            ({"task_ids": [12]}, "item 1 is not a task id"),
            ({"task_ids": ["t"] * 1001}, "at most 1000"),
        ],
        ids=["missing", "not-a-list", "empty", "space", "number", "too-many"],
    )
    def test_what_cannot_be_a_task_id_is_400(
        self, service: ServiceThread, olga: Person, body: dict[str, object], detail: str
    ) -> None:
        """Anything but a list of 1 to 1000 task ids is 400 invalid_parameter, saying which."""
        with client(service) as http:
            response = http.post("/api/v1/tasks", headers=olga.bearer, json=body)
        assert (400, "invalid_parameter") == (response.status_code, response.json()["error"])
        assert detail in response.json()["detail"]

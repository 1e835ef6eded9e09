"""The admin listener over real HTTP: who gets in, what each role may do, and what the
public port never shows (SPEC §10), against a real Redis."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from starlette.routing import BaseRoute, Mount, Route

from receiver.console import AdminApp
from receiver.console.api import API
from receiver.console.users import Role, hash_token
from receiver.settings import Settings
from tests.conftest import TEST_SECRET
from tests.console_helpers import Person, csrf_of, sign_in, write_users
from tests.factories import event_body, signed_headers
from tests.helpers import eventually
from tests.servers import ServiceThread

PEOPLE = (("olga", Role.OPERATOR), ("vic", Role.VIEWER))
PAGES = (
    "/", "/events", "/failed", "/audit", "/events/msg_x", "/deliveries",
    "/deliveries/rejected/1-0", "/records", "/credits", "/replays/1-0",
)  # fmt: skip
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
    with ServiceThread(config, admin=True, run_worker=True) as running:
        yield running


def client(service: ServiceThread) -> httpx.Client:
    return httpx.Client(base_url=service.admin_url, timeout=10, follow_redirects=False)


@pytest.fixture
def olga(people: tuple[Path, dict[str, Person]]) -> Person:
    return people[1]["olga"]


@pytest.fixture
def vic(people: tuple[Path, dict[str, Person]]) -> Person:
    return people[1]["vic"]


def route_paths(app: AdminApp | None, method: str | None = None) -> list[str]:
    """Every path the admin app answers (``method`` only, if given), read from its route
    table (mounts too), with each path parameter as written in the route."""
    assert app is not None, "started with admin=True"

    def walk(routes: Sequence[BaseRoute], prefix: str) -> Iterator[str]:
        for route in routes:
            if isinstance(route, Mount):
                yield from walk(route.routes, prefix + route.path)
            elif isinstance(route, Route) and (method is None or method in (route.methods or ())):
                yield prefix + route.path

    return list(walk(app.routes, ""))


def post_paths(app: AdminApp | None) -> list[str]:
    """Every path the admin app answers POST on."""
    return route_paths(app, "POST")


def concrete(path: str, value: str = "x_1") -> str:
    """A route path with each ``{parameter}`` filled in with ``value``."""
    return re.sub(r"\{[^}]+\}", value, path)


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

    def test_a_viewer_session_gets_403_on_every_post_route_and_changes_nothing(
        self, service: ServiceThread, olga: Person, vic: Person
    ) -> None:
        """Every POST route of the admin app's route table (forms and API; signing in and
        out aside) answers 403 forbidden to a signed-in viewer with a valid CSRF token,
        with a request that would act on a dead event, and the event stays dead, unaudited."""
        event_id = _deliver(service, UNMAPPABLE)
        eventually(lambda: _state(service, olga, event_id) == "dead", what="dead on arrival")
        with client(service) as http:
            dead = http.get(
                "/api/v1/events", params={"state": "dead", "reason": "unmappable", "limit": 100},
                headers=olga.bearer,
            ).json()["events"]  # fmt: skip
            audit_before = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"]
            before = http.get(f"/api/v1/events/{event_id}", headers=olga.bearer).json()
            # What an operator would send to act on it, through every route at once.
            form = {"event_id": event_id, "source": "rivya", "state": "dead",
                    "reason": "unmappable", "why": "a viewer tries", "step": "run",
                    "expected": str(len(dead))}  # fmt: skip
            document = {"reason": "a viewer tries", "dry_run": False, "task_ids": ["task_vic"],
                        "filter": {"state": "dead", "reason": "unmappable"}}  # fmt: skip
            watched_before = self._watched(http, olga)
            csrf = sign_in(http, vic)
            statuses: dict[str, int] = {}
            api_errors: dict[str, str] = {}
            for path in post_paths(service.admin_app):
                if path in ("/sign-in", "/sign-out"):  # no session yet / every role's
                    continue
                url = concrete(path, event_id)
                if path.startswith("/api/"):
                    answer = http.post(url, json=document, headers={"X-CSRF-Token": csrf})
                    api_errors[path] = answer.json().get("error", "")
                else:
                    answer = http.post(url, data={**form, "csrf": csrf})
                statuses[path] = answer.status_code
            after = http.get(f"/api/v1/events/{event_id}", headers=olga.bearer).json()
            audit_after = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"]
            watched_after = self._watched(http, olga)
        assert any(path.startswith("/actions/") for path in statuses), statuses
        assert any(path.startswith("/api/v1/") for path in statuses), statuses
        assert dict.fromkeys(statuses, 403) == statuses
        assert dict.fromkeys(api_errors, "forbidden") == api_errors  # the role, not CSRF
        assert ("dead", before["history"]) == (after["state"], after["history"])
        assert audit_before == audit_after, "nothing was replayed or resolved"
        assert watched_before == watched_after, "no task was tracked"

    @staticmethod
    def _watched(http: httpx.Client, person: Person) -> int:
        status = http.get("/api/v1/status", headers=person.bearer).json()
        return int(status["reconcile"]["watched"])

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
    """Every console, API and metrics path answers 404 on the public port, even signed in:
    the listed ones and every route of the admin app's table, so a new route is covered."""
    # The two probes are on both listeners (the public one answers a bare /readyz).
    routed = set(map(concrete, route_paths(service.admin_app))) - {"/healthz", "/readyz"}
    paths = sorted({*ADMIN_PATHS, *routed})
    assert len(paths) > len(ADMIN_PATHS), "the route table adds the /actions/* routes"
    with httpx.Client(base_url=service.url, timeout=10) as http:
        answers = {
            path: http.request(method, path, headers=olga.bearer).status_code
            for path in paths
            for method in ("GET", "POST")
        }
        assert http.get("/healthz").status_code == 200
    assert dict.fromkeys(paths, 404) == answers


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
        answers = {path: http.get(path) for path in PAGES if "/msg_x" not in path}
    expected = {path: 404 if path.startswith(("/deliveries/rejected/", "/replays/")) and
                path != "/replays/1-0" else 200 for path in answers}  # fmt: skip
    expected["/deliveries/rejected/1-0"] = 404  # no such rejection: a page that says so
    assert expected == {p: r.status_code for p, r in answers.items()}
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


def _deliver(service: ServiceThread, body: bytes, **headers: str) -> str:
    signed = {**signed_headers(body), **headers}
    with httpx.Client(base_url=service.url, timeout=10) as public:
        answer = public.post("/webhooks/rivya", content=body, headers=signed)
    assert answer.status_code in (200, 202), answer.text
    return signed["webhook-id"]


def _state(service: ServiceThread, person: Person, event_id: str) -> str:
    with client(service) as http:
        answer = http.get(f"/api/v1/events/{event_id}", headers=person.bearer)
    return str(answer.json().get("state"))


UNMAPPABLE = orjson.dumps({"type": "generation.succeeded", "data": {"status": "succeeded"}})


class TestResolve:
    def test_resolve_closes_a_dead_event_and_is_audited(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """POST /events/{id}/resolve closes a dead event with the reason, names the person
        in the audit, and refuses to resolve it again (409 not_dead)."""
        event_id = _deliver(service, UNMAPPABLE)
        eventually(lambda: _state(service, olga, event_id) == "dead", what="dead on arrival")
        with client(service) as http:
            path = f"/api/v1/events/{event_id}/resolve"
            first = http.post(path, headers=olga.bearer, json={"reason": "sandbox test event"})
            again = http.post(path, headers=olga.bearer, json={"reason": "again"})
            shown = http.get(f"/api/v1/events/{event_id}", headers=olga.bearer).json()
            audit = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"]
        assert (200, 1) == (first.status_code, first.json()["resolved"])
        assert (409, "not_dead") == (again.status_code, again.json()["error"])
        assert ("resolved", "sandbox test event", "olga") == (
            shown["state"], shown["resolved_reason"], shown["resolved_by"],
        )  # fmt: skip
        assert ("resolve", "olga", "sandbox test event", 1) == (
            audit[1]["action"], audit[1]["actor"], audit[1]["reason"], audit[1]["resolved"],
        )  # fmt: skip
        assert (0, 1) == (audit[0]["resolved"], audit[0]["skipped"]), "the refusal is audited"

    def test_resolve_needs_a_reason_and_a_known_event(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """A blank or missing reason is 400 (nothing audited); an unknown id is 404."""
        with client(service) as http:
            before = len(http.get("/api/v1/audit", headers=olga.bearer).json()["entries"])
            blank = http.post(
                "/api/v1/events/msg_x/resolve", headers=olga.bearer, json={"reason": "  "}
            )
            missing = http.post("/api/v1/events/msg_x/resolve", headers=olga.bearer, json={})
            unknown = http.post(
                "/api/v1/events/msg_none/resolve", headers=olga.bearer, json={"reason": "gone"}
            )
            after = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"]
        assert (400, 400, 404) == (blank.status_code, missing.status_code, unknown.status_code)
        assert "invalid_parameter" == blank.json()["error"]
        assert {"error": "unknown_event"} == unknown.json()
        assert before + 1 == len(after), "only the unknown id's resolve was audited"


class TestReading:
    def test_events_page_through_with_a_cursor(self, service: ServiceThread, olga: Person) -> None:
        """Five events of one record come back two at a time, newest first, each once, and
        the last page has no cursor; a cursor this receiver did not make is 400."""
        task = "task_paged"
        sent = [_deliver(service, event_body(task_id=task, updated_at=f"2026-05-10T00:0{n}:00Z"))
                for n in range(5)]  # fmt: skip
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        with client(service) as http:
            while True:
                params = {"record": task, "limit": "2", **({"cursor": cursor} if cursor else {})}
                page = http.get("/api/v1/events", params=params, headers=olga.bearer).json()
                seen += [event["event_id"] for event in page["events"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            bad = http.get("/api/v1/events", params={"cursor": "nope"}, headers=olga.bearer)
        assert (list(reversed(sent)), 3) == (seen, pages)
        assert (400, "invalid_parameter") == (bad.status_code, bad.json()["error"])

    def test_events_filter_by_reason_code(self, service: ServiceThread, olga: Person) -> None:
        """``reason=unmappable`` lists dead (unmappable) events only; an unknown code is 400."""
        event_id = _deliver(service, UNMAPPABLE)
        eventually(lambda: _state(service, olga, event_id) == "dead", what="dead on arrival")
        with client(service) as http:
            found = http.get(
                "/api/v1/events", params={"reason": "unmappable"}, headers=olga.bearer
            ).json()["events"]
            wrong = http.get("/api/v1/events", params={"reason": "nope"}, headers=olga.bearer)
        assert event_id in {event["event_id"] for event in found}
        assert {("dead", "unmappable")} == {(e["state"], e["reason_code"]) for e in found}
        assert 400 == wrong.status_code

    def test_status_has_the_queue_workers_traffic_and_sink_health(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """GET /status answers status's fields, deliveries per minute and the sink's health
        as the live workers report it."""
        _deliver(service, event_body())
        with client(service) as http:

            def worker_seen() -> bool:
                data = http.get("/api/v1/status", headers=olga.bearer).json()
                return bool(data["live_workers"])

            eventually(worker_seen, what="the worker's heartbeat")
            data = http.get("/api/v1/status", headers=olga.bearer).json()
        assert {"queue", "dead_by_reason", "signing_keys", "workers", "rejected_last_hour"} <= set(
            data
        )
        assert ["closed"] == [w["sink_circuit"] for w in data["workers"] if w["live"]], data
        assert "good" == data["sink"]["health"]
        minutes = data["deliveries_per_minute"]
        assert 10 == len(minutes)
        assert sum(minute["accepted"] for minute in minutes) >= 1

    def test_rejected_deliveries_keep_header_names_only(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """A bad signature is listed with its code, skew and header names; no header value
        (the signature, a bearer token) is in the answer."""
        body = event_body()
        headers = signed_headers(body, timestamp=int(time.time()) - 30)
        headers["webhook-signature"] = "v1," + "A" * 43 + "="
        headers["authorization"] = "Bearer rvya_sk_LEAKYTOKEN123"
        with httpx.Client(base_url=service.url, timeout=10) as public:
            assert public.post("/webhooks/rivya", content=body, headers=headers).status_code == 401
        with client(service) as http:

            def recorded() -> list[dict[str, object]]:
                answer = http.get(
                    "/api/v1/deliveries/rejected", params={"code": "401"}, headers=olga.bearer
                ).json()
                return [d for d in answer["deliveries"] if d["event_id"] == headers["webhook-id"]]

            eventually(lambda: bool(recorded()), what="the rejection recorded")
            [delivery] = recorded()
            raw = http.get("/api/v1/deliveries/rejected", headers=olga.bearer).text
        assert ("invalid_signature", 401) == (delivery["code"], delivery["status"])
        assert 30 <= int(str(delivery["skew_seconds"])) <= 60
        assert {"authorization", "webhook-signature"} <= set(delivery["headers"])  # type: ignore[arg-type]
        assert "LEAKYTOKEN" not in raw
        assert "A" * 43 not in raw

    def test_records_of_a_sink_that_cannot_read_are_409(
        self, service: ServiceThread, olga: Person
    ) -> None:
        """The log sink cannot read records back: 409 record_not_readable, said plainly."""
        with client(service) as http:
            answer = http.get("/api/v1/records/task_x", headers=olga.bearer)
        assert (409, "record_not_readable") == (answer.status_code, answer.json()["error"])
        assert "nothing to read" in answer.json()["detail"]


def test_bulk_replay_waits_for_the_outcomes(service: ServiceThread, olga: Person) -> None:
    """POST /replays with ``wait`` follows the events: an unmappable one is dead again,
    an applied one applied again, and the audit entry carries those outcomes."""
    dead_id = _deliver(service, UNMAPPABLE)
    good_id = _deliver(service, event_body())
    eventually(lambda: _state(service, olga, good_id) == "applied", what="applied")
    with client(service) as http:
        answer = http.post(
            "/api/v1/replays",
            headers=olga.bearer,
            json={"event_ids": [dead_id, good_id, "msg_none"], "wait": 20},
        )
        audit = http.get("/api/v1/audit", headers=olga.bearer).json()["entries"][0]
    outcomes = answer.json()["outcomes"]
    assert (202, 2, 1) == (answer.status_code, answer.json()["queued"], answer.json()["missing"])
    assert (1, 1, 0, False) == (
        outcomes["applied"], outcomes["dead"], outcomes["pending"], outcomes["timed_out"],
    )  # fmt: skip
    assert {"applied": 1, "dead": 1} == {k: v for k, v in audit["outcomes"].items() if v}


def test_a_polled_event_is_shown_as_such(
    service: ServiceThread, olga: Person, redis_url: str
) -> None:
    """An event of source rivya-poll (reconciliation, issue 16) says on its page that it
    was polled from Rivya's API, not delivered by a webhook."""
    import asyncio

    import redis.asyncio as aioredis

    from receiver.models import EventState
    from receiver.store import EventStore, IncomingEvent, now_ms

    body = event_body(task_id="task_polled")

    async def store_polled() -> None:
        redis_client = aioredis.Redis.from_url(redis_url)
        store = EventStore(redis_client, retention_seconds=3600)
        await store.prepare()
        await store.accept(
            IncomingEvent(
                source="rivya-poll", event_id="poll_task_polled_1", body=body,
                body_sha256="x" * 64, encrypted=False, received_ms=now_ms(), signed_ts=0,
                event_type="generation.succeeded", record_key="task_polled",
                state=EventState.DEAD, last_error="x", reason_code="unexpected",
                by="reconcile",
            )
        )  # fmt: skip
        await store.aclose()
        await redis_client.aclose()

    asyncio.run(store_polled())
    with client(service) as http:
        sign_in(http, olga)
        page = http.get("/events/poll_task_polled_1", params={"source": "rivya-poll"})
        listed = http.get("/events", params={"source": "rivya-poll"})
    assert 200 == page.status_code
    assert "Polled from Rivya's API by reconciliation" in page.text
    assert "polled from Rivya's API</span>" in page.text, "its timeline starts with the poll"
    assert "polled</span>" in listed.text


def test_a_page_view_examines_a_bounded_number_of_events(
    service: ServiceThread, olga: Person, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter that matches nothing does not walk the whole store: each call examines at
    most the console's scan budget (here lowered to 10), says it stopped early, and its
    cursor continues the walk where it stopped."""
    import receiver.ops

    for _ in range(25):
        _deliver(service, event_body())
    monkeypatch.setattr(receiver.ops, "CONSOLE_SCAN_BUDGET", 10)
    with client(service) as http:
        params = {"type": "generation.nothing"}
        first = http.get("/api/v1/events", params=params, headers=olga.bearer).json()
        params["cursor"] = first["next_cursor"]
        second = http.get("/api/v1/events", params=params, headers=olga.bearer).json()
        page = http.get("/events", params={"type": "generation.nothing"}, headers=olga.bearer)
    assert ([], True, [], True) == (
        first["events"], first["scanned_out"], second["events"], second["scanned_out"],
    )  # fmt: skip
    assert first["next_cursor"] != second["next_cursor"]
    assert "stored events this page looked at" in page.text

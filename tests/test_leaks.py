"""Nothing secret reaches any output: a real service, real requests, a forced internal error."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
from cryptography.fernet import Fernet

from receiver.signing import sign_standard
from tests.conftest import TEST_SECRET, free_port, wait_for_port
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
from tests.raw_http import exchange, request_bytes
from tests.redis_proc import RedisProcess
from tests.servers import ServiceProcess

REDIS_PASSWORD = "redis-pw-LEAK-7f3a"
API_KEY = "rvya_sk_test_LEAKKEY0123456789"
URL_SIGNATURE = "LEAKSIG9f8e7d6c5b4a"
FORWARD_SECRET = "whsec_" + base64.b64encode(b"forward-secret-LEAK-0123456789ab").decode()

# A third-party sink that fails with a message full of secrets, as a buggy plugin might.
LEAKY_SINK = f"""
class LeakySink:
    def __init__(self, url, settings):
        self.url = url
    async def apply(self, record):
        raise RuntimeError("boom at https://cdn.example/f.png?X-Amz-Signature={URL_SIGNATURE} "
                           "with {API_KEY} and Bearer {API_KEY}")
    async def ping(self):
        raise RuntimeError("ping failed for https://sink.example/?token={URL_SIGNATURE} {API_KEY}")
    async def setup(self):
        return None
    async def aclose(self):
        return None
"""


def install_leaky_sink(directory: Path) -> Path:
    """A module plus a dist-info folder: importlib.metadata finds the entry point on sys.path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "leaky_sink.py").write_text(LEAKY_SINK)
    info = directory / "leaky_sink-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: leaky-sink\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[receiver.sinks]\nleaky = leaky_sink:LeakySink\n")
    return directory


def test_no_secret_in_any_output(tmp_path: Path) -> None:
    """Secrets in config, bodies, headers, URLs and exceptions never appear in stdout/stderr."""
    plugin_dir = install_leaky_sink(tmp_path / "plugin")
    with RedisProcess(tmp_path / "redis") as server:
        server_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
        import redis

        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        env = base_env(
            tmp_path,
            server_url,
            RECEIVER_SINK=f"leaky://user:{REDIS_PASSWORD}@sink.example/x?token={URL_SIGNATURE}",
            RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
            RECEIVER_RETRY_BASE="50ms",
            RECEIVER_MAX_ATTEMPTS="2",
            RECEIVER_LOG_LEVEL="debug",
            RECEIVER_READ_TIMEOUT="500ms",
            PYTHONPATH=str(plugin_dir),
        )
        service = ServiceProcess(env, tmp_path / "serve.log")
        with service, httpx.Client(base_url=service.url, timeout=10) as client:
            gen = generation(
                result={
                    "primary_url": f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}",
                    "urls": [],
                },
                client_request_id=API_KEY,
            )
            body = orjson.dumps(envelope(gen))
            good = signed_headers(body)
            assert client.post("/webhooks/rivya", content=body, headers=good).status_code == 202
            bad = {**good, "webhook-id": "msg_bad", "authorization": f"Bearer {API_KEY}"}
            assert client.post("/webhooks/rivya", content=body, headers=bad).status_code == 401
            stale = signed_headers(body, timestamp=int(time.time()) - 10_000)
            assert client.post("/webhooks/rivya", content=body, headers=stale).status_code == 401
            wrong_key = sign_standard(FORWARD_SECRET, "msg_x", int(time.time()), body)
            assert (
                client.post(
                    "/webhooks/rivya",
                    content=body,
                    headers={**good, "webhook-id": "msg_x", "webhook-signature": wrong_key},
                ).status_code
                == 401
            )
            # Requests the HTTP protocol layer refuses log their reason: never their bytes.
            signed_query = f"/webhooks/riv\xe9ya?X-Amz-Signature={URL_SIGNATURE}"
            refused = [
                request_bytes(headers=[("x-key", f"{API_KEY}\x00")], body=b"{}"),
                request_bytes(headers=[("authorization", f"Bearer {API_KEY}" * 2000)]),
                f"GET {signed_query} HTTP/1.1\r\nx-key: {API_KEY}\r\n\r\n".encode("latin-1"),
                request_bytes(headers={"x-key": API_KEY, "content-length": "5"}, body=b"{"),
            ]
            assert [400, 431, 400, 408] == [exchange(service.port, raw).status for raw in refused]
            # Readiness probes Redis on a connection of its own, with the same password.
            assert client.get("/readyz").status_code == 200
            deadline = time.monotonic() + 15
            while "gave up" not in service.output() and time.monotonic() < deadline:
                time.sleep(0.1)
    output = service.output()
    assert "sink_failed" in output, "the forced error must be logged"
    assert "Traceback" in output, "with its traceback"
    assert "gave up after 2 attempts" in output
    secrets = [
        TEST_SECRET,
        TEST_SECRET.removeprefix("whsec_"),
        FORWARD_SECRET,
        REDIS_PASSWORD,
        API_KEY,
        URL_SIGNATURE,
        good["webhook-signature"].removeprefix("v1,"),
        wrong_key.removeprefix("v1,"),
    ]
    leaked = [secret for secret in secrets if secret in output]
    assert leaked == []
    for line in output.splitlines():
        parsed = orjson.loads(line)  # every line of stdout is JSON
        assert {"event", "level", "timestamp"} <= set(parsed)


def test_log_sink_prints_no_secret(tmp_path: Path, redis_url: str, clean_redis: object) -> None:
    """With RECEIVER_SINK=log:, the record lines on stdout are redacted like every log line:
    an API key, a bearer token and a signed URL query from a signed event never appear."""
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:")
    gen = generation(
        status="failed",
        client_request_id=API_KEY,
        error={"code": "upstream", "message": f"Authorization: Bearer {API_KEY}"},
    )
    gen["result"] = {
        "primary_url": f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}",
        "urls": [f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}"],
    }
    body = orjson.dumps(envelope(gen))
    service = ServiceProcess(env, tmp_path / "serve.log")
    with service, httpx.Client(base_url=service.url, timeout=10) as client:
        headers = signed_headers(body)
        assert client.post("/webhooks/rivya", content=body, headers=headers).status_code == 202
        eventually(lambda: "record_applied" in service.output(), what="the record line")
    output = service.output()
    lines = [orjson.loads(line) for line in output.splitlines()]  # every line is JSON
    (record_line,) = [line for line in lines if line["event"] == "record_applied"]
    assert gen["id"] == record_line["record_key"]
    leaked = [secret for secret in (API_KEY, URL_SIGNATURE, TEST_SECRET) if secret in output]
    assert leaked == []


def test_no_secret_in_any_console_page_or_api_answer(tmp_path: Path, redis_url: str) -> None:
    """Every console page and API answer, for both roles, and the service log hold no secret:
    not the signing or forward secret, an API key, a signed URL's query, a signature, nor
    the console tokens themselves; the pages added with the ops layer (rejected deliveries
    and their explanation, records, resolve, replay progress) included."""
    import redis

    from receiver.console.api import API
    from receiver.console.users import Role
    from tests.console_helpers import sign_in, write_users

    redis.Redis.from_url(redis_url).flushdb()
    people = write_users(tmp_path / "users", ("olga", Role.OPERATOR), ("vic", Role.VIEWER))
    env = base_env(
        tmp_path,
        redis_url,
        RECEIVER_SINK=f"http://127.0.0.1:9/x?token={URL_SIGNATURE}",
        RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
        RECEIVER_ADMIN_USERS_FILE=str(tmp_path / "users"),
        RECEIVER_MAX_ATTEMPTS="1",
    )
    gen = generation(
        result={
            "primary_url": f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}",
            "urls": [f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}"],
        },
        client_request_id=API_KEY,
        error={"code": "x", "message": f"key {FORWARD_SECRET} and Bearer {API_KEY}"},
    )
    body = orjson.dumps(envelope(gen))
    headers = signed_headers(body)
    service = ServiceProcess(env, tmp_path / "serve.log", admin=True)
    answers: list[str] = []
    with service:
        with httpx.Client(base_url=service.url, timeout=10) as public:
            assert public.post("/webhooks/rivya", content=body, headers=headers).status_code == 202
        event_id = headers["webhook-id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = httpx.get(
                f"{service.admin_url}/api/v1/events/{event_id}", headers=people["olga"].bearer
            ).json()
            if state.get("state") == "dead":
                break
            time.sleep(0.1)
        # A rejected delivery carrying a real signature and a bearer token in its headers.
        forged = dict(headers, **{"webhook-id": "msg_leak_forged"})
        forged["authorization"] = f"Bearer {API_KEY}"
        with httpx.Client(base_url=service.url, timeout=10) as public:
            assert public.post("/webhooks/rivya", content=body, headers=forged).status_code == 401
        olga = people["olga"].bearer

        def rejection_id() -> str:
            found = httpx.get(
                f"{service.admin_url}/api/v1/deliveries/rejected", headers=olga, timeout=10
            ).json()["deliveries"]
            return str(found[0]["id"]) if found else ""

        eventually(lambda: bool(rejection_id()), what="the rejection recorded")
        rejected_id = rejection_id()
        pages = (
            "/", "/events", f"/events/{event_id}", "/failed", "/audit", "/credits",
            "/deliveries", f"/deliveries/rejected/{rejected_id}", f"/records?key={gen['id']}",
            "/records", "/replays/1-0",
        )  # fmt: skip
        for person in people.values():
            with httpx.Client(base_url=service.admin_url, timeout=10) as admin:
                answers.append(admin.get("/sign-in").text)
                csrf = sign_in(admin, person)
                for path in pages:
                    answers.append(admin.get(path).text)
                for action in ("bulk-replay", "bulk-resolve"):
                    preview = admin.post(
                        f"/actions/{action}",
                        data={"csrf": csrf, "state": "dead", "step": "preview", "why": API_KEY},
                    )
                    answers.append(preview.text)
                for route in API:
                    path = "/api/v1" + route.path.replace("{event_id:path}", event_id).replace(
                        "{record_key:path}", gen["id"]
                    )
                    if route.method == "GET":
                        answers.append(admin.get(path, headers=person.bearer).text)
                answers.append(
                    admin.post(
                        "/api/v1/replays",
                        json={"filter": {"state": "dead"}, "dry_run": True},
                        headers=person.bearer,
                    ).text
                )
                answers.append(
                    admin.post(
                        f"/api/v1/events/{event_id}/resolve",
                        json={"reason": "   "},
                        headers=person.bearer,
                    ).text
                )
                answers.append(admin.get("/metrics").text)
                answers.append(admin.get("/readyz").text)
        with httpx.Client(base_url=service.admin_url, timeout=10) as admin:
            csrf = sign_in(admin, people["olga"])
            resolved = admin.post(
                "/actions/bulk-resolve",
                data={"csrf": csrf, "state": "dead", "step": "run", "expected": "1",
                      "why": "leak test"},
            )  # fmt: skip
            answers += [resolved.text, admin.get(f"/events/{event_id}").text]
            answers.append(admin.get("/audit").text)
    output = service.output()
    secrets = [
        TEST_SECRET,
        TEST_SECRET.removeprefix("whsec_"),
        FORWARD_SECRET,
        API_KEY,
        URL_SIGNATURE,
        headers["webhook-signature"].removeprefix("v1,"),
        *(person.token for person in people.values()),
    ]
    leaked = [(s, a[:200]) for s in secrets for a in answers if s in a]
    assert [] == leaked
    assert [s for s in secrets if s in output] == []
    assert any("[REDACTED]" in answer for answer in answers), "the body was shown, redacted"


# A downstream that refuses records with an error page echoing secrets, as a careless
# product endpoint might: the console shows the start of that answer in each attempt.
SINK_ECHOED_SIGNATURE = base64.b64encode(b"downstream-echoes-a-signature-LEAK").decode()
SINK_ANSWER_400 = orjson.dumps(
    {
        "error": "record refused by downstream",
        "debug": f"Authorization: Bearer {API_KEY}; forward key {FORWARD_SECRET}; "
        f"file https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}; "
        f"webhook-signature: v1,{SINK_ECHOED_SIGNATURE}",
    }
)


def test_no_secret_in_any_console_action_against_a_sink_answering_400(
    tmp_path: Path, redis_url: str, clean_redis: object
) -> None:
    """Every console action (replay, resolve, bulk replay, bulk resolve, by form and by API)
    answers its status while the HTTP sink refuses each record with a 400 whose body echoes
    secrets; no page, API answer or log line then holds a secret, a signature or a key."""
    from receiver.console.users import Role
    from tests.console_helpers import sign_in, write_users
    from tests.servers import Downstream

    people = write_users(tmp_path / "users", ("olga", Role.OPERATOR))
    olga = people["olga"].bearer
    bodies = {
        name: orjson.dumps(envelope(generation(
            task_id=f"task_leak_{name}",
            result={"primary_url": f"https://cdn.example/{name}.png?X-Amz-Signature={URL_SIGNATURE}",
                    "urls": [f"https://cdn.example/{name}.png?X-Amz-Signature={URL_SIGNATURE}"]},
            client_request_id=API_KEY,
        )))
        for name in ("one", "two", "three")
    }  # fmt: skip
    signed = {name: signed_headers(body) for name, body in bodies.items()}
    ids = {name: headers["webhook-id"] for name, headers in signed.items()}
    statuses: dict[str, int] = {}
    answers: list[str] = []
    with Downstream(400, body=SINK_ANSWER_400) as downstream:
        env = base_env(
            tmp_path,
            redis_url,
            RECEIVER_SINK=downstream.url,
            RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
            RECEIVER_ADMIN_USERS_FILE=str(tmp_path / "users"),
        )
        service = ServiceProcess(env, tmp_path / "serve.log", admin=True)
        with service, httpx.Client(base_url=service.admin_url, timeout=30) as admin:

            def state(event_id: str) -> str:
                answer = admin.get(f"/api/v1/events/{event_id}", headers=olga)
                return str(answer.json().get("state"))

            def settled(forwarded: int, expected: str = "dead") -> None:
                """Wait until the sink got ``forwarded`` records and every event is in state
                ``expected`` (or already resolved)."""

                def done() -> bool:
                    return len(downstream.requests) >= forwarded and all(
                        state(event_id) in (expected, "resolved") for event_id in ids.values()
                    )

                eventually(done, what=f"{forwarded} records forwarded, events {expected}")

            with httpx.Client(base_url=service.url, timeout=10) as public:
                for name, body in bodies.items():
                    answer = public.post("/webhooks/rivya", content=body, headers=signed[name])
                    statuses[f"deliver {name}"] = answer.status_code
            settled(3)
            csrf = sign_in(admin, people["olga"])

            def form(action: str, **fields: str) -> httpx.Response:
                answer = admin.post(f"/actions/{action}", data={"csrf": csrf, **fields})
                statuses[f"form {action} {fields.get('step', '')}".strip()] = answer.status_code
                answers.append(answer.text)
                return answer

            def api(path: str, document: dict[str, object]) -> httpx.Response:
                answer = admin.post(f"/api/v1{path}", json=document, headers=olga)
                key = f"api {path.replace(ids['one'], 'ONE').replace(ids['two'], 'TWO')}"
                statuses[f"{key} {'dry' if document.get('dry_run') else ''}".strip()] = (
                    answer.status_code
                )
                answers.append(answer.text)
                return answer

            form("replay", event_id=ids["one"])
            settled(4)
            api(f"/events/{ids['two']}/replay", {})
            settled(5)
            form("bulk-replay", state="dead", step="preview")
            started = form("bulk-replay", state="dead", step="run", expected="3")
            replay_page = started.headers.get("location", "/replays/none")
            settled(8)
            waited = api("/replays", {"filter": {"state": "dead"}, "wait": 20}).json()
            api("/replays", {"filter": {"state": "dead"}, "dry_run": True})
            form("resolve", event_id=ids["one"], reason=f"sink refuses it, see {API_KEY}")
            api(f"/events/{ids['two']}/resolve", {"reason": "sink refuses it"})
            form("bulk-resolve", state="dead", step="preview", why="sink refuses it")
            form("bulk-resolve", state="dead", step="run", expected="1", why="sink refuses it")
            settled(11, "resolved")
            event_page = admin.get(f"/events/{ids['one']}").text  # four refused attempts
            answers.append(event_page)
            pages = [replay_page, "/", "/events", "/failed", "/audit", "/deliveries",
                     *(f"/events/{event_id}" for event_id in ids.values())]  # fmt: skip
            answers += [admin.get(path).text for path in pages]
            reads = ["/events", "/audit", "/status", *(f"/events/{i}" for i in ids.values())]
            answers += [admin.get(f"/api/v1{path}", headers=olga).text for path in reads]
            answers.append(admin.get("/metrics").text)
        forwarded = [headers["webhook-signature"] for headers, _ in downstream.requests]
    assert {
        "deliver one": 202, "deliver two": 202, "deliver three": 202,
        "form replay": 303, "api /events/TWO/replay": 202,
        "form bulk-replay preview": 200, "form bulk-replay run": 303,
        "api /replays": 202, "api /replays dry": 200,
        "form resolve": 303, "api /events/TWO/resolve": 200,
        "form bulk-resolve preview": 200, "form bulk-resolve run": 200,
    } == statuses  # fmt: skip
    assert 11 == len(forwarded), "every replay reached the sink"
    assert (3, 3) == (waited["queued"], waited["outcomes"]["dead"]), "refused again, and said so"
    assert "record refused by downstream" in event_page, "the sink's answer is shown"
    assert "[REDACTED]" in event_page
    secrets = [
        TEST_SECRET, TEST_SECRET.removeprefix("whsec_"),
        FORWARD_SECRET, FORWARD_SECRET.removeprefix("whsec_"),
        API_KEY, URL_SIGNATURE, SINK_ECHOED_SIGNATURE,
        *(headers["webhook-signature"].removeprefix("v1,") for headers in signed.values()),
        *(signature.removeprefix("v1,") for signature in forwarded),
        *(person.token for person in people.values()),
    ]  # fmt: skip
    leaked = [(s, a[:200]) for s in secrets for a in answers if s in a]
    assert [] == leaked
    assert [s for s in secrets if s in service.output()] == []


def test_no_secret_in_worker_outputs(tmp_path: Path) -> None:
    """A worker whose sink fails with secret-laden errors opens its circuit and probes it:
    neither its log nor its listener's answers (/metrics, /readyz, /healthz) leak a secret."""
    plugin_dir = install_leaky_sink(tmp_path / "plugin")
    with RedisProcess(tmp_path / "redis") as server:
        import redis

        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        env = base_env(
            tmp_path,
            f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0",
            RECEIVER_SINK=f"leaky://user:{REDIS_PASSWORD}@sink.example/x?token={URL_SIGNATURE}",
            RECEIVER_RETRY_BASE="50ms",
            RECEIVER_RETRY_MAX="200ms",
            RECEIVER_CIRCUIT_FAILURES="1",
            RECEIVER_LOG_LEVEL="debug",
            PYTHONPATH=str(plugin_dir),
        )
        gen = generation(client_request_id=API_KEY)
        body = orjson.dumps(envelope(gen))
        with ServiceProcess(env, tmp_path / "serve.log", "serve", "--no-worker") as ingest:
            answer = httpx.post(
                f"{ingest.url}/webhooks/rivya", content=body, headers=signed_headers(body)
            )
            assert 202 == answer.status_code
        port = free_port()
        worker = ServiceProcess(
            env, tmp_path / "worker.log", "worker", "--metrics-port", str(port)
        ).start(wait=False)
        try:
            wait_for_port(port, 30)
            eventually(
                lambda: (
                    '"probe":"apply"' in worker.output()
                    and "sink_circuit_opened" in worker.output()
                ),
                what="the circuit to open and probe",
            )
            answers = "".join(
                httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).text
                for path in ("/metrics", "/readyz", "/healthz")
            )
        finally:
            worker.stop()
    output = worker.output()
    assert '"failed":["sink"]' in answers
    secrets = [REDIS_PASSWORD, API_KEY, URL_SIGNATURE, TEST_SECRET.removeprefix("whsec_")]
    assert [] == [secret for secret in secrets if secret in output + answers]
    for line in output.splitlines():
        assert {"event", "level", "timestamp"} <= set(orjson.loads(line))


def test_no_secret_in_the_ops_outputs(tmp_path: Path) -> None:
    """Rejected deliveries, status, timelines with a sink's answer, records, resolve, replay
    --wait and the audit never print a secret, a signature or a signed URL's query."""
    import subprocess
    import sys

    import redis

    from tests.helpers import eventually
    from tests.servers import Downstream

    echoed = (
        f'{{"error":"bad record","auth":"Bearer {API_KEY}",'
        f'"file":"https://cdn.example/a.png?X-Amz-Signature={URL_SIGNATURE}"}}'
    ).encode()
    with (
        RedisProcess(tmp_path / "redis") as server,
        Downstream(400, body=echoed) as downstream,
    ):
        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        env = base_env(
            tmp_path,
            f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0",
            RECEIVER_SINK=downstream.url,
            RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
            RECEIVER_ACTOR="leak-tester",
        )
        outputs: list[str] = []

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            result = subprocess.run(
                [sys.executable, "-m", "receiver", *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            outputs.extend([result.stdout, result.stderr])
            return result

        service = ServiceProcess(env, tmp_path / "serve.log")
        with service, httpx.Client(base_url=service.url, timeout=10) as client:
            gen = generation(
                result={
                    "primary_url": f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}",
                    "urls": [],
                },
                client_request_id=API_KEY,
            )
            body = orjson.dumps(envelope(gen))
            good = signed_headers(body)
            assert client.post("/webhooks/rivya", content=body, headers=good).status_code == 202
            wrong = signed_headers(body, "msg_wrong", secret=FORWARD_SECRET)
            for headers in (
                {**wrong, "authorization": f"Bearer {API_KEY}", "x-api-key": API_KEY},
                signed_headers(body, timestamp=int(time.time()) - 10_000),
                {
                    "content-type": "application/json",
                    "webhook-signature": good["webhook-signature"],
                },
            ):
                assert client.post(
                    "/webhooks/rivya", content=body, headers=headers
                ).status_code in (
                    400,
                    401,
                )
            event_id = good["webhook-id"]

            def dead() -> bool:
                return '"state": "dead"' in cli("events", "show", event_id, "--json").stdout

            eventually(dead, 30, "the event to be dead on the 400")

            def logged() -> bool:
                return (
                    len(orjson.loads(cli("deliveries", "list", "--rejected", "--json").stdout)) == 3
                )

            eventually(logged, 30, "three rejected deliveries")
            for args in (
                ("deliveries", "list", "--rejected"),
                ("status", "--json"),
                ("status",),
                ("events", "show", event_id),
                ("events", "list", "--json"),
                ("records", "show", gen["id"], "--json"),
                ("replay", event_id, "--wait", "--wait-timeout", "5", "--json"),
                ("events", "resolve", event_id, "--reason", "leak test", "--json"),
                ("events", "audit", "--json"),
            ):
                cli(*args)
    output = "\n".join([*outputs, service.output()])
    assert "answer" in output, "the sink's (redacted) answer is shown"
    assert "fp_" in output, "keys appear by fingerprint"
    secrets = [
        TEST_SECRET,
        TEST_SECRET.removeprefix("whsec_"),
        FORWARD_SECRET,
        FORWARD_SECRET.removeprefix("whsec_"),
        REDIS_PASSWORD,
        API_KEY,
        URL_SIGNATURE,
        good["webhook-signature"].removeprefix("v1,"),
        wrong["webhook-signature"].removeprefix("v1,"),
    ]
    assert [secret for secret in secrets if secret in output] == []


def test_no_secret_when_serve_warns_about_or_refuses_redis(tmp_path: Path) -> None:
    """The start-up durability lines (appendfsync everysec) and the refusal of an evicting
    Redis name the setting, never the Redis URL or its password."""
    import redis

    with RedisProcess(tmp_path / "redis", appendonly=True) as server:
        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        admin = redis.Redis(port=server.port, password=REDIS_PASSWORD)
        env = base_env(tmp_path, f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0")
        with ServiceProcess(env, tmp_path / "warned.log") as warned:
            # The port is bound before start-up ends: wait for the line, not just the port.
            eventually(lambda: '"redis_durability"' in warned.output(), what="the warning")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        refused = ServiceProcess(env, tmp_path / "refused.log").start(wait=False)
        code = refused.wait(60)
        admin.close()
    outputs = [warned.output(), refused.output()]
    assert '"redis_durability"' in outputs[0]
    assert (1, True) == (code, "RECEIVER_ALLOW_EVICTING_REDIS" in outputs[1])
    assert [] == [output for output in outputs if REDIS_PASSWORD in output]


def test_no_api_key_in_reconciliation_output(
    tmp_path: Path, redis_url: str, clean_redis: object
) -> None:
    """Issue 16: the Rivya API key never shows in serve's log (polls, failures, a refused
    key), the CLI (track, events list/show, config check), or /metrics, even when Rivya's
    answers echo it back."""
    from tests.fake_rivya import FakeRivya, Reply
    from tests.reconcilers import cli

    echo = {"detail": f"you sent Bearer {API_KEY}", "key": API_KEY}
    with FakeRivya() as fake:
        succeeded = generation("task_leak_ok", "succeeded", client_request_id=API_KEY)
        fake.script("task_leak_ok", Reply.of(succeeded))
        fake.script("task_leak_5xx", Reply(500, echo), Reply.of(generation("task_leak_5xx")))
        env = base_env(
            tmp_path,
            redis_url,
            RECEIVER_RIVYA_API_KEY=API_KEY,
            RECEIVER_RIVYA_API_URL=fake.url,
            RECEIVER_RECONCILE_AFTER="200ms",
            RECEIVER_RECONCILE_RATE="50/s",
            RECEIVER_LOG_LEVEL="debug",
        )
        service = ServiceProcess(env, tmp_path / "serve.log", admin=True)
        outputs: list[str] = []
        with service:
            for args in (
                ("track", "task_leak_ok", "task_leak_5xx"),
                ("config", "check"),
            ):
                result = cli(env, *args)
                outputs += [result.stdout, result.stderr]
            deadline = time.monotonic() + 20
            while fake.count() < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            fake.override = Reply(401, echo)  # the key gets revoked
            result = cli(env, "track", "task_leak_refused")
            outputs += [result.stdout, result.stderr]
            while "reconcile_key_refused" not in service.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            listed = cli(env, "events", "list", "--source", "rivya-poll", "--json")
            outputs += [listed.stdout, listed.stderr]
            for event in orjson.loads(listed.stdout):
                for extra in ((), ("--json",)):
                    shown = cli(
                        env, "events", "show", event["event_id"], "--source", "rivya-poll", *extra
                    )
                    outputs += [shown.stdout, shown.stderr]
            outputs.append(httpx.get(f"{service.admin_url}/metrics", timeout=5).text)
    log = service.output()
    assert "reconcile_polled" in log, "polls were logged"
    assert "reconcile_poll_failed" in log, "the 500 was logged"
    assert "reconcile_key_refused" in log, "the refusal was logged"
    assert len(orjson.loads(listed.stdout)) >= 2, "polled events were listed and shown"
    assert [] == [text for text in [log, *outputs] if API_KEY in text]
    assert [] == [text for text in [log, *outputs] if API_KEY.removeprefix("rvya_sk_") in text]


SINK_PASSWORD = "pg-pw-LEAK-4c2e"


def ops_cli(env: dict[str, str], *args: str, **extra: str) -> str:
    """stdout and stderr of one ops command (its exit code is the feature tests' business)."""
    result = subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        env={**env, **extra}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout + result.stderr


def follow_briefly(env: dict[str, str]) -> str:
    """``events list --follow -o json`` for a moment, then Ctrl-C."""
    with subprocess.Popen(
        [sys.executable, "-m", "receiver", "events", "list", "--follow", "-o", "json"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    ) as process:  # fmt: skip
        time.sleep(2)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    return output


def verify_captures(
    env: dict[str, str], tmp_path: Path, body: bytes
) -> tuple[list[str], list[str]]:
    """``receiver verify`` (text and JSON) on a good, a skewed and a wrong-key capture:
    the outputs, and the captures' signatures (which must not be among them)."""
    captures = {
        "good": signed_headers(body),
        "skewed": signed_headers(body, timestamp=int(time.time()) - 1000),
        "wrong-key": signed_headers(body, secret=FORWARD_SECRET),
    }
    body_file = tmp_path / "captured-body.json"
    body_file.write_bytes(body)
    outputs = []
    for name, headers in captures.items():
        headers_file = tmp_path / f"captured-{name}.txt"
        headers_file.write_text("".join(f"{key}: {value}\n" for key, value in headers.items()))
        files = ("--headers", str(headers_file), "--body", str(body_file))
        outputs += [ops_cli(env, "verify", *files), ops_cli(env, "verify", *files, "--json")]
    signatures = [headers["webhook-signature"].removeprefix("v1,") for headers in captures.values()]
    return outputs, signatures


def test_no_secret_in_ops_command_outputs(tmp_path: Path, postgres_dsn: str) -> None:
    """Every ops command, in every output format, with secrets in the configuration and in
    stored bodies (and wrong values that name them), prints none of them."""
    parts = urlsplit(postgres_dsn)
    netloc = f"{parts.username}:{SINK_PASSWORD}@{parts.hostname}:{parts.port or 5432}"
    sink_url = urlunsplit(parts._replace(netloc=netloc))
    missing_db = urlunsplit(parts._replace(netloc=netloc, path="/receiver_leak_missing"))
    encryption_key = Fernet.generate_key().decode()
    with RedisProcess(tmp_path / "redis") as server:
        import redis

        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        env = base_env(
            tmp_path,
            f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0",
            RECEIVER_SINK=sink_url,
            RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
            RECEIVER_ENCRYPTION_KEYS=encryption_key,
            RECEIVER_LOG_LEVEL="debug",
        )
        with ServiceProcess(env, tmp_path / "serve.log") as service:
            gen = generation(
                result={
                    "primary_url": f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}",
                    "urls": [],
                },
                client_request_id=API_KEY,
                note=f"Bearer {API_KEY}",
            )
            body = orjson.dumps(envelope(gen))
            headers = signed_headers(body)
            url = f"{service.url}/webhooks/rivya"
            assert httpx.post(url, content=body, headers=headers, timeout=10).status_code == 202
            event_id = headers["webhook-id"]
            eventually(
                lambda: '"applied"' in ops_cli(env, "events", "show", event_id, "--json"),
                what="the event to be applied",
            )
            wrong = {
                **signed_headers(body, secret=FORWARD_SECRET),
                "authorization": f"Bearer {API_KEY}",
            }
            assert httpx.post(url, content=body, headers=wrong, timeout=10).status_code == 401
            eventually(
                lambda: (
                    ops_cli(env, "deliveries", "list", "--rejected", "-o", "name").strip() != ""
                ),
                what="the rejection to be recorded",
            )
            rejection_id = ops_cli(env, "deliveries", "list", "--rejected", "-o", "name").split()[0]
            listed = ops_cli(env, "events", "list")
            outputs = [
                listed,
                ops_cli(env, "deliveries", "list", "--rejected"),
                ops_cli(env, "deliveries", "list", "--rejected", "-o", "wide"),
                ops_cli(env, "verify", "--rejected", rejection_id),
                ops_cli(env, "status"),
                ops_cli(env, "records", "show", gen["id"]),
                ops_cli(env, "events", "list", COLUMNS="80"),
                ops_cli(env, "events", "list", "-o", "wide"),
                ops_cli(env, "events", "list", "-o", "json"),
                ops_cli(env, "events", "list", "-o", "name"),
                ops_cli(env, "events", "list", "--limit", "1"),
                ops_cli(env, "events", "show", event_id),
                ops_cli(env, "events", "show", event_id, "--json"),
                ops_cli(env, "events", "audit"),
                ops_cli(env, "replay", event_id, "--dry-run"),
                ops_cli(env, "config", "check"),
                ops_cli(env, "config", "check", "--json"),
                ops_cli(env, "config", "check", "--strict", "--json"),
                ops_cli(env, "sink", "init"),
                ops_cli(env, "sink", "init", RECEIVER_SINK=missing_db),
                ops_cli(env, "config", "check", RECEIVER_SINK=missing_db),
                # Wrong values that hold secrets, reported all at once.
                ops_cli(
                    env,
                    "config",
                    "check",
                    RECEIVER_SINK=f"admin:{SINK_PASSWORD}@db/records",
                    RECEIVER_FORWARD_SECRET=f"{FORWARD_SECRET} {TEST_SECRET}",
                    RECEIVER_ENCRYPTION_KEYS=f"{encryption_key} {API_KEY}",
                    RECEIVER_REDIS_URL=f"http://:{REDIS_PASSWORD}@cache:6379",
                ),
                follow_briefly(env),
            ]
            verified, signatures = verify_captures(env, tmp_path, body)
            outputs += verified
    secrets = [
        TEST_SECRET,
        TEST_SECRET.removeprefix("whsec_"),
        FORWARD_SECRET.removeprefix("whsec_"),
        REDIS_PASSWORD,
        SINK_PASSWORD,
        encryption_key,
        API_KEY,
        URL_SIGNATURE,
        headers["webhook-signature"].removeprefix("v1,"),
        wrong["webhook-signature"].removeprefix("v1,"),
        *signatures,
    ]
    leaked = {secret for output in outputs for secret in secrets if secret in output}
    assert set() == leaked
    assert event_id in listed  # the commands did print what they were asked for
    assert "webhook-signature" in outputs[2]  # the rejection's header names, not values


DEEP_LEVELS = 50


def nest(levels: int, inner: object) -> object:
    """``inner`` under ``levels`` levels that alternate between an object and a list, a
    secret-bearing string beside the next level at each one."""
    value = inner
    for level in range(levels):
        signed = f"https://cdn.example/{level}.png?X-Amz-Signature={URL_SIGNATURE}&token={API_KEY}"
        if level % 2:
            value = [f"key {API_KEY}", signed, value]
        else:
            value = {"note": f"Bearer {API_KEY}", "link": signed, "next": value}
    return value


def test_secrets_nested_deep_in_a_body_reach_no_log_line(
    tmp_path: Path, redis_url: str, clean_redis: object
) -> None:
    """A signed event whose body holds an ``rvya_sk_`` key and signed URLs (X-Amz-Signature,
    token=) 50 levels down through objects and lists, and in the record's own fields, and a
    signed body that nests the generation itself 50 levels deep (stored dead): serve with the
    ``log:`` sink at debug level prints the record line and the dead event, every line JSON,
    and neither the key nor any URL signature appears on its stdout."""
    env = base_env(tmp_path, redis_url, RECEIVER_SINK="log:", RECEIVER_LOG_LEVEL="debug")
    signed_url = f"https://cdn.example/r.png?X-Amz-Signature={URL_SIGNATURE}&token={API_KEY}"
    gen = generation(
        status="failed",
        client_request_id=f"order {API_KEY}",
        error={"code": "upstream", "message": f"fetch {signed_url} with Bearer {API_KEY}"},
        metadata=nest(DEEP_LEVELS, {"api_key": API_KEY, "urls": [signed_url]}),
    )
    gen["result"] = {"primary_url": signed_url, "urls": [signed_url]}
    mapped = {**envelope(gen), "extra": nest(DEEP_LEVELS, [signed_url, API_KEY])}
    unmappable = {"id": "evt_deep", "type": "generation.succeeded", "data": nest(DEEP_LEVELS, gen)}
    bodies = [orjson.dumps(mapped), orjson.dumps(unmappable)]
    ids = ["msg_deep_mapped", "msg_deep_unmappable"]
    service = ServiceProcess(env, tmp_path / "serve.log", "serve")
    with service, httpx.Client(base_url=service.url, timeout=10) as client:
        statuses = [
            client.post(
                "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
            ).status_code
            for body, event_id in zip(bodies, ids, strict=True)
        ]
        eventually(
            lambda: "record_applied" in service.output() and '"outcome":"dead"' in service.output(),
            what="the record line and the dead event",
        )
        time.sleep(0.5)  # lines the worker writes after those
        # The CLI walks this body for `events show` (50 levels: within the redaction's walk).
        shown = subprocess.run(
            [sys.executable, "-m", "receiver", "events", "show", ids[0], "--json"],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    output = service.output()
    lines = [orjson.loads(line) for line in output.splitlines()]  # every line is JSON
    [record_line] = [line for line in lines if line["event"] == "record_applied"]
    [dead_line] = [line for line in lines if line.get("outcome") == "dead"]
    assert [202, 202] == statuses
    assert (gen["id"], "failed") == (record_line["record_key"], record_line["status"])
    assert "cdn.example/r.png" in record_line["primary_url"]  # masked, not dropped
    assert (ids[1], "unmappable: no_generation_object") == (
        dead_line["event_id"],
        dead_line["reason"],
    )
    shown_body = orjson.loads(shown.stdout)["body"]
    assert isinstance(shown_body, dict), "the 50-level body is walked, not flattened to text"
    everything = output + shown.stdout + shown.stderr
    assert [] == [secret for secret in (API_KEY, URL_SIGNATURE) if secret in everything]
    assert API_KEY.removeprefix("rvya_sk_") not in everything

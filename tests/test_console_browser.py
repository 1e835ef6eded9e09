"""The console in a real browser (Debian's Chromium driven by Playwright) against a real
``receiver serve`` process, real Redis, and a real downstream HTTP server behind the HTTP
sink that answers 400 until it is fixed: what support and ops do on the pages (issue 15's
whole flow), and what they must never see.

One browser and one served process for the flow (CI time); the tests run in order and
share what the first ones sent. The Records page needs a sink that reads records back
(the HTTP sink cannot), so its test starts a second, SQLite-backed ``serve`` on a Redis of
its own. ``make screenshots`` runs this module with ``CONSOLE_SCREENSHOTS_DIR=docs/screenshots``
to refresh the README's pictures.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from receiver.console.users import Role
from tests.console_helpers import Person, write_users
from tests.factories import base_env, envelope, event_body, generation, signed_headers
from tests.helpers import eventually
from tests.redis_proc import RedisProcess
from tests.servers import Downstream, ServiceProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FORWARD_SECRET = "whsec_" + "Zm9yd2FyZC1zZWNyZXQtZm9yLWJyb3dzZXItdGVzdHM="
XSS_EVENT_ID = "msg_xss_<svg/onload=alert(3)>"
XSS_MODEL = "<script>alert('model')</script>"
XSS_CLIENT = '<img src=x onerror="alert(1)">'
# Control and bidi characters a signed body may carry: shown, never obeyed.
XSS_PROMPT = "gnp.\u202eexe\x1b[2J\x07"
SINK_ANSWER = b'{"error": "record refused: unknown field <b>model</b>"}'
WRONG_SECRET = "whsec_" + "d3Jvbmctc2VjcmV0LWZvci1icm93c2VyLXRlc3Rz"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; never a downloaded browser (``.ci/run`` installs it)."""
    assert Path(CHROMIUM).exists(), "install Debian's chromium (make test does)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def downstream() -> Iterator[Downstream]:
    """The product's HTTP endpoint behind the sink: it refuses records with 400 at first."""
    with Downstream(400, body=SINK_ANSWER) as server:
        yield server


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Person]]:
    path = tmp_path_factory.mktemp("users") / "users"
    return path, write_users(path, ("olga", Role.OPERATOR), ("vic", Role.VIEWER))


@pytest.fixture(scope="module")
def service(
    redis_url: str,
    downstream: Downstream,
    people: tuple[Path, dict[str, Person]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    redis.Redis.from_url(redis_url).flushdb()
    data = tmp_path_factory.mktemp("browser-data")
    env = base_env(
        data,
        redis_url,
        RECEIVER_SINK=downstream.url,
        RECEIVER_FORWARD_SECRET=FORWARD_SECRET,
        RECEIVER_ADMIN_USERS_FILE=str(people[0]),
    )
    with ServiceProcess(env, data / "serve.log", admin=True) as running:
        yield running


@pytest.fixture(scope="module")
def sent(service: ServiceProcess) -> dict[str, str]:
    """Four deliveries: one the sink will refuse, two unmappable, one full of markup and
    control characters; and one signed with a key the receiver does not have, 42 s ago."""
    bodies: dict[str, tuple[str, bytes]] = {
        "refused": ("msg_refused_1", orjson.dumps(envelope(generation(task_id="task_refused")))),
        "unmappable": (
            "msg_unmappable_1",
            orjson.dumps({"type": "generation.succeeded", "data": {"status": "succeeded"}}),
        ),
        "unmappable2": (
            "msg_unmappable_2",
            orjson.dumps({"type": "generation.failed", "data": {"status": "failed"}}),
        ),
        "xss": (
            XSS_EVENT_ID,
            orjson.dumps(
                envelope(
                    generation(
                        task_id="task_xss",
                        model=XSS_MODEL,
                        client_request_id=XSS_CLIENT,
                        prompt=XSS_PROMPT,
                    )
                )
            ),
        ),
    }
    with httpx.Client(base_url=service.url, timeout=10) as public:
        for event_id, body in bodies.values():
            answer = public.post(
                "/webhooks/rivya", content=body, headers=signed_headers(body, event_id=event_id)
            )
            assert answer.status_code == 202, answer.text
        forged = event_body(task_id="task_forged")
        headers = signed_headers(
            forged, event_id="msg_forged_1", timestamp=int(time.time()) - 42, secret=WRONG_SECRET
        )
        assert public.post("/webhooks/rivya", content=forged, headers=headers).status_code == 401
    ids = {name: event_id for name, (event_id, _) in bodies.items()}

    def all_dead() -> bool:
        answer = httpx.get(f"{service.admin_url}/readyz", timeout=5).json()
        return int(answer.get("queue", {}).get("dead", 0)) == 4

    eventually(all_dead, what="four dead letters")
    return ids


class Dialogs:
    """Every JavaScript dialog a page opened: an XSS payload that runs opens one."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def watch(self, page: Page) -> Page:
        page.on("dialog", lambda dialog: (self.seen.append(dialog.message), dialog.dismiss()))
        return page


@pytest.fixture(scope="module")
def dialogs() -> Dialogs:
    return Dialogs()


def signed_in(
    browser: Browser, service: ServiceProcess, person: Person, dialogs: Dialogs
) -> tuple[BrowserContext, Page]:
    context = browser.new_context(base_url=service.admin_url)
    page = dialogs.watch(context.new_page())
    page.goto("/")
    expect(page).to_have_url(f"{service.admin_url}/sign-in?next=%2F")
    page.fill("#token", person.token)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Overview")
    return context, page


@pytest.fixture(scope="module")
def olga_page(
    browser: Browser,
    service: ServiceProcess,
    people: tuple[Path, dict[str, Person]],
    dialogs: Dialogs,
    sent: dict[str, str],
) -> Iterator[Page]:
    context, page = signed_in(browser, service, people[1]["olga"], dialogs)
    yield page
    context.close()


def screenshot(page: Page, name: str) -> None:
    """Keep the README's pictures current when ``make screenshots`` asks for them."""
    target = os.environ.get("CONSOLE_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def event_path(event_id: str) -> str:
    return f"/events/{quote(event_id, safe='')}?source=rivya"


def test_overview_shows_traffic_dead_letters_and_health(olga_page: Page) -> None:
    """The overview counts the deliveries of the last minutes (accepted and rejected by
    code), the four dead letters by reason code, the live worker and the sink's health."""
    olga_page.goto("/")
    expect(olga_page.locator("#dead-count")).to_have_text("4")
    reasons = olga_page.locator("#dead-by-reason")
    expect(reasons).to_contain_text("the sink refused the record")
    expect(reasons).to_contain_text("unmappable")
    expect(olga_page.locator("#live-workers")).to_have_text("1")
    expect(olga_page.locator("#sink-health")).to_contain_text("closed on 1 live worker")
    traffic = olga_page.locator("#traffic")
    expect(traffic.locator("th", has_text="rejected invalid_signature")).to_have_count(1)
    accepted = sum(
        int(text) for text in traffic.locator("tbody tr td:nth-child(2)").all_inner_texts()
    )
    assert 4 == accepted
    expect(olga_page.locator("#signing-keys")).to_contain_text("fp_")
    expect(olga_page.locator("#reconcile")).to_contain_text("tasks watched")
    screenshot(olga_page, "overview")


def test_failed_jobs_group_dead_letters_by_cause(olga_page: Page) -> None:
    """Failed jobs says "2 events: sink answered 400" (from the attempts' HTTP status) and
    lists the unmappable ones apart, with bulk replay and resolve for each group."""
    olga_page.goto("/failed")
    refused = olga_page.locator("#group-sink_rejected")
    expect(refused.locator("h2")).to_contain_text("2 events: sink answered 400 since")
    unmappable = olga_page.locator("#group-unmappable h2")
    expect(unmappable).to_contain_text("2 events: the event is not a generation we can record")
    expect(refused.locator("button.bulk-replay")).to_be_visible()
    expect(refused.locator("button.bulk-resolve")).to_be_visible()
    screenshot(olga_page, "failed-jobs")


def test_event_page_shows_the_attempt_timeline(olga_page: Page, sent: dict[str, str]) -> None:
    """The dead event's timeline shows it received, the sink attempt with its duration,
    outcome, the 400 the sink answered and the start of its answer, redacted as text."""
    olga_page.goto(event_path(sent["refused"]))
    expect(olga_page.locator("#event-state")).to_have_text("dead")
    expect(olga_page.locator("#event-cause")).to_have_text("sink answered 400")
    timeline = olga_page.locator("#timeline")
    expect(timeline.locator("li").first).to_contain_text("received (signed delivery)")
    attempt = timeline.locator("li", has_text="sink attempt")
    expect(attempt.locator(".attempt")).to_contain_text("rejected in")
    expect(attempt.locator(".status")).to_have_text("400")
    expect(attempt.locator("pre.answer")).to_have_text(SINK_ANSWER.decode())
    expect(olga_page.locator("pre.body")).to_contain_text("task_refused")
    screenshot(olga_page, "event")


def test_rejected_deliveries_show_skew_headers_and_the_explanation(olga_page: Page) -> None:
    """The bad-signature delivery is listed with its code, skew, header names and client,
    and its explanation page says why it failed and what to check."""
    olga_page.goto("/deliveries")
    row = olga_page.locator("#rejected tbody tr", has_text="msg_forged_1")
    expect(row).to_contain_text("401 invalid_signature")
    skew = int(row.locator(".skew").inner_text().removesuffix(" s"))
    assert 42 <= skew <= 72, "signed 42 s before it was sent"
    headers = row.locator(".headers").inner_text()
    assert {"webhook-id", "webhook-signature", "webhook-timestamp"} <= set(headers.split(", "))
    expect(row).to_contain_text("127.0.0.1")
    row.locator("a.explain").click()
    expect(olga_page.locator("#verdict")).to_contain_text("401 invalid_signature")
    expect(olga_page.locator("#skew")).to_contain_text("in the past (within the 300 s tolerance)")
    expect(olga_page.locator("#header-names")).to_contain_text("webhook-signature")
    expect(olga_page.locator("#hint")).to_contain_text("matches none of the keys tried")


def test_fix_the_sink_replay_from_the_page_and_watch_it_apply(
    olga_page: Page, sent: dict[str, str], downstream: Downstream
) -> None:
    """After the sink is fixed, Replay on the page queues it and the page shows applied."""
    downstream.statuses = [200]
    olga_page.goto(event_path(sent["refused"]))
    olga_page.click("#replay")
    expect(olga_page.locator("#event-state")).to_have_text("applied", timeout=WAIT_MS)
    timeline = olga_page.locator("#timeline")
    expect(timeline).to_contain_text("replayed by olga")
    expect(timeline.locator("li").last.locator(".attempt")).to_contain_text("applied in")


def test_bulk_replay_shows_the_count_then_the_outcomes(olga_page: Page) -> None:
    """A bulk replay first shows the exact count it would queue, then how each ended."""
    olga_page.goto("/failed")
    olga_page.locator("#group-sink_rejected button.bulk-replay").click()
    expect(olga_page.locator("#replay-count")).to_have_text("1")
    olga_page.click("#confirm-replay")
    expect(olga_page.locator("#replay-done")).to_be_visible(timeout=WAIT_MS)
    expect(olga_page.locator("#outcome-applied")).to_have_text("1")
    olga_page.goto("/audit")
    expect(olga_page.locator("table tbody tr").first).to_contain_text("olga")


def test_resolve_unmappable_events_with_a_reason(olga_page: Page, sent: dict[str, str]) -> None:
    """One unmappable event resolved from its page, the other from Failed jobs in bulk:
    both leave Failed jobs and the dead count, and the audit names olga and the reason."""
    olga_page.goto(event_path(sent["unmappable"]))
    olga_page.fill("#resolve-reason", "test delivery from the sandbox, no task behind it")
    olga_page.click("#resolve")
    expect(olga_page.locator("#event-state")).to_have_text("resolved")
    expect(olga_page.locator("#resolution")).to_contain_text("olga")
    expect(olga_page.locator("#timeline")).to_contain_text("resolved by olga")
    olga_page.goto("/failed")
    group = olga_page.locator("#group-unmappable")
    expect(group.locator("h2")).to_contain_text("1 event:")
    group.locator("input.resolve-why").fill("sender bug, fixed upstream")
    group.locator("button.bulk-resolve").click()
    expect(olga_page.locator("#resolve-count")).to_have_text("1")
    olga_page.click("#confirm-resolve")
    expect(olga_page.locator("#resolved-count")).to_contain_text("Resolved 1 of 1 event")
    olga_page.goto("/failed")
    expect(olga_page.locator("#no-dead")).to_be_visible()
    olga_page.goto("/")
    expect(olga_page.locator("#dead-count")).to_have_text("0")
    olga_page.goto("/audit")
    rows = olga_page.locator("table tbody tr", has_text="resolve")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("olga")
    expect(rows.first).to_contain_text("sender bug, fixed upstream")
    expect(rows.nth(1)).to_contain_text("no task behind it")


def test_markup_and_control_characters_in_a_signed_event_render_as_text(
    olga_page: Page, sent: dict[str, str], dialogs: Dialogs
) -> None:
    """An event whose fields hold <script>, onerror markup and terminal/bidi control
    characters shows them as text: nothing runs, nothing is reordered or hidden."""
    olga_page.goto(event_path(sent["xss"]))
    expect(olga_page.locator("h1 .id")).to_have_text(XSS_EVENT_ID)
    body = olga_page.locator("pre.body")
    expect(body).to_contain_text(XSS_MODEL)
    expect(body).to_contain_text("onerror")
    shown = body.inner_text()
    assert "\\u202e" in shown, "the bidi override is shown as text"
    assert "\u202e" not in shown, "the bidi override is not obeyed"
    assert "\x1b" not in olga_page.content()
    olga_page.goto("/events")
    expect(olga_page.locator("table.events")).to_contain_text(XSS_EVENT_ID)
    assert olga_page.locator("script").count() == 1, "only the console's own script"
    assert olga_page.locator("svg, img").count() == 0
    assert dialogs.seen == []


def test_credits_page_totals_match_the_events_sent(olga_page: Page) -> None:
    """Two succeeded jobs of one credit each were sent: the totals say so, per model too."""

    def counted() -> bool:
        olga_page.goto("/credits")
        total = olga_page.locator("#total-jobs")
        return total.count() == 1 and total.inner_text() == "2"

    eventually(counted, what="both jobs counted")
    totals = [
        olga_page.locator(f"#total-{name}").inner_text()
        for name in ("succeeded", "failed", "reserved", "final", "uncharged")
    ]
    assert ["2", "0", "2", "2", "0"] == totals
    expect(olga_page.locator("table.credits tbody")).to_contain_text(XSS_MODEL)


def test_records_page_says_an_http_sink_cannot_read_records(olga_page: Page) -> None:
    """With an HTTP sink the Records page says plainly that it cannot read records back."""
    olga_page.goto("/records?key=task_refused")
    expect(olga_page.locator("#record-unreadable")).to_contain_text("cannot read")


def test_a_request_without_the_csrf_token_is_refused(olga_page: Page, sent: dict[str, str]) -> None:
    """The session cookie alone cannot act: form posts and API calls without the CSRF
    token are 403, and the event stays as it was."""
    response = olga_page.request.post(
        "/actions/replay", form={"event_id": sent["refused"], "source": "rivya"}
    )
    resolve = olga_page.request.post(
        "/actions/resolve",
        form={"event_id": sent["refused"], "source": "rivya", "reason": "x"},
    )
    api = olga_page.request.post(
        "/api/v1/replays", data={"filter": {"state": "dead"}}, headers=_json_headers()
    )
    assert (403, 403, 403) == (response.status, resolve.status, api.status)


def test_a_viewer_gets_no_action_buttons_and_a_403(
    browser: Browser,
    service: ServiceProcess,
    people: tuple[Path, dict[str, Person]],
    dialogs: Dialogs,
    sent: dict[str, str],
) -> None:
    """A viewer reads events and Failed jobs but has no Replay or Resolve button, and the
    API refuses both actions with 403, by session (with its CSRF token) and by token."""
    vic = people[1]["vic"]
    # A fresh dead letter, so the viewer's pages have something an operator could act on.
    downstream_body = event_body(task_id="task_for_vic")
    with httpx.Client(base_url=service.url, timeout=10) as public:
        headers = signed_headers(downstream_body, event_id="msg_vic_1")
        assert (
            public.post("/webhooks/rivya", content=downstream_body, headers=headers).status_code
            == 202
        )
    context, page = signed_in(browser, service, vic, dialogs)
    try:
        page.goto(event_path(sent["refused"]))
        expect(page.locator("#event-state")).to_have_text("applied")
        page.goto(event_path(sent["unmappable"]))
        expect(page.locator("#event-state")).to_have_text("resolved")
        for path in ("/failed", event_path(sent["xss"]), "/"):
            page.goto(path)
            assert (
                page.locator("#replay, #resolve, button.bulk-replay, button.bulk-resolve").count()
                == 0
            )
            assert page.locator("form[action^='/actions/']").count() == 0
        csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
        by_session = [
            page.request.post(
                f"/api/v1/events/{quote(sent['unmappable2'], safe='')}/{verb}",
                headers={"X-CSRF-Token": csrf, "content-type": "application/json"},
                data={"reason": "viewer"},
            ).status
            for verb in ("replay", "resolve")
        ]
    finally:
        context.close()
    by_token = [
        httpx.post(
            f"{service.admin_url}/api/v1/events/{sent['unmappable2']}/{verb}",
            headers=vic.bearer,
            json={"reason": "viewer"},
            timeout=10,
        ).status_code
        for verb in ("replay", "resolve")
    ]
    assert ([403, 403], [403, 403]) == (by_session, by_token)


def _json_headers() -> dict[str, Any]:
    return {"content-type": "application/json"}


@pytest.fixture(scope="module")
def sqlite_service(
    people: tuple[Path, dict[str, Person]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A second ``serve`` whose sink (SQLite) reads records back, on a Redis of its own."""
    data = tmp_path_factory.mktemp("records-data")
    with RedisProcess(data / "redis") as own_redis:
        env = base_env(data, own_redis.url, RECEIVER_ADMIN_USERS_FILE=str(people[0]))
        with ServiceProcess(env, data / "serve.log", admin=True) as running:
            yield running


def test_records_page_shows_a_failed_task_in_words(
    browser: Browser,
    sqlite_service: ServiceProcess,
    people: tuple[Path, dict[str, Person]],
    dialogs: Dialogs,
) -> None:
    """Looking up a failed task shows the record as the sink holds it in words a support
    person understands, and the event that set it."""
    failed = orjson.dumps(envelope(generation(task_id="task_refused_prompt", status="failed")))
    with httpx.Client(base_url=sqlite_service.url, timeout=10) as public:
        headers = signed_headers(failed, event_id="msg_failed_task")
        assert public.post("/webhooks/rivya", content=failed, headers=headers).status_code == 202
    context, page = signed_in(browser, sqlite_service, people[1]["vic"], dialogs)
    try:

        def applied() -> bool:
            page.goto("/records?key=task_refused_prompt")
            return page.locator("#record-words").count() == 1 and "failed:" in (
                page.locator("#record-words").inner_text()
            )

        eventually(applied, what="the failed task's record")
        expect(page.locator("#record-words")).to_contain_text(
            "failed: content_policy — the prompt was refused; 0 of 1 reserved credits charged"
        )
        events = page.locator("#record-events")
        expect(events).to_contain_text("msg_failed_task")
        expect(events).to_contain_text("set the record")
    finally:
        context.close()


def test_no_browser_was_downloaded() -> None:
    """The tests drive the system's Chromium; Playwright's own browser cache stays empty."""
    cache = Path.home() / ".cache" / "ms-playwright"
    assert not cache.exists() or not any(cache.iterdir())
    assert shutil.which("chromium") is not None or Path(CHROMIUM).exists()

"""The console in a real browser (Debian's Chromium driven by Playwright) against a real
``receiver serve`` process, real Redis, a real SQLite-free HTTP sink that answers 400 until
it is fixed: what support and ops do on the pages, and what they must never see.

One browser and one served process for the module (CI time); the tests run in order and
share what the first ones sent. ``make screenshots`` runs this module with
``CONSOLE_SCREENSHOTS_DIR=docs/screenshots`` to refresh the README's pictures.
"""

from __future__ import annotations

import os
import shutil
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
from tests.factories import base_env, envelope, generation, signed_headers
from tests.helpers import eventually
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
    with Downstream(400) as server:
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
    """Three deliveries: one the sink will refuse, one unmappable, one full of markup."""
    bodies: dict[str, tuple[str, bytes]] = {
        "refused": ("msg_refused_1", orjson.dumps(envelope(generation(task_id="task_refused")))),
        "unmappable": (
            "msg_unmappable_1",
            orjson.dumps({"type": "generation.succeeded", "data": {"status": "succeeded"}}),
        ),
        "xss": (
            XSS_EVENT_ID,
            orjson.dumps(
                envelope(
                    generation(task_id="task_xss", model=XSS_MODEL, client_request_id=XSS_CLIENT)
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
    ids = {name: event_id for name, (event_id, _) in bodies.items()}

    def all_dead() -> bool:
        answer = httpx.get(f"{service.admin_url}/readyz", timeout=5).json()
        return int(answer.get("queue", {}).get("dead", 0)) == 3

    eventually(all_dead, what="three dead letters")
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


def test_overview_shows_the_dead_letters(olga_page: Page) -> None:
    """Signed in, the overview counts the three dead letters and names their causes."""
    olga_page.goto("/")
    expect(olga_page.locator(".tile.bad .n")).to_have_text("3")
    expect(olga_page.get_by_text("sink answered 400")).to_be_visible()
    screenshot(olga_page, "overview")


def test_failed_jobs_group_dead_letters_by_cause(olga_page: Page) -> None:
    """Failed jobs says "2 events: sink answered 400" and lists the unmappable one apart."""
    olga_page.goto("/failed")
    groups = olga_page.locator("section.group h2")
    expect(groups.first).to_contain_text("2 events: sink answered 400 since")
    expect(groups.nth(1)).to_contain_text("1 event: the event is not a generation we can record")
    screenshot(olga_page, "failed-jobs")


def test_event_page_shows_the_attempt_timeline(olga_page: Page, sent: dict[str, str]) -> None:
    """The dead event's page shows it was received, tried, and why the sink refused it."""
    olga_page.goto(event_path(sent["refused"]))
    expect(olga_page.locator("#event-state")).to_have_text("dead")
    timeline = olga_page.locator("ol.timeline")
    expect(timeline.locator("li").first).to_contain_text("ingest")
    expect(timeline).to_contain_text("answered 400")
    expect(olga_page.locator("pre.body")).to_contain_text("task_refused")
    screenshot(olga_page, "event")


def test_fix_the_sink_replay_from_the_page_and_watch_it_apply(
    olga_page: Page, sent: dict[str, str], downstream: Downstream
) -> None:
    """After the sink is fixed, Replay on the page queues it and the page shows applied."""
    downstream.statuses = [200]
    olga_page.goto(event_path(sent["refused"]))
    olga_page.click("#replay")
    expect(olga_page.locator("#event-state")).to_have_text("applied", timeout=WAIT_MS)
    expect(olga_page.locator("ol.timeline")).to_contain_text("replay:olga")


def test_bulk_replay_shows_the_count_then_the_outcomes(
    olga_page: Page, sent: dict[str, str]
) -> None:
    """A bulk replay first shows the exact count it would queue, then how each ended."""
    olga_page.goto("/failed")
    group = olga_page.locator("section.group", has_text="sink answered 400")
    group.locator("button.bulk-replay").click()
    expect(olga_page.locator("#replay-count")).to_have_text("1")
    olga_page.click("#confirm-replay")
    expect(olga_page.locator("#replay-done")).to_be_visible(timeout=WAIT_MS)
    expect(olga_page.locator("#outcome-applied")).to_have_text("1")
    olga_page.goto("/audit")
    expect(olga_page.locator("table tbody tr").first).to_contain_text("olga")


def test_markup_in_a_signed_event_renders_as_text(
    olga_page: Page, sent: dict[str, str], dialogs: Dialogs
) -> None:
    """An event whose fields hold <script> and onerror markup shows them as text; none runs."""
    olga_page.goto(event_path(sent["xss"]))
    expect(olga_page.locator("h1 .id")).to_have_text(XSS_EVENT_ID)
    body = olga_page.locator("pre.body")
    expect(body).to_contain_text(XSS_MODEL)
    expect(body).to_contain_text("onerror")
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


def test_a_request_without_the_csrf_token_is_refused(olga_page: Page, sent: dict[str, str]) -> None:
    """The session cookie alone cannot replay: a form post without the CSRF token is 403."""
    response = olga_page.request.post(
        "/actions/replay", form={"event_id": sent["unmappable"], "source": "rivya"}
    )
    api = olga_page.request.post(
        "/api/v1/replays", data={"filter": {"state": "dead"}}, headers=_json_headers()
    )
    assert (403, 403) == (response.status, api.status)


def test_a_viewer_gets_no_replay_button_and_a_403(
    browser: Browser,
    service: ServiceProcess,
    people: tuple[Path, dict[str, Person]],
    dialogs: Dialogs,
    sent: dict[str, str],
) -> None:
    """A viewer reads the event but has no Replay button, and the API refuses with 403."""
    vic = people[1]["vic"]
    context, page = signed_in(browser, service, vic, dialogs)
    try:
        page.goto(event_path(sent["unmappable"]))
        expect(page.locator("#event-state")).to_have_text("dead")
        assert page.locator("#replay").count() == 0
        assert page.locator("form[action^='/actions/']").count() == 0
        csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
        by_session = page.request.post(
            f"/api/v1/events/{quote(sent['unmappable'], safe='')}/replay",
            headers={"X-CSRF-Token": csrf},
        )
    finally:
        context.close()
    by_token = httpx.post(
        f"{service.admin_url}/api/v1/events/{sent['unmappable']}/replay",
        headers=vic.bearer,
        timeout=10,
    )
    assert (403, 403) == (by_session.status, by_token.status_code)


def _json_headers() -> dict[str, Any]:
    return {"content-type": "application/json"}


def test_no_browser_was_downloaded() -> None:
    """The tests drive the system's Chromium; Playwright's own browser cache stays empty."""
    cache = Path.home() / ".cache" / "ms-playwright"
    assert not cache.exists() or not any(cache.iterdir())
    assert shutil.which("chromium") is not None or Path(CHROMIUM).exists()

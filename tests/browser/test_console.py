"""The operator console in a real browser: Debian's chromium driven by Playwright (no browser
download; scripts/install-test-deps installs chromium), against a real intake, worker, Redis and
the sandbox.

With ``CONSOLE_SCREENSHOTS=<dir>`` the tests save a screenshot of each page there (the README's
come from ``CONSOLE_SCREENSHOTS=docs/console``).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    INTAKE_TOKEN,
    RedisServer,
    Sandbox,
    Stack,
    base_env,
    wait_until,
)
from tests.shards import PAGE_A, PAGE_B, Shards, two_shards

pytestmark = [pytest.mark.integration, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("CONSOLE_SCREENSHOTS")

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # pragma: no cover - scripts/install-test-deps installs it
    pytest.fail(f"chromium not found at {CHROMIUM}: run scripts/install-test-deps", pytrace=False)


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    s = Stack(
        base_env(redis_server.url, sandbox.url), sandbox, redis_server.url, tmp_path_factory.mktemp("console")
    )
    s.start_intake()
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


def shot(tab: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(stack: Stack, tab: Any, token: str = ADMIN_TOKEN) -> None:
    tab.goto(f"{stack.intake_url}/console/")
    assert tab.url.endswith("/console/login")
    tab.get_by_label("Admin token").fill(token)
    tab.get_by_role("button", name="Sign in").click()


def send(stack: Stack, psid: str) -> str:
    resp = stack.post({"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}})
    assert resp.status_code == 202, resp.text
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def admin(stack: Stack, path: str) -> Any:
    resp = httpx.get(f"{stack.intake_url}{path}", headers=ADMIN_HEADERS, timeout=10)
    resp.raise_for_status()
    return resp.json()


def test_an_intake_token_cannot_sign_in_and_the_cookie_is_locked_down(stack: Stack, page: Any) -> None:
    sign_in(stack, page, INTAKE_TOKEN)
    assert page.get_by_role("alert").inner_text() == "That is not an admin token."
    assert page.context.cookies() == []
    shot(page, "login")
    sign_in(stack, page)
    assert page.url.endswith("/console/")
    [cookie] = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (
        "__Host-bmw_console",
        True,
        True,
        "Strict",
    )
    assert ADMIN_TOKEN not in cookie["value"]
    page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/console/login")
    page.goto(f"{stack.intake_url}/console/dead-letters")
    assert page.url.endswith("/console/login")  # the session ended with the sign-out


def test_the_overview_shows_the_status_read_model(stack: Stack, page: Any) -> None:
    ids = [send(stack, f"ov-{uuid.uuid4().hex[:8]}") for _ in range(3)]
    dead = send(stack, f"err-2-ov{uuid.uuid4().hex[:6]}")  # transient three times: a dead letter
    stack.wait_final([*ids, dead])
    sign_in(stack, page)
    expected = json.loads(stack.cli("status", "--json").stdout)
    assert page.locator("#dead-letters").inner_text() == str(expected["dead_letters"])
    assert page.locator("#open").inner_text() == str(expected["open"])
    assert page.locator("#paused-pages").inner_text() == str(expected["paused_pages"])
    assert "dead:max_attempts" in page.locator("#failure-classes").inner_text()
    assert page.get_by_role("img", name="Messages sent per minute over the last hour").count() == 1
    shot(page, "overview")


def test_dead_letters_are_filtered_confirmed_and_replayed(stack: Stack, page: Any) -> None:
    dead = send(stack, f"err-2-dl{uuid.uuid4().hex[:6]}")
    stack.wait_final([dead])
    sign_in(stack, page)
    page.goto(f"{stack.intake_url}/console/dead-letters?older_than=nan")
    assert page.get_by_role("status").inner_text() == "older_than must be a finite number"  # as the API says
    page.goto(f"{stack.intake_url}/console/dead-letters?code=999")
    assert page.locator("#no-dead").count() == 1
    page.get_by_label("Error code").fill("2")
    page.get_by_role("button", name="Filter").click()
    listed = admin(stack, "/v1/dead-letters?code=2")["dead_letters"]
    rows = page.locator("#dead-letters tbody tr")
    assert rows.count() == len(listed)  # the same dead letters as the API, newest first
    assert rows.first.locator("a").inner_text() == listed[0]["delivery_id"]
    shot(page, "dead-letters")
    page.get_by_label(f"Select {dead}").check()
    page.get_by_role("button", name="Replay…").click()
    assert page.locator("#confirm-text").inner_text().startswith("Replay 1 dead letter (the selected)?")
    shot(page, "confirm")
    assert stack.record(dead)["status"] == "dead"  # nothing happens before the confirmation
    page.get_by_role("button", name="Replay 1").click()
    assert "replayed 1" in page.get_by_role("status").inner_text()
    assert stack.record(dead).get("replays") == "1"  # replayed (it fails again: err-2 always does)


def test_a_delivery_and_a_recipient_are_looked_up(stack: Stack, page: Any) -> None:
    psid = f"outside-lu{uuid.uuid4().hex[:6]}"
    delivery = send(stack, psid)
    stack.wait_final([delivery])
    flaky = send(stack, f"flaky1-2-lu{uuid.uuid4().hex[:6]}")
    stack.wait_final([flaky])
    sign_in(stack, page)
    page.goto(f"{stack.intake_url}/console/lookup")
    page.get_by_label("Delivery id").fill(flaky)
    page.get_by_role("button", name="Look up").first.click()
    assert page.locator("#d-status").inner_text() == "sent"
    assert page.locator("#d-attempts").inner_text() == "2"
    history = page.locator("#d-history").inner_text()
    assert "retrying — transient (code 2)" in history
    assert "sent" in history
    shot(page, "lookup-delivery")
    page.get_by_label("Page id").fill("100")
    page.get_by_label("PSID (or phone:…, uref:… for other recipients)").fill(psid)
    page.get_by_role("button", name="Look up").nth(1).click()
    assert page.locator("#r-window").inner_text().startswith("closed")
    assert page.locator("#r-suppressed").inner_text() == "no"
    shot(page, "lookup-recipient")


def test_actions_without_the_form_token_or_from_elsewhere_are_refused(stack: Stack, page: Any) -> None:
    dead = send(stack, f"err-2-cs{uuid.uuid4().hex[:6]}")
    stack.wait_final([dead])
    sign_in(stack, page)
    url = f"{stack.intake_url}/console/dead-letters"
    form = {"action": "purge", "id": dead, "confirmed": "1"}
    no_token = page.request.post(url, form=form, max_redirects=0)
    assert no_token.status == 403
    wrong = page.request.post(url, form={**form, "csrf": "0" * 64}, max_redirects=0)
    assert wrong.status == 403
    csrf = page.goto(url).text()  # the page's own form token ...
    token = csrf.split('name="csrf" value="')[1].split('"')[0]
    elsewhere = page.request.post(
        url, form={**form, "csrf": token}, headers={"Origin": "https://evil.example"}, max_redirects=0
    )
    assert elsewhere.status == 403  # ... is refused from another origin
    bearer = httpx.post(
        url, data={**form, "csrf": token}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )
    assert bearer.status_code == 303  # no cookie, no session: to the login form
    assert bearer.headers["location"] == "/console/login"
    assert stack.record(dead)["status"] == "dead"  # nothing was purged


def test_a_page_is_paused_a_campaign_stopped_and_both_resumed(stack: Stack, page: Any) -> None:
    campaign = f"camp-{uuid.uuid4().hex[:8]}"
    sign_in(stack, page)
    page.goto(f"{stack.intake_url}/console/pages")
    page.get_by_role("button", name="Pause page 401").click()
    assert page.locator("#confirm-text").inner_text().startswith("Pause page 401?")
    page.get_by_role("button", name="Pause the page").click()
    assert page.get_by_role("status").inner_text() == "paused 401"
    assert "paused" in page.locator("#page-401 .state").inner_text()
    assert "401" in [p["page_id"] for p in json.loads(stack.cli("status", "--json").stdout)["paused"]]
    shot(page, "pages")

    psids = [f"camp-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for psid in psids:  # they wait for the paused page
        resp = stack.post(
            {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "sale"}},
            path="/v25.0/401/messages",
            headers={"X-Braze-Campaign-Id": campaign},
        )
        assert resp.status_code == 202, resp.text
    assert wait_until(lambda: admin(stack, f"/v1/campaigns/{campaign}")["open"] == 3, 10)
    page.goto(f"{stack.intake_url}/console/campaigns")
    assert page.locator(f"#campaign-{campaign}").count() == 1
    shot(page, "campaigns")
    page.get_by_role("button", name=f"Stop campaign {campaign}").click()
    assert "Its 3 open messages end cancelled" in page.locator("#confirm-text").inner_text()
    page.get_by_role("button", name="Stop the campaign").click()
    assert page.get_by_role("status").inner_text() == f"stopped {campaign}: 3 cancelled"
    counters = admin(stack, f"/v1/campaigns/{campaign}")
    assert (counters["cancelled"], counters["open"], counters["stopped"]) == (3, 0, True)
    cells = page.locator(f"#campaign-{campaign} td.num").all_inner_texts()  # the page reads the API's numbers
    assert cells == [
        str(counters[name])
        for name in (
            "accepted",
            "open",
            "sent",
            "delivered",
            "read",
            "failed",
            "expired",
            "dead",
            "cancelled",
        )
    ]

    page.goto(f"{stack.intake_url}/console/pages")
    page.get_by_role("button", name="Resume page 401").click()
    assert page.get_by_role("status").inner_text().startswith("resumed 401")
    page.goto(f"{stack.intake_url}/console/campaigns")
    page.get_by_role("button", name=f"Resume campaign {campaign}").click()
    assert page.get_by_role("status").inner_text() == f"resumed {campaign}"
    assert admin(stack, f"/v1/campaigns/{campaign}")["stopped"] is False
    assert all(stack.sandbox.calls(psid=p) == [] for p in psids)  # none of them reached Graph


@pytest.fixture
def shards(sandbox: Sandbox, tmp_path: Path) -> Iterator[Shards]:
    yield from two_shards(sandbox, tmp_path)


def test_the_overview_shows_each_shard_and_one_that_is_down(shards: Shards, page: Any) -> None:
    """With REDIS_SHARDS the overview lists each shard; a shard whose Redis stopped shows as down
    and the page still answers with the other shards' figures (docs/scaling.md)."""
    stack = shards.stack
    msg = {
        "recipient": {"id": f"sh-{uuid.uuid4().hex[:8]}"},
        "messaging_type": "UPDATE",
        "message": {"text": "hi"},
    }
    posted = [
        stack.post(msg, path=f"/v25.0/{p}/messages") for p in (PAGE_A, PAGE_B)
    ]  # sync: Playwright owns the loop
    shards.wait_final([r.json()["delivery_id"] for r in posted])
    sign_in(stack, page)
    rows = page.locator("#shards tbody tr")
    assert rows.count() == 2
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == ["up", "up"]
    shot(page, "overview-shards")
    shards.servers[1].stop()
    try:
        page.reload()
        row = page.locator("#shards tbody tr").nth(1)
        assert row.locator("td").nth(1).inner_text() == "down"
        assert page.locator("#open").inner_text() == "0"  # shard 0's figures
        assert page.locator("#shards-down").count() == 0  # the overview's table says it already
        # the listings across shards answer with shard 0's and say which shard they leave out
        for name in ("campaigns", "pages", "dead-letters"):
            page.goto(f"{stack.intake_url}/console/{name}")
            assert page.locator("h1").count() == 1, name
            assert page.locator("#shards-down").inner_text().startswith("Shard 1 did not answer"), name
        shot(page, "dead-letters-shard-down")
    finally:
        shards.servers[1].start()

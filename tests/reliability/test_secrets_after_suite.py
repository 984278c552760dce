"""Secrets: after the whole suite, no token or key appears in any log line the processes wrote.

``tests/conftest.py`` moves this test to the very end of the session, so it reads the logs of
every intake, worker, sandbox and double started by every other test. A scan only means something
for a secret the scanned processes actually had, so this test first runs a stack of its own with
every secret set, and drives each one through the paths that could leak it (a passthrough token
in the URL, an expired one that Graph refuses, dropped connections and HTML errors whose exception
texts carry the request URL, the app secret's proof, the Braze key on every feedback call, the
verify token's handshake, a signed webhook, the link secret checking a signed m.me ref), and
checks that each was used. Then every log of the
session is scanned for all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    INTAKE_TOKEN,
    PAGE_TOKEN,
    TEST_PAGES,
    Stack,
    free_port,
    wait_port,
    wait_until,
)
from tests.integration.test_braze_loop import (
    APP_SECRET,
    BRAZE_KEY,
    LINK_SECRET,
    VERIFY_TOKEN,
    braze_attributes,
    braze_requests,
    post_webhook,
    sign,
    signed_ref,
    webhook_body,
)

pytestmark = pytest.mark.reliability
PASSTHROUGH = "sandbox-token-4242"  # a page token that selects its page from the intake URL
EXPIRED = "sandbox-token-expired-4343"  # Graph answers 190 to it: the error path carries the URL


@pytest.fixture
def braze_double(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    with (tmp_path / "braze.log").open("wb") as log:
        double = subprocess.Popen(
            [sys.executable, "-m", "tests.doubles.braze", "--port", str(port), "--api-key", BRAZE_KEY],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    assert wait_port(port)
    yield f"http://127.0.0.1:{port}"
    double.terminate()
    double.wait(timeout=20)


def exercise_every_secret(make_stack: Any, braze: str) -> None:
    """A stack with every secret set, each one used for real."""
    pages = {page: f"sandbox-token-{page}" for page in TEST_PAGES} | {"4242": PASSTHROUGH, "4343": EXPIRED}
    stack: Stack = make_stack(
        PAGE_ACCESS_TOKENS=json.dumps(pages),
        APP_SECRET=APP_SECRET,
        MESSENGER_VERIFY_TOKEN=VERIFY_TOKEN,
        BRAZE_REST_URL=braze,
        BRAZE_API_KEY=BRAZE_KEY,
        LINK_SECRET=LINK_SECRET,
        MAX_ATTEMPTS="2",
    )
    stack.start_intake()
    stack.start_worker()
    psids = ["secret-ok", "drop-secret", "http5xx-secret", "err-551-secret"]
    ids = [
        stack.post(
            {"recipient": {"id": p}, "message": {"text": "x"}}, headers={"X-Braze-External-Id": "u1"}
        ).json()["delivery_id"]
        for p in psids
    ]
    for token, page in ((PASSTHROUGH, "4242"), (EXPIRED, "4343")):
        resp = stack.post(
            {"recipient": {"id": f"secret-{page}"}, "message": {"text": "x"}},
            path="/v25.0/me/messages",
            params={"access_token": token},
        )
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["delivery_id"])
    records = stack.wait_final(ids[:-1], timeout=60)  # the expired token's page is paused instead
    assert [records[i]["status"] for i in ids[:-1]] == ["sent", "dead", "dead", "failed", "sent"]
    assert wait_until(lambda: stack.record(ids[-1]).get("status") == "scheduled", 30)  # 190: paused
    calls = stack.sandbox.calls()
    assert any(c["psid"] == "secret-ok" and c["appsecret_proof"] for c in calls)  # APP_SECRET in use
    assert any(c["psid"] == "secret-4242" and c["status"] == 200 for c in calls)  # the URL token selected
    assert any(c["psid"] == "secret-4343" and c["code"] == 190 for c in calls)  # expired token refused
    # the Braze key: the unreachable user was fed back with it
    assert wait_until(lambda: any(r.get("authorized") for r in braze_requests(braze)), 30)
    handshake = httpx.get(
        f"{stack.intake_url}/messenger/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "7"},
        timeout=10,
    )
    assert (handshake.status_code, handshake.text) == (200, "7")  # MESSENGER_VERIFY_TOKEN in use
    body = webhook_body("100", "secret-webhook")
    assert post_webhook(stack, body, sign(body)).status_code == 200  # APP_SECRET checks signatures
    linking = webhook_body("100", "secret-linked", ref=signed_ref("user-secret"))
    assert post_webhook(stack, linking, sign(linking)).status_code == 200
    assert wait_until(  # LINK_SECRET checked the ref
        lambda: any(a.get("messenger_id") == "secret-linked" for a in braze_attributes(braze)), 30
    )
    stack.stop()  # shutdown lines are scanned too


def test_no_secret_in_any_log(
    make_stack: Any, braze_double: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    exercise_every_secret(make_stack, braze_double)
    secrets = {
        "intake token": INTAKE_TOKEN,
        "admin token": ADMIN_TOKEN,
        "page token": PAGE_TOKEN,
        "passthrough page token": PASSTHROUGH,
        "expired page token": EXPIRED,
        "any sandbox page token": "sandbox-token-",
        "app secret": APP_SECRET,
        "Braze REST key": BRAZE_KEY,
        "verify token": VERIFY_TOKEN,
        "link secret": LINK_SECRET,
    }
    root = tmp_path_factory.getbasetemp()
    logs = [p for p in root.rglob("*.log") if p.is_file()]
    leaks = []
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        for name, secret in secrets.items():
            if secret in text:
                leaks.append((str(path.relative_to(root)), name))
    print(f"\nsecrets: {len(secrets)} secrets, {len(logs)} process logs scanned")
    assert not leaks, leaks

"""The Braze ⇄ Messenger loop with real processes: webhook, PSIDs into Braze, window, park, feedback."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Stack, free_port, wait_port, wait_until

pytestmark = pytest.mark.integration

APP_SECRET = "test-app-secret-abcdef012345"
VERIFY_TOKEN = "test-verify-token-98765"
BRAZE_KEY = "test-braze-rest-key-5555"


@pytest.fixture
def braze(tmp_path: Path) -> Iterator[str]:
    """The project's Braze API double as a real server (``python -m tests.doubles.braze``)."""
    port = free_port()
    log = (tmp_path / "braze.log").open("wb")
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.braze", "--port", str(port), "--api-key", BRAZE_KEY],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    assert wait_port(port)
    yield f"http://127.0.0.1:{port}"
    double.terminate()
    double.wait(timeout=20)


def braze_requests(url: str) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = httpx.get(f"{url}/__braze/requests", timeout=10).json()["requests"]
    return requests


def braze_attributes(url: str) -> list[dict[str, Any]]:
    return [a for r in braze_requests(url) for a in (r.get("body") or {}).get("attributes", [])]


def webhook_body(page: str, psid: str, *, ref: str | None = None) -> bytes:
    item: dict[str, Any] = {
        "sender": {"id": psid},
        "recipient": {"id": page},
        "timestamp": int(time.time() * 1000),
        "message": {"mid": "m1", "text": "hi"},
    }
    if ref:
        item = {**item, "referral": {"ref": ref, "source": "SHORTLINK", "type": "OPEN_THREAD"}}
        del item["message"]
    return orjson.dumps(
        {"object": "page", "entry": [{"id": page, "time": item["timestamp"], "messaging": [item]}]}
    )


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(stack: Stack, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(f"{stack.intake_url}/messenger/webhook", content=body, headers=headers, timeout=10)


def loop_stack(make_stack: Any, braze_url: str, **extra: str) -> Stack:
    stack: Stack = make_stack(
        APP_SECRET=APP_SECRET,
        MESSENGER_VERIFY_TOKEN=VERIFY_TOKEN,
        BRAZE_REST_URL=braze_url,
        BRAZE_API_KEY=BRAZE_KEY,
        **extra,
    )
    stack.start_intake()
    stack.start_worker()
    return stack


def test_verification_handshake(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze)
    ok = httpx.get(
        f"{stack.intake_url}/messenger/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"},
        timeout=10,
    )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    bad = httpx.get(
        f"{stack.intake_url}/messenger/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        timeout=10,
    )
    assert bad.status_code == 403


def test_signature_checked_and_psid_linked_into_braze(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze)
    client = stack.redis()
    body = webhook_body("100", "psid-linked", ref="braze_user-42")
    queue_before = client.llen(stack.queue)
    assert post_webhook(stack, body, None).status_code == 401
    assert post_webhook(stack, body, "sha256=" + "0" * 64).status_code == 403
    assert post_webhook(stack, body[:-1] + b" ", sign(body)).status_code == 403  # body changed
    assert client.llen(stack.queue) == queue_before  # nothing processed
    resp = post_webhook(stack, body, sign(body))
    assert resp.status_code == 200
    assert wait_until(lambda: any(a.get("external_id") == "user-42" for a in braze_attributes(braze)), 20)
    linked = next(a for a in braze_attributes(braze) if a.get("external_id") == "user-42")
    assert linked["messenger_id"] == "psid-linked"
    assert linked["messenger_reachable"] is True
    assert client.get(stack.keys.window("100", "psid-linked")) is not None
    assert all(r.get("authorized", True) for r in braze_requests(braze))


def test_known_closed_window_skips_the_doomed_call(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze)
    body = {"recipient": {"id": "outside-known"}, "message": {"text": "hi"}}
    first = stack.post(body).json()["delivery_id"]
    assert stack.wait_final([first])[first]["status"] == "failed"
    assert len(stack.sandbox.calls(psid="outside-known")) == 1
    # the answer taught us the window is closed: the next one needs no Graph call at all
    second = stack.post(body).json()["delivery_id"]
    rec = stack.wait_final([second])[second]
    assert rec["status"] == "failed"
    assert orjson.loads(rec["error"])["reason"] == "outside_window"
    assert len(stack.sandbox.calls(psid="outside-known")) == 1
    # with a fallback tag, the tag is used straight away
    third = stack.post(body, headers={"X-Fallback-Tags": "HUMAN_AGENT"}).json()["delivery_id"]
    assert stack.wait_final([third])[third]["status"] == "sent"
    assert [c["tag"] for c in stack.sandbox.calls(psid="outside-known")] == [None, "HUMAN_AGENT"]


def test_park_then_reengage_releases_in_order(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze, WINDOW_POLICY="park")
    psid = "outside-parked"
    ids = [
        stack.post({"recipient": {"id": psid}, "message": {"text": f"m{i}"}}).json()["delivery_id"]
        for i in range(3)
    ]
    assert wait_until(lambda: all(stack.record(i).get("status") == "parked" for i in ids), 20)
    assert stack.delivery(ids[0])["status"] == "parked"
    assert stack.redis().zcard(f"{stack.prefix}:parked") == 3
    status = stack.cli("status", "--json")
    assert orjson.loads(status.stdout)["parked"] == 3
    assert "bmw_parked 3.0" in httpx.get(stack.intake_metrics_url, timeout=10).text
    httpx.post(f"{stack.sandbox.url}/__sandbox/window", json={"psid": psid}, timeout=10).raise_for_status()
    body = webhook_body("100", psid)
    assert post_webhook(stack, body, sign(body)).status_code == 200
    records = stack.wait_final(ids)
    assert {r["status"] for r in records.values()} == {"sent"}
    sent = [c["body"]["message"]["text"] for c in stack.sandbox.calls(psid=psid) if c["status"] == 200]
    assert sent == ["m0", "m1", "m2"]  # in order
    assert stack.redis().zcard(f"{stack.prefix}:parked") == 0


def test_parked_expires_at_ttl(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze, WINDOW_POLICY="park", MESSAGE_TTL="3")
    delivery_id = stack.post({"recipient": {"id": "outside-expiring"}, "message": {"text": "x"}}).json()[
        "delivery_id"
    ]
    assert wait_until(lambda: stack.record(delivery_id).get("status") == "parked", 20)
    assert stack.wait_final([delivery_id], timeout=30)[delivery_id]["status"] == "expired"


def test_unreachable_fed_back_to_braze(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze, BRAZE_OUTCOME_EVENTS="true")
    delivery_id = stack.post(
        {"recipient": {"id": "err-551-fb"}, "message": {"text": "x"}},
        headers={"X-Braze-External-Id": "user-77"},
    ).json()["delivery_id"]
    assert stack.wait_final([delivery_id])[delivery_id]["status"] == "failed"
    assert wait_until(
        lambda: any(
            a.get("external_id") == "user-77" and a.get("messenger_reachable") is False
            for a in braze_attributes(braze)
        ),
        20,
    )
    events = [e for r in braze_requests(braze) for e in (r.get("body") or {}).get("events", [])]
    assert any(e["external_id"] == "user-77" and e["properties"]["status"] == "failed" for e in events)
    assert BRAZE_KEY not in "".join(p.log.read_text() for p in stack.procs)

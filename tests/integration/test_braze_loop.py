"""The Braze ⇄ Messenger loop with real processes: webhook, PSIDs into Braze (signed refs only),
window, park, feedback."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Stack, free_port, wait_port, wait_until
from worker.messenger.refs import sign_ref

pytestmark = pytest.mark.integration

APP_SECRET = "test-app-secret-abcdef012345"
VERIFY_TOKEN = "test-verify-token-98765"
BRAZE_KEY = "test-braze-rest-key-5555"
LINK_SECRET = "test-link-secret-0123456789abcdef-4444"


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
    """A message event, or with ``ref`` an m.me referral (which has no mid of its own)."""
    item: dict[str, Any] = {
        "sender": {"id": psid},
        "recipient": {"id": page},
        "timestamp": int(time.time() * 1000),
        "message": {"mid": f"m_{uuid.uuid4().hex}", "text": "hi"},
    }
    if ref:
        item = {**item, "referral": {"ref": ref, "source": "SHORTLINK", "type": "OPEN_THREAD"}}
        del item["message"]
    return orjson.dumps(
        {"object": "page", "entry": [{"id": page, "time": item["timestamp"], "messaging": [item]}]}
    )


def signed_ref(external_id: str, page: str = "100") -> str:
    """A ref the Braze template (README) would build for ``external_id``, valid for an hour."""
    return sign_ref(LINK_SECRET, page, external_id, int(time.time()) + 3600)


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
        **{"LINK_SECRET": LINK_SECRET, **extra},
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
    body = webhook_body("100", "psid-linked", ref=signed_ref("user-42"))
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


def linked_users(url: str) -> list[tuple[str, str]]:
    """(external_id, PSID) of every PSID written to Braze so far, in order."""
    return [(a["external_id"], a["messenger_id"]) for a in braze_attributes(url) if "messenger_id" in a]


def test_an_unsigned_ref_for_someone_else_links_nothing(make_stack: Any, braze: str) -> None:
    """The reported attack: m.me/<page>?ref=braze_<victim's external_id> from the attacker's
    Messenger. Meta signs that webhook correctly; the ref proves nothing, so nothing is written."""
    stack = loop_stack(make_stack, braze)
    client = stack.redis()
    attack = webhook_body("100", "psid-attacker", ref="braze_victim-77")
    forged = webhook_body("100", "psid-forger", ref=signed_ref("victim-77")[:-4] + "0000")
    for body in (attack, forged):
        assert post_webhook(stack, body, sign(body)).status_code == 200
    # a signed ref posted after them is the barrier: once it reached Braze, the others were handled
    later = webhook_body("100", "psid-later", ref=signed_ref("user-later"))
    assert post_webhook(stack, later, sign(later)).status_code == 200
    assert wait_until(lambda: ("user-later", "psid-later") in linked_users(braze), 20)

    def refused() -> list[dict[str, Any]]:
        return [line for line in stack.logs() if line.get("event") == "inbound.link_refused"]

    assert wait_until(lambda: len(refused()) == 2, 20)  # the worker handled both (in any order)
    assert sorted(line["reason"] for line in refused()) == ["bad_signature", "unsigned"]
    assert client.llen(stack.keys.braze_outbox) == 0
    assert linked_users(braze) == [("user-later", "psid-later")]
    assert client.get(stack.keys.external("100", "psid-attacker")) is None
    assert client.get(stack.keys.window("100", "psid-attacker")) is not None  # still an interaction
    worker_logs = "".join(p.log.read_text() for p in stack.procs)
    assert "victim-77" not in worker_logs  # external ids are logged as salted hashes
    assert "psid-attacker" not in worker_logs


@pytest.mark.parametrize("policy", ["keep", "replace"])
def test_a_conflicting_signed_ref_follows_the_policy(make_stack: Any, braze: str, policy: str) -> None:
    stack = loop_stack(make_stack, braze, LINK_CONFLICT_POLICY=policy)
    first = webhook_body("100", "psid-shared", ref=signed_ref("user-a"))
    assert post_webhook(stack, first, sign(first)).status_code == 200
    assert wait_until(lambda: ("user-a", "psid-shared") in linked_users(braze), 20)
    second = webhook_body("100", "psid-shared", ref=signed_ref("user-b"))
    assert post_webhook(stack, second, sign(second)).status_code == 200
    event = "inbound.link_conflict" if policy == "keep" else "inbound.psid_relinked"
    assert wait_until(lambda: any(line.get("event") == event for line in stack.logs()), 20)
    expected = "user-a" if policy == "keep" else "user-b"
    assert wait_until(
        lambda: stack.redis().get(stack.keys.external("100", "psid-shared")) == expected.encode(), 20
    )
    if policy == "replace":
        assert wait_until(lambda: ("user-b", "psid-shared") in linked_users(braze), 20)
    else:  # give a wrong write time to show, then: user-b was never written
        barrier = webhook_body("100", "psid-barrier", ref=signed_ref("user-barrier"))
        assert post_webhook(stack, barrier, sign(barrier)).status_code == 200
        assert wait_until(lambda: ("user-barrier", "psid-barrier") in linked_users(braze), 20)
        assert ("user-b", "psid-shared") not in linked_users(braze)


def test_without_link_secret_linking_is_off(make_stack: Any, braze: str) -> None:
    stack = loop_stack(make_stack, braze, LINK_SECRET="")  # compose passes an unset variable as ""
    assert wait_until(lambda: any(line.get("event") == "inbound.linking_off" for line in stack.logs()), 20)
    body = webhook_body("100", "psid-off", ref=signed_ref("user-off"))
    assert post_webhook(stack, body, sign(body)).status_code == 200
    assert wait_until(lambda: stack.redis().get(stack.keys.window("100", "psid-off")) is not None, 20)
    assert wait_until(lambda: any(line.get("reason") == "disabled" for line in stack.logs()), 20)
    assert stack.redis().get(stack.keys.external("100", "psid-off")) is None


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

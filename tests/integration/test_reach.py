"""Reach every user Meta allows, black-box: through the intake, a real worker and the sandbox.

Each recipient kind is accepted and sent with the right body; a user who writes back (messaging
or standby) is reachable again; a removed tag in X-Fallback-Tags is skipped; a message outside
the window with X-Utility-Template is sent as that template and reports
``delivered_via: utility:<name>``; a direct utility body is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import RedisServer, Sandbox, Stack, base_env, wait_until

pytestmark = pytest.mark.integration
APP_SECRET = "reach-app-secret-0123456789"
PAGE = "100"


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = base_env(redis_server.url, sandbox.url, APP_SECRET=APP_SECRET, WINDOW_RECHECK_SECONDS="60")
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("reach"))
    s.start_intake()
    s.start_worker()
    yield s
    s.stop()
    sandbox.clear()


def accepted(stack: Stack, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    resp = stack.post(body, headers=headers)
    assert resp.status_code == 202, resp.text
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def final(stack: Stack, delivery_id: str) -> dict[str, Any]:
    stack.wait_final([delivery_id], 30)
    return stack.delivery(delivery_id)


def text(recipient: dict[str, Any]) -> dict[str, Any]:
    return {"recipient": recipient, "messaging_type": "UPDATE", "message": {"text": "hi"}}


@pytest.mark.parametrize(
    ("recipient", "via"),
    [
        ({"phone_number": "+1 212 555 2368"}, "phone_number"),
        ({"user_ref": "cb-" + uuid.uuid4().hex[:8]}, "user_ref"),
        ({"notification_messages_token": "nmt-" + uuid.uuid4().hex[:8]}, "notification_messages_token"),
        ({"one_time_notif_token": "otn-" + uuid.uuid4().hex[:8]}, "one_time_notif_token"),
        ({"comment_id": "1234_" + str(uuid.uuid4().int % 10**8)}, "comment_id"),
    ],
)
def test_every_recipient_kind_is_delivered_with_its_body(
    stack: Stack, recipient: dict[str, Any], via: str
) -> None:
    record = final(stack, accepted(stack, text(recipient)))
    assert (record["status"], record["delivered_via"]) == ("sent", via)
    [call] = stack.sandbox.calls(psid=str(next(iter(recipient.values()))))
    assert call["status"] == 200


def test_a_phone_number_nobody_matches_fails_as_unreachable(stack: Stack) -> None:
    record = final(stack, accepted(stack, text({"phone_number": "+1 212 555 0000"})))
    assert (record["status"], record["error"]["reason"], record["error"]["code"]) == (
        "failed",
        "unreachable",
        100,
    )


def test_a_reaction_is_sent(stack: Stack) -> None:
    psid = "react-" + uuid.uuid4().hex[:8]
    body = {
        "recipient": {"id": psid},
        "sender_action": "react",
        "payload": {"message_id": "m_1", "reaction": "😊"},
    }
    assert final(stack, accepted(stack, body))["status"] == "sent"
    missing = stack.post({"recipient": {"id": psid}, "sender_action": "react"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (422, "invalid_payload")


def signed_webhook(stack: Stack, field: str, psid: str) -> None:
    now = int(time.time() * 1000)
    item = {
        "sender": {"id": psid},
        "recipient": {"id": PAGE},
        "timestamp": now,
        "message": {"mid": f"m_{uuid.uuid4().hex}", "text": "back"},
    }
    body = orjson.dumps({"object": "page", "entry": [{"id": PAGE, "time": now, field: [item]}]})
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("field", ["messaging", "standby"])
def test_a_user_who_writes_back_is_reachable_again(stack: Stack, field: str) -> None:
    psid = f"outside-{field}-{uuid.uuid4().hex[:8]}"
    first = final(stack, accepted(stack, text({"id": psid})))
    assert (first["status"], first["error"]["reason"]) == ("failed", "outside_window")
    second = final(stack, accepted(stack, text({"id": psid})))
    assert second["error"]["reason"] == "outside_window"
    assert len(stack.sandbox.calls(psid=psid)) == 1  # known closed: no doomed second call
    httpx.post(f"{stack.sandbox.url}/__sandbox/window", json={"psid": psid}, timeout=5).raise_for_status()
    signed_webhook(stack, field, psid)
    deadline = time.time() + 20
    while time.time() < deadline:  # the inbound task runs on the worker
        third = final(stack, accepted(stack, text({"id": psid})))
        if third["status"] == "sent":
            break
        time.sleep(0.2)
    assert (third["status"], third["delivered_via"]) == ("sent", "window")


def test_a_removed_tag_in_the_fallback_header_is_skipped(stack: Stack) -> None:
    psid = "outside-tags-" + uuid.uuid4().hex[:8]
    delivery_id = accepted(stack, text({"id": psid}), {"X-Fallback-Tags": "ACCOUNT_UPDATE,HUMAN_AGENT"})
    record = final(stack, delivery_id)
    assert (record["status"], record["delivered_via"], record["delivered_tag"]) == (
        "sent",
        "tag:HUMAN_AGENT",
        "HUMAN_AGENT",
    )
    tags = [call["tag"] for call in stack.sandbox.calls(psid=psid)]
    assert "ACCOUNT_UPDATE" not in tags
    assert any(e["event"] == "intake.fallback_tag_skipped" for e in stack.logs())


def test_outside_the_window_the_utility_template_is_sent(stack: Stack) -> None:
    psid = "outside-utility-" + uuid.uuid4().hex[:8]
    headers = {
        "X-Utility-Template": "order_update; lang=en_US",
        "X-Utility-Parameters": '["Ada", "#4242"]',
        "X-Fallback-Tags": "HUMAN_AGENT",
    }
    record = final(stack, accepted(stack, text({"id": psid}), headers))
    assert (record["status"], record["delivered_via"]) == ("sent", "utility:order_update")
    bodies = [call["body"] for call in stack.sandbox.calls(psid=psid)]
    assert [b["messaging_type"] for b in bodies] == ["UPDATE", "UTILITY"]
    template = bodies[1]["message"]["template"]
    assert (template["name"], template["language"]["code"]) == ("order_update", "en_US")
    assert [p["text"] for p in template["components"][0]["parameters"]] == ["Ada", "#4242"]
    sent_line = [
        e
        for e in stack.logs()
        if e.get("event") == "delivery.sent" and e.get("delivery_id") == record["delivery_id"]
    ]
    assert sent_line[0]["delivered_via"] == "utility:order_update"


def test_a_direct_utility_body_is_sent(stack: Stack) -> None:
    psid = "outside-direct-" + uuid.uuid4().hex[:8]
    body = {
        "recipient": {"id": psid},
        "messaging_type": "UTILITY",
        "message": {
            "template": {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#1"}],
                    }
                ],
            }
        },
    }
    record = final(stack, accepted(stack, body))
    assert (record["status"], record["delivered_via"]) == ("sent", "utility:order_update")


def catalogue_synced(stack: Stack, page: str = PAGE) -> None:
    """The worker syncs every page's catalogue when it starts (TEMPLATE_SYNC_SECONDS)."""
    assert wait_until(lambda: stack.redis().zscore(stack.keys.templates_synced, page) is not None, 20)


def test_the_intake_refuses_a_template_the_catalogue_knows_it_cannot_send(stack: Stack) -> None:
    catalogue_synced(stack)
    body = text({"id": "outside-catalogue-" + uuid.uuid4().hex[:8]})
    before = stack.redis().llen(stack.queue)
    for header, params, code in (
        ("no_such_template", '["a"]', "unknown_utility_template"),
        ("pending_template", '["a", "b"]', "utility_template_parameters"),  # pending passes; not this
        ("order_update", '["only one"]', "utility_template_parameters"),
    ):
        resp = stack.post(body, headers={"X-Utility-Template": header, "X-Utility-Parameters": params})
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, code)
        assert header in resp.json()["error"]["message"]
    assert stack.redis().llen(stack.queue) == before  # nothing enqueued


def test_a_template_paused_after_acceptance_is_skipped_without_a_call(stack: Stack) -> None:
    """Accepted while approved, paused (a webhook event or a sync) before it is sent: the worker
    moves on to the next route without a doomed utility call."""
    catalogue_synced(stack)
    keys = stack.keys
    field = "order_update|en_US"
    raw = stack.redis().hget(keys.templates(PAGE), field)
    headers = {
        "X-Utility-Template": "order_update",
        "X-Utility-Parameters": '["Ada", "#1"]',
        "X-Fallback-Tags": "HUMAN_AGENT",
    }
    # the intake reads the catalogue at most every 5 s: this request leaves "approved" in its
    # cache, so the next one is accepted although the template is paused in between
    accepted(stack, text({"id": "outside-prime-" + uuid.uuid4().hex[:8]}), headers)
    stack.redis().hset(keys.templates(PAGE), field, orjson.dumps({**orjson.loads(raw), "status": "PAUSED"}))
    try:
        psid = "outside-paused-" + uuid.uuid4().hex[:8]
        record = final(stack, accepted(stack, text({"id": psid}), headers))
        assert (record["status"], record["delivered_via"]) == ("sent", "tag:HUMAN_AGENT")
        assert [c["messaging_type"] for c in stack.sandbox.calls(psid=psid)] == ["UPDATE", "MESSAGE_TAG"]
    finally:
        stack.redis().hset(keys.templates(PAGE), field, raw)

"""The pipeline end to end: intake -> Redis -> real Celery worker -> the sandbox Send API."""

from __future__ import annotations

import base64
import json
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import (
    INTAKE_TOKEN,
    PAGE,
    PAGE_TOKEN,
    RedisServer,
    Stack,
    base_env,
    free_port,
    start_process,
    wait_port,
)

pytestmark = pytest.mark.integration


def text(psid: str, msg: str = "hello") -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": msg}}


def test_webhook_ends_sent_in_status_api_and_sandbox(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    stack.start_worker()
    resp = stack.post(text("e2e-1", "hi there"))
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued"
    delivery_id = body["delivery_id"]
    stack.wait_final([delivery_id])
    view = stack.delivery(delivery_id)
    assert view["status"] == "sent"
    assert view["attempts"] == 1
    assert view["page_id"] == PAGE
    assert view["message_id"].startswith("m_")
    calls = stack.sandbox.calls(psid="e2e-1")
    assert len(calls) == 1
    assert calls[0]["body"]["message"]["text"] == "hi there"
    assert calls[0]["message_id"] == view["message_id"]
    logs = stack.logs()
    events = [e["event"] for e in logs if e.get("delivery_id") == delivery_id]
    assert events == ["delivery.sent"]  # one line for a successful call: the outcome
    committed = [e for e in logs if e.get("event") == "intake.committed"]
    assert [e["delivery_ids"] for e in committed] == [[delivery_id]]
    assert committed[0]["count"] == 1
    # no X-Request-Id: none is made up, the delivery id names the request; the outcome keeps none
    assert "request_id" not in stack.record(delivery_id)
    assert [e.get("request_id") for e in logs if e.get("delivery_id") == delivery_id] == [None]

    # the caller's X-Request-Id is kept with its delivery and logged with it
    given = stack.post(text("e2e-2", "hi again"), headers={"X-Request-Id": "braze-req-42"})
    assert given.status_code == 202, given.text
    second = given.json()["delivery_id"]
    assert stack.wait_final([second])[second]["request_id"] == "braze-req-42"
    sent = [e for e in stack.logs() if e.get("delivery_id") == second and e.get("event") == "delivery.sent"]
    assert [e["request_id"] for e in sent] == ["braze-req-42"]


def test_engine_backpressure_never_deadlocks(make_stack: Any) -> None:
    """A worker that may hold only 3 claimed deliveries still sends batches larger than that (such
    a batch goes alone), all of them, each once."""
    stack: Stack = make_stack(ENGINE_MAX_CLAIMED="3", PAGE_ACCESS_TOKENS=json.dumps({PAGE: PAGE_TOKEN}))
    stack.start_intake()
    ids = stack.post_many([("/me/messages", text(f"bp-{i}")) for i in range(60)])
    stack.start_worker(concurrency=4)
    records = stack.wait_final(ids, timeout=60)
    assert sorted(rec["status"] for rec in records.values()) == ["sent"] * 60
    calls = [c for c in stack.sandbox.calls() if c["body"]["recipient"]["id"].startswith("bp-")]
    assert len(calls) == 60
    batches = [e["count"] for e in stack.logs() if e.get("event") == "intake.committed"]
    assert max(batches) > 3  # the scenario happened: batches over the allowance


def test_braze_template_url_forms(make_stack: Any) -> None:
    """/me/messages with the token in the URL (as Braze's template sends it), versionless, page path."""
    stack: Stack = make_stack(PAGE_ACCESS_TOKENS=json.dumps({PAGE: PAGE_TOKEN, "777": "sandbox-token-777"}))
    stack.start_intake()
    stack.start_worker()
    ids = []
    r1 = stack.post(text("url-me"), path="/v2.7/me/messages", params={"access_token": "sandbox-token-777"})
    r2 = stack.post(text("url-plain"), path="/me/messages", params={"page_id": PAGE})
    r3 = stack.post({"recipient": {"id": "url-legacy"}, "message": {"text": "no messaging_type"}})
    for r in (r1, r2, r3):
        assert r.status_code == 202, r.text
        ids.append(r.json()["delivery_id"])
    records = stack.wait_final(ids)
    assert all(rec["status"] == "sent" for rec in records.values())
    # the URL's token selected its page; the record holds the page id, never the token
    assert records[ids[0]]["page_id"] == "777"
    assert "sandbox-token-777" not in str(records[ids[0]])
    assert stack.sandbox.calls(psid="url-me")[0]["page_id"] == "777"
    legacy = stack.sandbox.calls(psid="url-legacy")[0]
    assert legacy["messaging_type"] == "UPDATE"
    # the page token is never in a log line
    assert all("sandbox-token-777" not in str(e) for e in stack.logs())


def test_duplicate_idempotency_key_sends_once(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    stack.start_worker()
    key = "campaign-1:dispatch-9:user-42"
    first = stack.post(text("idem-1"), headers={"Idempotency-Key": key})
    second = stack.post(text("idem-1"), headers={"Idempotency-Key": key})
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["delivery_id"] == first.json()["delivery_id"]
    stack.wait_final([first.json()["delivery_id"]])
    time.sleep(0.5)
    assert len(stack.sandbox.calls(psid="idem-1")) == 1


def _queue_len(stack: Stack) -> int:
    return int(stack.redis().llen(stack.queue))


BAD_INPUTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("bad_json", {"content": b"{not json", "headers": {}}, 400, "invalid_json"),
    ("no_auth", {"content": None, "headers": {"Authorization": ""}}, 401, "unauthorized"),
    (
        "wrong_token",
        {"content": None, "headers": {"Authorization": "Bearer nope-nope-nope"}},
        401,
        "unauthorized",
    ),
    ("too_large", {"content": b'{"a":"' + b"x" * 70_000 + b'"}', "headers": {}}, 413, "body_too_large"),
    ("not_json", {"content": None, "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    (
        "empty_recipient",
        {"body": {"recipient": {"id": ""}, "message": {"text": "x"}}},
        422,
        "missing_recipient",
    ),
    ("no_recipient", {"body": {"message": {"text": "x"}}}, 422, "missing_recipient"),
    ("neither", {"body": {"recipient": {"id": "1"}}}, 422, "invalid_message"),
    (
        "both",
        {"body": {"recipient": {"id": "1"}, "message": {"text": "x"}, "sender_action": "typing_on"}},
        422,
        "invalid_message",
    ),
    (
        "text_2000",
        {"body": {"recipient": {"id": "1"}, "message": {"text": "x" * 2000}}},
        422,
        "text_too_long",
    ),
    (
        "quick_replies_14",
        {
            "body": {
                "recipient": {"id": "1"},
                "message": {
                    "text": "x",
                    "quick_replies": [
                        {"content_type": "text", "title": str(i), "payload": "p"} for i in range(14)
                    ],
                },
            }
        },
        422,
        "too_many_quick_replies",
    ),
    (
        "tag_missing",
        {"body": {"recipient": {"id": "1"}, "messaging_type": "MESSAGE_TAG", "message": {"text": "x"}}},
        422,
        "missing_tag",
    ),
    (
        "no_page_token",
        {"body": {"recipient": {"id": "1"}, "message": {"text": "x"}}, "path": "/v25.0/999/messages"},
        422,
        "no_page_token",
    ),
    (
        "long_idem_key",
        {
            "body": {"recipient": {"id": "1"}, "message": {"text": "x"}},
            "headers": {"Idempotency-Key": "k" * 256},
        },
        422,
        "invalid_idempotency_key",
    ),
]


def test_bad_input_gets_4xx_and_enqueues_nothing(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    client = stack.redis()

    def own_keys() -> (
        int
    ):  # what this intake could write: its prefix (the shared Redis has others, with TTLs)
        return len(client.keys(f"{stack.prefix}:*"))

    for name, spec, status, code in BAD_INPUTS:
        before_keys = own_keys()
        before_queue = _queue_len(stack)
        body = spec.get("body", {"recipient": {"id": "1"}, "message": {"text": "x"}})
        content = spec.get("content") or httpx.Request("POST", "/", json=body).content
        resp = stack.post(content, path=spec.get("path"), headers=spec.get("headers"))
        assert resp.status_code == status, (name, resp.text)
        assert resp.json()["error"]["code"] == code, name
        assert resp.headers["content-type"].startswith("application/json")
        assert _queue_len(stack) == before_queue, name
        assert own_keys() == before_keys, name


def test_redis_down_answers_503_with_retry_after(own_redis: RedisServer, make_stack: Any) -> None:
    stack: Stack = make_stack(redis_url=own_redis.url)
    stack.start_intake()
    assert stack.post(text("before-outage")).status_code == 202
    own_redis.stop()
    resp = stack.post(text("during-outage"))
    assert resp.status_code == 503
    assert resp.headers["retry-after"].isdigit()
    assert resp.json()["error"]["code"] == "unavailable"
    ready = httpx.get(f"{stack.intake_url}/readyz", timeout=10)
    assert ready.status_code == 503
    own_redis.start()
    assert stack.post(text("after-outage")).status_code == 202


def test_status_api_auth_and_unknown(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    assert httpx.get(f"{stack.intake_url}/v1/deliveries/abc", timeout=10).status_code == 401
    resp = httpx.get(
        f"{stack.intake_url}/v1/deliveries/abc",
        headers={"Authorization": f"Bearer {INTAKE_TOKEN}"},
        timeout=10,
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{stack.intake_url}/healthz", timeout=10).json() == {"ok": True}
    spec = httpx.get(f"{stack.intake_url}/openapi.json", timeout=10).json()
    assert "/{version}/{page_id}/messages" in spec["paths"]


def test_killed_worker_loses_nothing(make_stack: Any) -> None:
    """SIGKILL a worker mid-run: every accepted message still reaches a final state."""
    stack: Stack = make_stack(WORKER_MAX_INFLIGHT="20")
    stack.start_intake()
    stack.sandbox.set_latency(200)
    try:
        victim = stack.start_worker(concurrency=2, name="victim")
        ids = []
        for i in range(120):
            r = stack.post(text(f"kill-{i}"))
            assert r.status_code == 202
            ids.append(r.json()["delivery_id"])
        assert wait_until_some_sent(stack, ids), victim.tail()
        victim.stop(signal.SIGKILL)
        stack.start_worker(concurrency=4, name="rescuer")
        records = stack.wait_final(ids, timeout=60)
    finally:
        stack.sandbox.set_latency(0)
    assert {r["status"] for r in records.values()} == {"sent"}
    sent_psids = [
        c["psid"] for c in stack.sandbox.calls() if str(c["psid"]).startswith("kill-") and c["status"] == 200
    ]
    duplicates = len(sent_psids) - len(set(sent_psids))
    assert set(sent_psids) == {f"kill-{i}" for i in range(120)}
    # duplicates can only come from sends in flight when the worker died (at most its in-flight cap)
    assert duplicates <= 20


def wait_until_some_sent(stack: Stack, ids: list[str]) -> bool:
    from tests.conftest import wait_until

    return wait_until(lambda: sum(stack.record(i).get("status") == "sent" for i in ids[:40]) >= 5, 30)


def test_intake_refuses_to_start_without_tokens(tmp_path: Any, redis_server: RedisServer) -> None:
    env = base_env(redis_server.url, "http://127.0.0.1:9", INTAKE_TOKENS="")
    port = free_port()
    proc = start_process("intake", ["intake", "--port", str(port)], env, tmp_path)
    assert proc.proc.wait(timeout=30) != 0
    assert "INTAKE_TOKENS" in proc.tail()
    proc2 = start_process("intake", ["intake", "--port", str(port), "--insecure-no-auth"], env, tmp_path)
    try:
        assert wait_port(port)
    finally:
        proc2.stop()


def test_metrics_exported_by_intake_and_worker(make_stack: Any) -> None:
    port = free_port()
    stack: Stack = make_stack(METRICS_PORT=str(port))
    stack.start_intake()
    stack.start_worker()
    delivery_id = stack.post(text("metrics-1")).json()["delivery_id"]
    bad = stack.post(b"{nope")
    assert bad.status_code == 400
    stack.wait_final([delivery_id])
    intake = httpx.get(stack.intake_metrics_url, timeout=10).text
    assert 'bmw_intake_requests_total{route="send",status="202"} 1.0' in intake
    assert 'bmw_intake_requests_total{route="send",status="400"} 1.0' in intake
    for name in ("bmw_queue_depth", "bmw_oldest_open_age_seconds", "bmw_dead_letters", "bmw_redis_up 1.0"):
        assert name in intake
    worker = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert (
        'bmw_deliveries_total{error_code="none",error_subcode="none",outcome="sent",page_id="100",reason="none"} 1.0'
        in worker
    )
    assert "bmw_graph_request_seconds_count 1.0" in worker
    assert "bmw_accept_to_send_seconds_count 1.0" in worker
    assert INTAKE_TOKEN not in intake + worker
    assert "sandbox-token" not in intake + worker


def test_gathered_batch_lost_message_or_second_copy_sends_each_once(make_stack: Any) -> None:
    """A backlog posted before any worker runs travels in gathered batches (worker.deliver_batch).
    A batch whose message is lost (a worker killed with it, a consumer that could not acknowledge)
    still has its entry in pending: once the queue has drained, the sweeper (SWEEP_AFTER_SECONDS=3
    here) takes its list and re-enqueues its deliveries, each sent exactly once. A second copy of
    a message claims nothing and does not fail."""
    stack: Stack = make_stack()
    stack.start_intake()
    client = stack.redis()
    ids = []
    for half in (range(30), range(30, 60)):
        ids += stack.post_many([(f"/v25.0/{PAGE}/messages", text(f"gb-{i}")) for i in half], concurrency=8)
        client.delete(stack.keys.gather)  # the next commit starts a batch of its own
    queued = client.lrange(stack.queue, 0, -1)
    assert 2 <= len(queued) < 60  # gathered: fewer messages than deliveries
    lists = client.keys(f"{stack.prefix}:batch:*")
    assert sum(client.llen(k) for k in lists) == 60
    lost_message = queued[0]  # the newest: its batch's message is lost
    lost = f"{stack.prefix}:batch:{json.loads(base64.b64decode(json.loads(lost_message)['body']))[0][0]}"
    lost_ids = {i.decode() for i in client.lrange(lost, 0, -1)}
    assert lost_ids
    client.lrem(stack.queue, 1, lost_message)
    client.lpush(stack.queue, queued[-1])  # and the oldest message is queued twice
    stack.start_worker()
    records = stack.wait_final(ids, timeout=60)
    assert {r["status"] for r in records.values()} == {"sent"}
    calls = [c for c in stack.sandbox.calls(page_id=PAGE) if c["psid"].startswith("gb-")]
    assert sorted(c["psid"] for c in calls) == sorted(f"gb-{i}" for i in range(60))  # each once
    swept = {i for i in lost_ids if float(records[i]["updated_at"]) - float(records[i]["created_at"]) >= 3}
    assert swept == lost_ids  # the lost message's deliveries went after the sweep deadline
    assert any(e.get("event") == "scheduler.swept" for e in stack.logs())
    assert not any(e.get("event") == "engine.batch_failed" for e in stack.logs())

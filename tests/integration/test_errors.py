"""Every class of Graph answer, with a real worker against the sandbox: calls, statuses, logs."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_HEADERS, INTAKE_TOKEN, RedisServer, Sandbox, Stack, base_env, wait_until
from worker.states import State

pytestmark = pytest.mark.integration
APP_SECRET = "errors-app-secret-0123456789"


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = base_env(
        redis_server.url,
        sandbox.url,
        TOKEN_PAUSE_SECONDS="600",
        RESTRICTED_PAUSE_SECONDS="600",
        APP_SECRET=APP_SECRET,  # set, so that the secrets check below looks for a secret in use
    )
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("errors"))
    s.start_intake()
    s.start_worker()
    yield s
    s.stop()
    sandbox.clear()


def send(
    stack: Stack, psid: str, *, page: str | None = None, tag: str | None = None, fallback: str | None = None
) -> str:
    body: dict[str, Any] = {"recipient": {"id": psid}, "message": {"text": "hi"}}
    body["messaging_type"] = "MESSAGE_TAG" if tag else "UPDATE"
    if tag:
        body["tag"] = tag
    headers = {"X-Fallback-Tags": fallback} if fallback else None
    path = f"/v25.0/{page}/messages" if page else None
    params = {"access_token": f"sandbox-token-{page}"} if page else None
    resp = stack.post(body, path=path, headers=headers, params=params)
    assert resp.status_code == 202, resp.text
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def final(stack: Stack, delivery_id: str, timeout: float = 30) -> dict[str, Any]:
    stack.wait_final([delivery_id], timeout)
    return stack.delivery(delivery_id)


def calls(stack: Stack, psid: str) -> list[dict[str, Any]]:
    return stack.sandbox.calls(psid=psid)


def events(stack: Stack, delivery_id: str) -> list[str]:
    return [e["event"] for e in stack.logs() if e.get("delivery_id") == delivery_id]


def test_unreachable_fails_once_and_suppresses(stack: Stack) -> None:
    first = final(stack, send(stack, "err-551-u1"))
    assert first["status"] == "failed"
    assert first["error"]["code"] == 551
    assert first["error"]["reason"] == "unreachable"
    assert len(calls(stack, "err-551-u1")) == 1
    second = final(stack, send(stack, "err-551-u1"))
    assert second["status"] == "failed"
    assert second["error"]["reason"] == "suppressed"
    assert second["attempts"] == 0
    assert len(calls(stack, "err-551-u1")) == 1  # no Graph call for a suppressed PSID
    for psid, code in (("err-200_1545041-u2", 200), ("err-10_2018108-u3", 10), ("err-100_2018001-u4", 100)):
        view = final(stack, send(stack, psid))
        assert (view["status"], view["error"]["code"], view["error"]["reason"]) == (
            "failed",
            code,
            "unreachable",
        )
        assert len(calls(stack, psid)) == 1


def test_window_closed_without_fallback_fails_after_one_call(stack: Stack) -> None:
    delivery_id = send(stack, "outside-w1")
    view = final(stack, delivery_id)
    assert view["status"] == "failed"
    assert view["error"]["reason"] == "outside_window"
    assert view["error"]["subcode"] == 2018278
    assert len(calls(stack, "outside-w1")) == 1
    assert "delivery.failed" in events(stack, delivery_id)


def test_window_closed_falls_back_to_tag(stack: Stack) -> None:
    view = final(stack, send(stack, "outside-w2", fallback="HUMAN_AGENT"))
    assert view["status"] == "sent"
    assert view["delivered_tag"] == "HUMAN_AGENT"
    made = calls(stack, "outside-w2")
    assert [c["tag"] for c in made] == [None, "HUMAN_AGENT"]
    assert made[1]["messaging_type"] == "MESSAGE_TAG"


def test_deprecated_tag_is_stripped_then_fallback(stack: Stack) -> None:
    view = final(stack, send(stack, "outside-w3", tag="ACCOUNT_UPDATE", fallback="HUMAN_AGENT"))
    assert view["status"] == "sent"
    made = calls(stack, "outside-w3")
    assert [(c["messaging_type"], c["tag"]) for c in made] == [
        ("UPDATE", None),
        ("MESSAGE_TAG", "HUMAN_AGENT"),
    ]
    assert all(c["tag"] != "ACCOUNT_UPDATE" for c in made)


def test_tag_rejected_moves_on_never_loops(stack: Stack) -> None:
    """err-100 'Invalid tag.'-style rejection on every tag: each tag tried once, then outside_window."""
    view = final(stack, send(stack, "err-10_2018278-w4", fallback="HUMAN_AGENT,CUSTOMER_FEEDBACK"))
    assert view["status"] == "failed"
    assert view["error"]["reason"] == "outside_window"
    made = calls(stack, "err-10_2018278-w4")
    assert [c["tag"] for c in made] == [None, "HUMAN_AGENT", "CUSTOMER_FEEDBACK"]


def test_tag_abuse_fails_and_suppresses_tagged_sends(stack: Stack) -> None:
    view = final(stack, send(stack, "err-613_2018338-a1", tag="HUMAN_AGENT"))
    assert (view["status"], view["error"]["reason"]) == ("failed", "tag_abuse")
    assert len(calls(stack, "err-613_2018338-a1")) == 1
    again = final(stack, send(stack, "err-613_2018338-a1", tag="HUMAN_AGENT"))
    assert (again["status"], again["error"]["reason"]) == ("failed", "tag_suppressed")
    assert len(calls(stack, "err-613_2018338-a1")) == 1


def test_transient_retries_then_sends(stack: Stack) -> None:
    view = final(stack, send(stack, "flaky2-2-t1"))
    assert view["status"] == "sent"
    assert view["attempts"] == 3
    assert len(calls(stack, "flaky2-2-t1")) == 3
    view = final(stack, send(stack, "flaky1-1200-t2"))
    assert (view["status"], view["attempts"]) == ("sent", 2)


def test_transient_exhausts_attempts_to_dead_letter_and_replay(stack: Stack) -> None:
    for psid in ("http5xx-d1", "err-2-d2", "drop-d3"):
        view = final(stack, send(stack, psid))
        assert view["status"] == "dead", psid
        assert view["attempts"] == 3  # MAX_ATTEMPTS=3 in the test env
        assert len(calls(stack, psid)) == 3
    ambiguous = [
        e for e in stack.logs() if e.get("event") == "delivery.attempt" and e.get("possible_duplicate")
    ]
    assert ambiguous, "dropped connections are logged as possible duplicates"
    sender = httpx.get(  # the token in every Braze template cannot see or act on dead letters
        f"{stack.intake_url}/v1/dead-letters", headers={"Authorization": f"Bearer {INTAKE_TOKEN}"}, timeout=10
    )
    assert (sender.status_code, sender.json()["error"]["code"]) == (403, "forbidden")
    headers = ADMIN_HEADERS
    listed = httpx.get(
        f"{stack.intake_url}/v1/dead-letters", headers=headers, params={"code": "2"}, timeout=10
    ).json()
    assert [d["error"]["code"] for d in listed["dead_letters"]] == [2]
    dead_id = listed["dead_letters"][0]["delivery_id"]
    replay = httpx.post(
        f"{stack.intake_url}/v1/dead-letters/replay",
        headers=headers,
        json={"delivery_ids": [dead_id]},
        timeout=10,
    ).json()
    assert replay["replayed"] == [dead_id]
    again = httpx.post(
        f"{stack.intake_url}/v1/dead-letters/replay",
        headers=headers,
        json={"delivery_ids": [dead_id]},
        timeout=10,
    ).json()
    assert again["replayed"] == []  # safe to run twice
    view = final(stack, dead_id)
    assert view["status"] == "dead"
    assert view["attempts"] == 3  # attempts were reset by the replay, then used up again
    # a body says what it selects: a misspelt filter was read as none and purged every letter
    purge = f"{stack.intake_url}/v1/dead-letters/purge"
    for body in ({"page_idd": "9"}, {}, {"page_id": ""}):
        refused = httpx.post(purge, headers=headers, json=body, timeout=10)
        assert refused.status_code == 422, body
    dry = httpx.post(purge, headers=headers, json={"all": True, "dry_run": True}, timeout=10).json()
    kept = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=headers, timeout=10).json()
    assert dry["would_purge"] == len(dry["delivery_ids"]) == kept["count"] >= 3  # none purged
    assert dead_id in dry["delivery_ids"]
    assert len(calls(stack, "err-2-d2")) == 6


def test_rate_limited_waits_without_burning_attempts(stack: Stack) -> None:
    delivery_id = send(stack, "flaky3-80006-r1", page="401")
    view = final(stack, delivery_id)
    assert view["status"] == "sent"
    assert view["attempts"] == 4  # 3 throttled calls + 1 success, though MAX_ATTEMPTS is 3
    rec = stack.record(delivery_id)
    assert int(rec.get("failures") or 0) == 0  # none burnt (an outcome keeps no 0: the default)
    paused = [
        e for e in stack.logs() if e.get("event") == "page.paused" and e.get("reason") == "rate_limited"
    ]
    assert paused


def test_permanent_error_fails_with_error_recorded(stack: Stack) -> None:
    view = final(stack, send(stack, "err-100_2018047-p1"))
    assert view["status"] == "failed"
    assert (view["error"]["code"], view["error"]["subcode"]) == (100, 2018047)
    assert view["error"]["fbtrace_id"]
    assert len(calls(stack, "err-100_2018047-p1")) == 1


def test_token_invalid_pauses_page_until_resumed(stack: Stack) -> None:
    page = "402"
    stack.sandbox.fault(page, 190, 460, count=1)
    first = send(stack, "tok-1", page=page)
    assert wait_until(lambda: stack.record(first).get("status") == State.SCHEDULED, 20)  # a wait, not a retry
    second = send(stack, "tok-2", page=page)
    assert wait_until(lambda: "page_paused" in stack.record(second).get("error", ""), 20)
    assert len(calls(stack, "tok-2")) == 0  # waits behind the pause: no Graph call
    assert any(e.get("event") == "page.paused" and e.get("page_id") == page for e in stack.logs())
    out = stack.cli("pages", "resume", page)
    assert orjson.loads(out.stdout.splitlines()[-1])["released"] == 2
    assert final(stack, first)["status"] == "sent"
    assert final(stack, second)["status"] == "sent"
    assert len(calls(stack, "tok-1")) == 2
    assert len(calls(stack, "tok-2")) == 1


def test_a_token_invalid_pause_lifts_when_the_page_gets_a_new_token(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """docs/error-handling.md: a token-invalid pause is "lifted when the page's token changes
    (the tokens file is read again ...)". The tokens file gives the page the sandbox's always-expired token (a real 190 pauses it),
    then a good one: the scheduler's housekeeping resumes the page and its waits are released
    by its next round, not an idle wait later (SCHEDULER_IDLE_SECONDS is 3 here)."""
    page = "406"
    work = tmp_path_factory.mktemp("newtoken")
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps({page: f"sandbox-token-expired-{page}"}), encoding="utf-8")
    env = base_env(
        redis_server.url,
        sandbox.url,
        PAGE_ACCESS_TOKENS=str(tokens),
        TOKEN_PAUSE_SECONDS="600",
        DELIVERY_LEASE_SECONDS="60",
        SCHEDULER_IDLE_SECONDS="3",
    )
    s = Stack(env, sandbox, redis_server.url, work)
    try:
        s.start_intake()
        s.start_worker()

        def post(psid: str) -> str:
            body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
            resp = s.post(body, path=f"/v25.0/{page}/messages")
            assert resp.status_code == 202, resp.text
            delivery_id: str = resp.json()["delivery_id"]
            return delivery_id

        first = post("newtok-1")
        assert wait_until(lambda: s.redis().exists(s.keys.pause(page)), 20)
        second = post("newtok-2")
        assert wait_until(lambda: "page_paused" in s.record(second).get("error", ""), 20)
        time.sleep(4)  # the scheduler settles into its idle rounds
        assert calls(s, "newtok-2") == []
        tokens.write_text(json.dumps({page: f"sandbox-token-{page}"}), encoding="utf-8")
        records = s.wait_final([first, second], 30)
        assert {r["status"] for r in records.values()} == {"sent"}
        resumed = [e for e in s.logs() if e.get("event") == "page.resumed" and e.get("page_id") == page]
        assert [e["reason"] for e in resumed] == ["token_replaced"]
        lifted = datetime.fromisoformat(resumed[0]["timestamp"]).timestamp()
        sent = [c["at"] for c in calls(s, "newtok-2") if c["status"] == 200]
        assert len(sent) == 1
        assert sent[0] - lifted < 1.0, sent[0] - lifted  # a round (0.1 s) and the send, not 3 s
        assert not s.redis().exists(s.keys.pause(page))
    finally:
        s.stop()


def test_page_restricted_pauses_page(stack: Stack) -> None:
    page = "403"
    stack.sandbox.fault(page, 368, None, count=1)
    delivery_id = send(stack, "res-1", page=page)
    assert wait_until(lambda: "page_restricted" in stack.record(delivery_id).get("error", ""), 20)
    rec = stack.record(delivery_id)
    assert rec["status"] == State.SCHEDULED
    assert float(rec["not_before"]) > time.time() + 500  # RESTRICTED_PAUSE_SECONDS=600
    assert stack.redis().exists(stack.keys.pause(page))


def waiting(rec: dict[str, str]) -> bool:
    return rec.get("status") == State.SCHEDULED and float(rec.get("not_before") or 0) > time.time()


def test_scheduled_waits_survive_worker_restart(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = base_env(redis_server.url, sandbox.url, TOKEN_PAUSE_SECONDS="600")
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("restart"))
    try:
        s.start_intake()
        worker = s.start_worker()
        page = "404"
        sandbox.fault(page, 190, None)  # every send for the page fails until cleared
        ids = [send(s, f"restart-{i}", page=page) for i in range(5)]
        # waiting behind the paused page (got the 190, or deferred by the limiter): scheduled
        assert wait_until(lambda: all(waiting(s.record(i)) for i in ids), 20)
        worker.stop(signal.SIGKILL)
        s.start_worker(name="second")
        time.sleep(1.0)
        assert all(s.record(i)["status"] == State.SCHEDULED for i in ids)  # still waiting, not lost
        sandbox.clear_faults(page)
        s.cli("pages", "resume", page)
        records = s.wait_final(ids)
        assert {r["status"] for r in records.values()} == {"sent"}
        for i in range(5):
            sent = [c for c in sandbox.calls(psid=f"restart-{i}") if c["status"] == 200]
            assert len(sent) == 1  # neither lost nor duplicated
        assert s.redis().zcard(s.keys.sched) == 0
    finally:
        s.stop()


def test_deprecated_tag_reject_policy(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = base_env(redis_server.url, sandbox.url, DEPRECATED_TAG_POLICY="reject")
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("reject"))
    try:
        s.start_intake()
        resp = s.post(
            {
                "recipient": {"id": "x"},
                "messaging_type": "MESSAGE_TAG",
                "tag": "POST_PURCHASE_UPDATE",
                "message": {"text": "receipt"},
            }
        )
        assert resp.status_code == 422
        err = resp.json()["error"]
        assert err["code"] == "deprecated_tag"
        assert "POST_PURCHASE_UPDATE" in err["message"]
        assert "2026-04-27" in err["message"]
        assert s.redis().llen(s.queue) == 0
    finally:
        s.stop()


def test_status_shows_the_health_row(stack: Stack) -> None:
    out = stack.cli("status", "--json")
    status = orjson.loads(out.stdout)
    assert status["sent_per_s"] > 0
    assert 0 < status["failure_ratio"] < 1  # this module's stack failed and sent messages
    assert status["dead_letters"] >= 1
    assert {"queue_depth", "scheduled", "open", "oldest_open_age_s", "paused", "pages"} <= set(status)
    assert any(p["page_id"] == "403" for p in status["paused"])  # restricted in an earlier test


def test_secrets_absent_from_logs(stack: Stack) -> None:
    delivery_id = send(stack, "secrets-proof")
    assert stack.wait_final([delivery_id])[delivery_id]["status"] == "sent"
    # the app secret is in use: the worker's calls carry its proof
    assert [c["appsecret_proof"] for c in stack.sandbox.calls(psid="secrets-proof")] == [True]
    text = "\n".join(p.log.read_text(encoding="utf-8", errors="replace") for p in stack.procs)
    assert "sandbox-token-100" not in text
    assert INTAKE_TOKEN not in text
    assert APP_SECRET not in text

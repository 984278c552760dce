"""Issue 16, black-box, through the intake, a real worker, redis-server and the sandbox: messages
of two campaigns flowing; one stopped mid-flight; none of its open messages reaches Graph after
the stop's window, the other untouched, the counters add up; delivery and read receipts for sent
messages show in the status API and the counters; nothing unbounded in /metrics."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urljoin

import httpx
import orjson
import pytest

from tests.conftest import (
    ADMIN_HEADERS,
    ADMIN_TOKEN,
    INTAKE_TOKEN,
    PAGE,
    PY,
    RedisServer,
    Sandbox,
    Stack,
    base_env,
    wait_until,
)
from worker.states import State

pytestmark = pytest.mark.integration
APP_SECRET = "campaigns-app-secret-0123456789"
PER_CAMPAIGN = 120
#: The workers read the stops every 0.5 s; a call started before that may still be answered.
STOP_WINDOW_SECONDS = 2.0


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # 25 calls/s for the page: the two campaigns take a few seconds, so a stop lands mid-flight
    env = base_env(redis_server.url, sandbox.url, APP_SECRET=APP_SECRET, PAGE_RATE_LIMIT="25")
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("campaigns"))
    s.start_intake()
    s.start_worker()
    yield s
    s.stop()


def admin(stack: Stack, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.intake_url}{path}", headers=ADMIN_HEADERS, timeout=30, **kw)


def body(psid: str) -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}


def post(stack: Stack, psid: str, campaign: str) -> httpx.Response:
    return stack.post(body(psid), headers={"X-Braze-Campaign-Id": campaign, "X-Braze-Send-Id": "s1"})


def post_many(stack: Stack, items: list[tuple[str, str]]) -> list[str]:
    """POST them concurrently (as Braze does); the delivery ids in order."""
    import asyncio

    async def main() -> list[str]:
        sem = asyncio.Semaphore(16)
        headers = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
        async with httpx.AsyncClient(base_url=stack.intake_url, headers=headers, timeout=30) as client:

            async def one(psid: str, camp: str) -> str:
                async with sem:
                    resp = await client.post(
                        f"/v25.0/{PAGE}/messages",
                        json=body(psid),
                        headers={"X-Braze-Campaign-Id": camp, "X-Braze-Send-Id": "s1"},
                    )
                    assert resp.status_code == 202, resp.text
                    delivery_id: str = resp.json()["delivery_id"]
                    return delivery_id

            return list(await asyncio.gather(*(one(p, c) for p, c in items)))

    return asyncio.run(main())


def sandbox_sends(stack: Stack, prefix: str) -> list[dict[str, Any]]:
    return [c for c in stack.sandbox.calls(page_id=PAGE) if (c["psid"] or "").startswith(prefix)]


def webhook(stack: Stack, items: list[dict[str, Any]]) -> None:
    raw = orjson.dumps(
        {"object": "page", "entry": [{"id": PAGE, "time": int(time.time() * 1000), "messaging": items}]}
    )
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def add_up(view: dict[str, Any]) -> None:
    ended = sum(view[k] for k in ("sent", "failed", "expired", "dead", "cancelled"))
    assert view["accepted"] == ended + view["open"], view


def test_a_stopped_campaign_sends_nothing_more_the_other_is_untouched_and_receipts_count(
    stack: Stack,
) -> None:
    run = uuid.uuid4().hex[:6]
    camp_a, camp_b = f"camp-a-{run}", f"camp-b-{run}"
    bodies = []
    for i in range(PER_CAMPAIGN):  # interleaved, as two campaigns running at once
        bodies += [(f"a{run}-{i}", camp_a), (f"b{run}-{i}", camp_b)]
    ids: dict[str, list[str]] = {camp_a: [], camp_b: []}
    posted = post_many(stack, bodies)
    for (_psid, camp), delivery_id in zip(bodies, posted, strict=True):
        ids[camp].append(delivery_id)

    # campaign A is stopped once some of it went out
    assert wait_until(lambda: len(sandbox_sends(stack, f"a{run}-")) >= 10, 30)
    resp = admin(stack, "POST", f"/v1/campaigns/{camp_a}/stop")
    assert resp.status_code == 200, resp.text
    assert resp.json()["stopped"] is True
    assert resp.json()["cancelled"] > 0
    assert resp.json()["known"] is True
    time.sleep(STOP_WINDOW_SECONDS)
    after_window = len(sandbox_sends(stack, f"a{run}-"))

    # a new request of the stopped campaign: 200 cancelled (Braze does not retry a 2xx)
    late = post(stack, f"a{run}-late", camp_a)
    assert late.status_code == 200, late.text
    assert late.json()["status"] == State.CANCELLED.value
    assert stack.delivery(late.json()["delivery_id"])["status"] == State.CANCELLED.value

    records = stack.wait_final(ids[camp_a] + ids[camp_b], timeout=60)
    # nothing of A reached Graph after the window; everything of B did, once
    a_calls = sandbox_sends(stack, f"a{run}-")
    assert len(a_calls) == after_window
    assert len({c["psid"] for c in sandbox_sends(stack, f"b{run}-")}) == PER_CAMPAIGN
    a_status = [records[i]["status"] for i in ids[camp_a]]
    assert set(a_status) <= {State.SENT.value, State.CANCELLED.value}
    assert a_status.count(State.SENT.value) == len({c["psid"] for c in a_calls if c["status"] == 200})
    assert all(records[i]["status"] == State.SENT.value for i in ids[camp_b])

    # the counters add up, per campaign
    view_a = admin(stack, "GET", f"/v1/campaigns/{camp_a}").json()
    view_b = admin(stack, "GET", f"/v1/campaigns/{camp_b}").json()
    assert view_a["accepted"] == PER_CAMPAIGN + 1  # the late one counts, cancelled
    assert view_a["sent"] == a_status.count(State.SENT.value)
    assert view_a["cancelled"] == a_status.count(State.CANCELLED.value) + 1
    assert view_a["stopped"] is True
    assert view_a["sent_after_stop"] <= view_a["sent"]
    assert (view_b["accepted"], view_b["sent"], view_b["cancelled"], view_b["stopped"]) == (
        PER_CAMPAIGN,
        PER_CAMPAIGN,
        0,
        False,
    )
    for view in (view_a, view_b):
        assert view["open"] == 0
        add_up(view)
    listed = {c["campaign_id"] for c in admin(stack, "GET", "/v1/campaigns").json()["campaigns"]}
    assert {camp_a, camp_b} <= listed
    view = stack.delivery(ids[camp_b][0])
    assert (view["campaign_id"], view["send_id"]) == (camp_b, "s1")

    # resume: A's new requests are queued again
    assert admin(stack, "POST", f"/v1/campaigns/{camp_a}/resume").json()["resumed"] is True
    again = post(stack, f"a{run}-again", camp_a)
    assert again.status_code == 202, again.text
    assert stack.wait_final([again.json()["delivery_id"]])[again.json()["delivery_id"]]["status"] == "sent"

    # receipts: B's first message delivered by mid, its first ten read by watermark
    first = stack.record(ids[camp_b][0])
    now_ms = int(time.time() * 1000)
    webhook(
        stack,
        [
            {
                "sender": {"id": f"b{run}-0"},
                "recipient": {"id": PAGE},
                "timestamp": now_ms,
                "delivery": {"mids": [first["message_id"]], "watermark": now_ms},
            },
            *(
                {
                    "sender": {"id": f"b{run}-{i}"},
                    "recipient": {"id": PAGE},
                    "timestamp": now_ms,
                    "read": {"watermark": now_ms},
                }
                for i in range(10)
            ),
        ],
    )
    assert wait_until(lambda: admin(stack, "GET", f"/v1/campaigns/{camp_b}").json()["read"] == 10, 20)
    view_b = admin(stack, "GET", f"/v1/campaigns/{camp_b}").json()
    assert view_b["delivered"] == 10  # a read message was delivered
    shown = stack.delivery(ids[camp_b][0])
    assert shown["delivered_at"] <= shown["read_at"] <= time.time() + 1
    assert "read_at" not in stack.delivery(ids[camp_b][10])
    # a delivery receipt by mid alone (no watermark): found among that recipient's unread sends
    eleventh = stack.record(ids[camp_b][11])
    webhook(
        stack,
        [
            {
                "sender": {"id": f"b{run}-12"},
                "recipient": {"id": PAGE},
                "delivery": {"mids": [eleventh["message_id"]]},
            },
            {
                "sender": {"id": f"b{run}-11"},
                "recipient": {"id": PAGE},
                "delivery": {"mids": [eleventh["message_id"]]},
            },
        ],
    )
    assert wait_until(lambda: "delivered_at" in stack.delivery(ids[camp_b][11]), 20)
    assert "delivered_at" not in stack.delivery(ids[camp_b][12])  # another recipient's: not its mid
    # a replayed webhook changes nothing
    webhook(
        stack, [{"sender": {"id": f"b{run}-0"}, "recipient": {"id": PAGE}, "read": {"watermark": now_ms}}]
    )
    time.sleep(1)
    assert admin(stack, "GET", f"/v1/campaigns/{camp_b}").json()["read"] == 10

    # the CLI reads the same counters (the service functions the API and the console call)
    assert (
        orjson.loads(stack.cli("campaigns", "show", camp_b).stdout)
        == admin(stack, "GET", f"/v1/campaigns/{camp_b}").json()
    )
    assert camp_a in {c["campaign_id"] for c in orjson.loads(stack.cli("campaigns", "list").stdout)}

    # nothing unbounded in /metrics: no campaign label, no campaign id
    metrics = httpx.get(stack.intake_metrics_url, timeout=10).text
    assert not re.search(r"[{,](campaign|canvas)[a-z_]*=", metrics)
    assert camp_a not in metrics
    assert camp_b not in metrics


def test_cancel_one_delivery_pause_a_page_and_purge_the_queue(stack: Stack) -> None:
    run = uuid.uuid4().hex[:6]
    page = "777"
    resp = admin(stack, "POST", f"/v1/pages/{page}/pause")
    assert resp.status_code == 200, resp.text
    path = f"/v25.0/{page}/messages"
    posted = [stack.post(body(f"p{run}-{i}"), path=path) for i in range(3)]
    held = [r.json()["delivery_id"] for r in posted]
    assert wait_until(lambda: stack.record(held[0]).get("status") == State.SCHEDULED.value, 20)
    cancel = admin(stack, "POST", f"/v1/deliveries/{held[0]}/cancel")
    assert cancel.json() == {"delivery_id": held[0], "cancelled": True, "status": State.CANCELLED.value}
    assert admin(stack, "POST", f"/v1/deliveries/{held[0]}/cancel").json()["cancelled"] is False
    assert admin(stack, "POST", "/v1/deliveries/nope/cancel").status_code == 404
    assert admin(stack, "POST", f"/v1/pages/{page}/resume").json()["released"] >= 1
    records = stack.wait_final(held, 30)
    assert [records[i]["status"] for i in held] == ["cancelled", "sent", "sent"]
    assert not [c for c in stack.sandbox.calls(page_id=page) if c["psid"] == f"p{run}-0"]

    # queue purge: with no worker, queued messages are cancelled and the gather pointer cleared
    worker = next(p for p in stack.procs if p.name == "worker")
    worker.stop()
    try:
        queued = [stack.post(body(f"q{run}-{i}")).json()["delivery_id"] for i in range(5)]
        out = orjson.loads(stack.cli("queue", "purge", "--yes").stdout)
        assert out["cancelled"] == 5
        assert {stack.record(i)["status"] for i in queued} == {State.CANCELLED.value}
        redis = stack.redis()
        assert redis.llen(stack.queue) == 0
        assert not redis.exists(stack.keys.gather)
    finally:
        stack.start_worker()
    after = stack.post(body(f"q{run}-after")).json()["delivery_id"]
    assert stack.wait_final([after], 30)[after]["status"] == State.SENT.value
    # cancelled one by one, by a page's resume and by a purge: none is left counted as a backlog
    redis = stack.redis()
    assert wait_until(lambda: redis.zcard(stack.keys.pending) == 0, 30)
    assert redis.hgetall(stack.keys.open_counts) == {}
    assert redis.zcard(stack.keys.open_seconds) == 0
    assert int(redis.get(stack.keys.open_total) or 0) == 0
    assert not redis.keys(f"{stack.keys.batch_prefix}*")  # batch lists and taken ones are gone
    for i in queued:
        assert not [c for c in stack.sandbox.calls(page_id=PAGE) if c["psid"] == f"q{run}-{queued.index(i)}"]


def console(stack: Stack) -> tuple[httpx.Client, str]:
    """A client signed in to the console (its cookie is Secure: carried by hand over http) and
    the session's CSRF token."""
    login = httpx.post(f"{stack.intake_url}/console/login", data={"token": ADMIN_TOKEN}, timeout=30)
    assert login.status_code == 303, login.text
    cookie = login.headers["set-cookie"].split(";")[0]
    client = httpx.Client(base_url=stack.intake_url, headers={"Cookie": cookie}, timeout=30)
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/campaigns").text)
    assert found is not None
    return client, found.group(1)


def form_actions(client: httpx.Client, path: str) -> list[str]:
    page = client.get(path)
    assert page.status_code == 200, page.text
    return [html.unescape(a) for a in re.findall(r'<form method="post" action="([^"]+)"', page.text)]


def test_a_campaign_id_with_a_slash_is_shown_stopped_and_resumed(stack: Stack) -> None:
    """Over /v1 (its id percent-encoded or not) and from the console's buttons."""
    run = uuid.uuid4().hex[:6]
    cid = f"team/a-{run}"
    assert post(stack, f"t{run}-0", cid).status_code == 202
    encoded = quote(cid, safe="")
    shown = admin(stack, "GET", f"/v1/campaigns/{encoded}")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["campaign_id"], shown.json()["accepted"]) == (cid, 1)
    assert admin(stack, "GET", f"/v1/campaigns/{cid}").json()["campaign_id"] == cid
    stop = admin(stack, "POST", f"/v1/campaigns/{encoded}/stop")
    assert stop.status_code == 200, stop.text
    assert (stop.json()["campaign_id"], stop.json()["stopped"]) == (cid, True)
    assert admin(stack, "GET", f"/v1/campaigns/{encoded}").json()["stopped"] is True
    assert admin(stack, "POST", f"/v1/campaigns/{cid}/resume").json() == {"campaign_id": cid, "resumed": True}
    assert admin(stack, "GET", f"/v1/campaigns/{encoded}").json()["stopped"] is False

    client, csrf = console(stack)
    try:
        stop_url = f"/console/campaigns/{encoded}/stop"
        assert stop_url in form_actions(client, "/console/campaigns")
        asked = client.post(stop_url, data={"csrf": csrf})
        assert asked.status_code == 200, asked.text  # the confirmation page, posting to the same URL
        assert f'action="{stop_url}"' in asked.text
        done = client.post(stop_url, data={"csrf": csrf, "confirmed": "1"})
        assert done.status_code == 303, done.text
        assert done.headers["location"].startswith("/console/campaigns?done=stopped")
        assert admin(stack, "GET", f"/v1/campaigns/{encoded}").json()["stopped"] is True
        resume_url = f"/console/campaigns/{encoded}/resume"
        assert resume_url in form_actions(client, "/console/campaigns")
        assert client.post(resume_url, data={"csrf": csrf}).status_code == 303
    finally:
        client.close()
    assert admin(stack, "GET", f"/v1/campaigns/{encoded}").json()["stopped"] is False


def test_a_campaign_named_like_another_route_keeps_its_buttons_on_itself(stack: Stack) -> None:
    """An intake token (send power only) names a campaign '../pages/P/resume?': the console's Stop
    button for it stops that campaign, it never resumes the page the operator paused."""
    run = uuid.uuid4().hex[:6]
    paused_page = "779"
    assert admin(stack, "POST", f"/v1/pages/{paused_page}/pause", json={"seconds": 300}).status_code == 200
    evil = f"../pages/{paused_page}/resume?{run}"
    assert post(stack, f"e{run}-0", evil).status_code == 202
    client, csrf = console(stack)
    try:
        base = f"{stack.intake_url}/console/campaigns"
        resolved = [urljoin(base, a) for a in form_actions(client, "/console/campaigns")]
        assert not [url for url in resolved if "/console/pages/" in url], resolved
        stop_url = f"{base}/{quote(evil, safe='')}/stop"
        assert stop_url in resolved
        asked = client.post(stop_url, data={"csrf": csrf})  # what the browser posts on "Stop…"
        assert asked.status_code == 200, asked.text
        assert "Stop campaign" in asked.text
        redis = stack.redis()
        assert redis.exists(stack.keys.pause(paused_page))
        assert redis.zscore(stack.keys.paused, paused_page) is not None
        assert client.post(stop_url, data={"csrf": csrf, "confirmed": "1"}).status_code == 303
        assert admin(stack, "GET", f"/v1/campaigns/{quote(evil, safe='')}").json()["stopped"] is True
        assert redis.exists(stack.keys.pause(paused_page))  # still paused
    finally:
        client.close()
        admin(stack, "POST", f"/v1/pages/{paused_page}/resume")
        admin(stack, "POST", f"/v1/campaigns/{quote(evil, safe='')}/resume")


def test_stopping_a_campaign_never_seen_is_done_but_noted(stack: Stack) -> None:
    """A typo ('campaigns stop nope') was stopped silently; it still is (a campaign may be stopped
    before its first send), with "known": false and a note on the CLI's stderr."""
    run = uuid.uuid4().hex[:6]
    resp = admin(stack, "POST", f"/v1/campaigns/never-{run}/stop")
    assert resp.status_code == 200, resp.text
    assert (resp.json()["stopped"], resp.json()["known"]) == (True, False)
    done = subprocess.run(
        [PY, "-m", "worker", "campaigns", "stop", f"nope-{run}"],
        env=stack.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"no delivery of campaign" in done.stderr
    assert orjson.loads(done.stdout)["known"] is False
    assert post(stack, f"n{run}-0", f"nope-{run}").json()["status"] == State.CANCELLED.value
    for cid in (f"never-{run}", f"nope-{run}"):
        assert admin(stack, "POST", f"/v1/campaigns/{cid}/resume").status_code == 200


def test_a_pause_longer_than_366_days_is_refused_by_the_api_and_the_cli(stack: Stack) -> None:
    redis = stack.redis()
    for seconds in (1e16, 31_622_401, True):
        resp = admin(stack, "POST", "/v1/pages/780/pause", json={"seconds": seconds})
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_body"), (seconds, resp.text)
    assert not redis.exists(stack.keys.pause("780"))  # nothing half written
    assert redis.zscore(stack.keys.paused, "780") is None
    cli = subprocess.run(
        [PY, "-m", "worker", "pages", "pause", "781", "--seconds", "1e16"],
        env=stack.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 2, cli.stderr
    assert b"--seconds" in cli.stderr
    assert not redis.exists(stack.keys.pause("781"))
    # the longest pause taken is applied whole, and lifted
    longest = admin(stack, "POST", "/v1/pages/780/pause", json={"seconds": 31_622_400})
    assert longest.status_code == 200, longest.text
    assert abs(longest.json()["paused_until"] - (time.time() + 31_622_400)) < 60
    assert longest.json()["configured"] is False  # 780 is no page of PAGE_ACCESS_TOKENS: a typo?
    assert 0 < redis.ttl(stack.keys.pause("780")) <= 31_622_400 + 120
    assert admin(stack, "POST", "/v1/pages/780/resume").status_code == 200
    assert not redis.exists(stack.keys.pause("780"))
    # the CLI says so (not refused: a page may be paused before it is configured)
    for page, noted in (("782", True), ("100", False)):
        done = subprocess.run(
            [PY, "-m", "worker", "pages", "resume", page],
            env=stack.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert (b"is not in PAGE_ACCESS_TOKENS" in done.stderr) is noted, done.stderr
    assert admin(stack, "POST", "/v1/pages/100/resume").json()["configured"] is True


def test_the_sandbox_sends_receipts_for_what_it_accepted(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`up --sandbox`'s loop without Facebook: a sandbox with --receipts-webhook posts signed
    delivery and read receipts to the intake for the sends it accepted; they show in the status
    API and the campaign's counters."""
    import os

    from tests.conftest import free_port, start_process, wait_port

    intake_port, sandbox_port = free_port(), free_port()
    log_dir = tmp_path_factory.mktemp("receipts")
    env = {**os.environ, "SANDBOX_RECEIPTS_SECRET": APP_SECRET}
    args = ["sandbox", "--port", str(sandbox_port), "--receipts-share", "1", "--receipts-delay-ms", "200"]
    args += ["--receipts-webhook", f"http://127.0.0.1:{intake_port}/messenger/webhook"]
    proc = start_process("sandbox-receipts", args, env, log_dir)
    try:
        assert wait_port(sandbox_port), proc.tail()
        own = Sandbox(sandbox_port, proc)
        s = Stack(base_env(redis_server.url, own.url, APP_SECRET=APP_SECRET), own, redis_server.url, log_dir)
        s.start_intake(intake_port)
        s.start_worker()
        try:
            camp = f"camp-r-{uuid.uuid4().hex[:6]}"
            ids = [post(s, f"r-{i}", camp).json()["delivery_id"] for i in range(3)]
            s.wait_final(ids)
            assert wait_until(lambda: all("read_at" in s.delivery(i) for i in ids), 30)
            view = admin(s, "GET", f"/v1/campaigns/{camp}").json()
            assert (view["sent"], view["delivered"], view["read"]) == (3, 3, 3)
            assert all(s.delivery(i)["sent_at"] <= s.delivery(i)["delivered_at"] for i in ids)
        finally:
            s.stop()
    finally:
        proc.stop()


def test_a_confirmed_dead_letter_action_acts_only_on_the_letters_it_named(stack: Stack) -> None:
    """The console's confirmation of a replay or purge names the letters it will act on. One
    that named none (the filter matched nothing when it was shown) must not act on letters
    that died since: before, confirming it acted on whatever the filter matched then."""
    run, page = uuid.uuid4().hex[:6], "403"
    client, csrf = console(stack)
    try:
        form = {"csrf": csrf, "action": "purge", "page": page, "code": "2"}
        asked = client.post("/console/dead-letters", data=form)
        assert asked.status_code == 200, asked.text
        assert "Purge 0 dead letters" in asked.text
        dead = stack.post(
            {"recipient": {"id": f"err-2-cn{run}"}, "messaging_type": "UPDATE", "message": {"text": "x"}},
            path=f"/v25.0/{page}/messages",
        ).json()["delivery_id"]
        assert stack.wait_final([dead])[dead]["status"] == "dead"  # it died after the page was shown
        done = client.post("/console/dead-letters", data={**form, "confirmed": "1"})
        assert done.status_code == 303
        assert done.headers["location"] == "/console/dead-letters?done=purged+0"
        assert stack.record(dead)["status"] == "dead"  # not purged
        # confirming with the letter named purges it, and says so in words
        named = client.post("/console/dead-letters", data={**form, "id": dead, "confirmed": "1"})
        assert named.headers["location"] == "/console/dead-letters?done=purged+1"
    finally:
        client.close()

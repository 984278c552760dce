"""Two shards (REDIS_SHARDS): two redis-servers, pages split between them, a worker per shard,
one intake in front. What one Redis guarantees must hold per shard, and the intake, the CLI and
/metrics must see both: routing, pacing, per-recipient order, idempotency, dead letters and
their replay, status, and nothing lost while one shard's Redis restarts (the other keeps
sending meanwhile).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.common import max_in_window
from tests.conftest import (
    ADMIN_HEADERS,
    PY,
    TEST_PAGES,
    RedisServer,
    Sandbox,
    free_port,
    start_process,
    wait_until,
)
from tests.shards import LIMIT, PAGE_A, PAGE_B, Shards, signed, two_shards, winner
from worker.store import outcomes

pytestmark = pytest.mark.integration


@pytest.fixture
def shards(sandbox: Sandbox, tmp_path: Path) -> Iterator[Shards]:
    yield from two_shards(sandbox, tmp_path)


def body(psid: str, text: str = "sharded") -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": text}}


def path(page: str) -> str:
    return f"/v25.0/{page}/messages"


def sent(sandbox: Sandbox, page: str, prefix: str) -> list[dict[str, Any]]:
    return [c for c in sandbox.calls(page_id=page) if c["status"] == 200 and c["psid"].startswith(prefix)]


def test_pages_live_on_their_shards_and_are_paced_ordered_and_deduplicated(shards: Shards) -> None:
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    bodies = [(path(PAGE_A), body(f"{run}-a{i}")) for i in range(150)]
    bodies += [(path(PAGE_B), body(f"{run}-b{i}")) for i in range(150)]
    ids = stack.post_many(bodies)
    # routing: each page's deliveries carry its shard's index and live in that Redis only
    assert {shards.index_of(i) for i in ids[:150]} == {0}
    assert {shards.index_of(i) for i in ids[150:]} == {1}
    other = shards.servers[0].client()
    assert not other.exists(shards.keys().delivery(ids[150]))
    other.close()
    # per-recipient order on shard 1, and an idempotency key repeated
    ordered = [
        stack.post(body(f"{run}-order", f"n{i}"), path=path(PAGE_B)).json()["delivery_id"] for i in range(8)
    ]
    key = {"Idempotency-Key": f"k-{run}"}
    first = stack.post(body(f"{run}-idem"), path=path(PAGE_B), headers=key)
    again = stack.post(body(f"{run}-idem"), path=path(PAGE_B), headers=key)
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"delivery_id": first.json()["delivery_id"], "status": "duplicate"}
    records = shards.wait_final([*ids, *ordered, first.json()["delivery_id"]], timeout=90)
    assert Counter(r["status"] for r in records.values()) == {"sent": 150 + 150 + 8 + 1}
    # the status API reads each delivery on its shard
    view = stack.delivery(ids[-1])
    assert view["status"] == "sent"
    assert view["page_id"] == PAGE_B
    listed = httpx.get(f"{stack.intake_url}/v1/campaigns", headers=ADMIN_HEADERS, timeout=10).json()
    assert "unavailable_shards" not in listed  # every shard answered: the body as with one Redis
    # pacing: each page on its own shard holds its own limit (and both ran at once)
    for page in (PAGE_A, PAGE_B):
        times = sorted(c["at"] for c in sent(stack.sandbox, page, f"{run}-{'a' if page == PAGE_A else 'b'}"))
        assert len(times) == 150
        mean = (len(times) - 1) / (times[-1] - times[0])
        print(f"page {page}: mean {mean:.1f}/s, peak {max_in_window(times)} (limit {LIMIT})")
        assert LIMIT * 0.8 <= mean <= LIMIT * 1.05
        assert max_in_window(times) <= LIMIT * 1.5
    texts = [c["body"]["message"]["text"] for c in sent(stack.sandbox, PAGE_B, f"{run}-order")]
    assert texts == [f"n{i}" for i in range(8)]
    assert len(sent(stack.sandbox, PAGE_B, f"{run}-idem")) == 1
    # status across shards: the CLI sums both, /metrics labels each
    status = shards.cli("status", "--json")
    assert status["open"] == 0
    assert status["queue_depth"] == 0
    assert [(row["shard"], row["open"]) for row in status["shards"]] == [(0, 0), (1, 0)]
    metrics = httpx.get(stack.intake_metrics_url, timeout=10).text
    assert 'bmw_redis_up{shard="0"} 1.0' in metrics
    assert 'bmw_redis_up{shard="1"} 1.0' in metrics


def test_dead_letters_are_listed_and_replayed_across_shards(shards: Shards) -> None:
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    # the first 3 calls (MAX_ATTEMPTS) fail transiently: dead; a replay's 4th call succeeds
    dead_a = stack.post_many([(path(PAGE_A), body(f"flaky3-2-{run}a"))])[0]
    dead_b = stack.post_many([(path(PAGE_B), body(f"flaky3-2-{run}b"))])[0]
    records = shards.wait_final([dead_a, dead_b], timeout=60)
    assert {r["status"] for r in records.values()} == {"dead"}
    listed = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=ADMIN_HEADERS, timeout=10).json()
    found = {d["delivery_id"] for d in listed["dead_letters"]}
    assert {dead_a, dead_b} <= found
    replay = httpx.post(
        f"{stack.intake_url}/v1/dead-letters/replay",
        json={"delivery_ids": [dead_a, dead_b]},
        headers=ADMIN_HEADERS,
        timeout=10,
    )
    assert replay.status_code == 200, replay.text
    assert sorted(replay.json()["replayed"]) == sorted([dead_a, dead_b])
    records = shards.wait_final([dead_a, dead_b], timeout=60)
    assert {r["status"] for r in records.values()} == {"sent"}
    listed = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=ADMIN_HEADERS, timeout=10).json()
    assert not {dead_a, dead_b} & {d["delivery_id"] for d in listed["dead_letters"]}


def test_ids_issued_before_shards_are_found_in_shard_0(shards: Shards) -> None:
    """docs/scaling.md: the Redis of before becomes shard 0, and its ids have random first bytes.
    One that seems to name shard 1, and one that names no shard, are still read, and a dead
    letter among them is replayed on shard 0 and sent."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    keys, now = shards.keys(), time.time()
    names_1, names_none = "01" + uuid.uuid4().hex[2:], "ab" + uuid.uuid4().hex[2:]
    old = shards.servers[0].client()
    try:
        sent_before = {
            "status": "sent",
            "page_id": PAGE_A,
            "created_at": repr(now - 60),
            "updated_at": repr(now - 59),
            "attempts": "1",
            "message_id": "m_old",
        }
        old.hset(
            outcomes.bucket(keys, int(now // outcomes.SPAN), names_none),
            outcomes.field(names_none),
            outcomes.pack(sent_before),
        )
        old.hset(
            keys.delivery(names_1),
            mapping={
                "status": "dead",
                "page_id": PAGE_A,
                "psid": f"{run}-old",
                "caller": "",
                "body": json.dumps(body(f"{run}-old")),
                "request_id": "r-old",
                "created_at": repr(now - 30),
                "attempts": "3",
            },
        )
        old.zadd(keys.dead, {names_1: now - 20})
    finally:
        old.close()
    for delivery_id, status in ((names_none, "sent"), (names_1, "dead")):
        view = httpx.get(f"{stack.intake_url}/v1/deliveries/{delivery_id}", headers=ADMIN_HEADERS, timeout=10)
        assert view.status_code == 200, view.text
        assert view.json()["status"] == status
    replay = httpx.post(
        f"{stack.intake_url}/v1/dead-letters/replay",
        json={"delivery_ids": [names_1]},
        headers=ADMIN_HEADERS,
        timeout=10,
    )
    assert replay.json()["replayed"] == [names_1], replay.text
    assert wait_until(
        lambda: (
            httpx.get(
                f"{stack.intake_url}/v1/deliveries/{names_1}", headers=ADMIN_HEADERS, timeout=10
            ).json()["status"]
            == "sent"
        ),
        30,
    )
    assert len(sent(stack.sandbox, PAGE_A, f"{run}-old")) == 1
    # an id no shard can hold is not looked for at all
    assert (
        httpx.get(f"{stack.intake_url}/v1/deliveries/zz{run}", headers=ADMIN_HEADERS, timeout=10).status_code
        == 404
    )


def test_a_shard_restarts_and_nothing_is_lost(shards: Shards) -> None:
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    # B first, then a longer backlog for A: A still has about 6 s to send when B's Redis stops
    b_ids = stack.post_many([(path(PAGE_B), body(f"{run}-rb{i}")) for i in range(200)])
    a_ids = stack.post_many([(path(PAGE_A), body(f"{run}-ra{i}")) for i in range(400)])
    time.sleep(1.0)  # both pages sending (B: 4 s of backlog at the limit, A: 8 s)
    down = shards.servers[1]
    down.stop()  # SIGTERM: redis-server writes its AOF (appendfsync always) and exits
    stopped_at = time.time()
    refused = stack.post(body(f"{run}-while-down"), path=path(PAGE_B))
    assert refused.status_code == 503, refused.text  # not stored: Braze retries it
    ready = httpx.get(f"{stack.intake_url}/readyz", timeout=10)
    assert ready.status_code == 200  # the intake stays in the balancer: shard 0's pages go on
    assert [(x["shard"], x["up"]) for x in ready.json()["shards"]] == [(0, True), (1, False)]
    assert ready.json()["ok"] is True
    assert isinstance(ready.json()["memory_ratio"], float)  # the answering shard's (the Ready schema)
    accepted_a = stack.post(body(f"{run}-a-while-down"), path=path(PAGE_A))
    assert accepted_a.status_code == 202  # the other shard takes requests meanwhile
    # listings across shards answer with the shards that answer, and name the one left out
    for route, items in (("/v1/campaigns", "campaigns"), ("/v1/dead-letters", "dead_letters")):
        listed = httpx.get(f"{stack.intake_url}{route}", headers=ADMIN_HEADERS, timeout=10)
        assert listed.status_code == 200, listed.text
        assert listed.json()["unavailable_shards"] == [1]
        assert isinstance(listed.json()[items], list)
    # an action chosen by a filter would skip the silent shard's letters unseen: refused
    refused_action = httpx.post(
        f"{stack.intake_url}/v1/dead-letters/replay", json={"all": True}, headers=ADMIN_HEADERS, timeout=10
    )
    assert refused_action.status_code == 503, refused_action.text
    status = shards.cli("status", "--json")  # the CLI: shard 0's figures, shard 1 named down
    assert status["unavailable_shards"] == [1]
    assert [(row["shard"], row["up"]) for row in status["shards"]] == [(0, True), (1, False)]
    time.sleep(max(0.0, stopped_at + 2.0 - time.time()))
    down.start()  # same port, same AOF
    restarted_at = time.time()
    a_during = [c for c in sent(stack.sandbox, PAGE_A, f"{run}-ra") if stopped_at < c["at"] < restarted_at]
    assert len(a_during) >= LIMIT, "shard 0 must keep sending while shard 1 is down"
    records = shards.wait_final([*a_ids, *b_ids, accepted_a.json()["delivery_id"]], timeout=120)
    assert Counter(r["status"] for r in records.values()) == {"sent": 601}
    per_psid = Counter(c["psid"] for page in (PAGE_A, PAGE_B) for c in sent(stack.sandbox, page, f"{run}-r"))
    assert len(per_psid) == 600
    duplicates = sum(n - 1 for n in per_psid.values())
    print(f"shard restart: 600 sent, {duplicates} sent twice (ambiguous answers only)")
    # a send is repeated only when its record could not be written (Redis down after Graph said
    # yes): the workers count it as a possible duplicate; nothing else may repeat
    assert duplicates <= 8


def test_a_stalled_shard_keeps_the_intake_ready_and_the_other_shards_events_flowing(shards: Shards) -> None:
    """A shard that holds its connections without answering (SIGSTOP: a hung host) must cost
    only its own pages. /readyz asks the shards at once, each for at most a second, so it answers
    within the probes' 2 s timeout instead of waiting out the socket's 5 s per shard; a webhook
    POST queues the answering shard's events at once and answers 503 for Meta to send it again."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    stalled = shards.servers[1]
    assert stalled.proc is not None
    events = {
        "object": "page",
        "entry": [
            {"id": page, "time": int(time.time() * 1000), "messaging": [_message(page, f"{run}-{page}")]}
            for page in (PAGE_B, PAGE_A)  # the stalled shard's page first
        ],
    }
    payload = json.dumps(events).encode()
    shard0 = shards.servers[0].client()
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.2)
        started = time.monotonic()
        ready = httpx.get(f"{stack.intake_url}/readyz", timeout=10)
        took = time.monotonic() - started
        assert ready.status_code == 200, ready.text
        assert [(x["shard"], x["up"]) for x in ready.json()["shards"]] == [(0, True), (1, False)]
        assert took < 1.8, f"/readyz took {took:.2f} s with a stalled shard (the probes give 2 s)"
        started = time.monotonic()
        hook = httpx.post(
            f"{stack.intake_url}/messenger/webhook", content=payload, headers=signed(payload), timeout=15
        )
        took = time.monotonic() - started
        assert (hook.status_code, hook.json()["error"]["code"]) == (503, "unavailable"), hook.text
        assert took < stack_deadline(stack) + 1.5, f"the webhook took {took:.2f} s"
        # shard 0's user event reached shard 0's worker while shard 1 was still stalled
        window = stack.keys.window(PAGE_A, f"{run}-{PAGE_A}")
        assert wait_until(lambda: shard0.exists(window) == 1, 20), "shard 0's event waited for shard 1"
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
        shard0.close()
    # Meta sends the POST again: both shards take it, and shard 0's event is applied once
    again = httpx.post(
        f"{stack.intake_url}/messenger/webhook", content=payload, headers=signed(payload), timeout=15
    )
    assert again.status_code == 200, again.text
    shard1 = shards.servers[1].client()
    try:
        assert wait_until(lambda: shard1.exists(stack.keys.window(PAGE_B, f"{run}-{PAGE_B}")) == 1, 20)
    finally:
        shard1.close()


def _message(page: str, psid: str) -> dict[str, Any]:
    return {
        "sender": {"id": psid},
        "recipient": {"id": page},
        "timestamp": int(time.time() * 1000),
        "message": {"mid": f"m_{uuid.uuid4().hex}", "text": "hello"},
    }


def stack_deadline(stack: Any) -> float:
    return float(stack.env.get("INTAKE_DEADLINE_SECONDS", "5"))


def test_a_worker_without_its_shard_refuses_to_start(shards: Shards) -> None:
    env = {k: v for k, v in shards.stack.env.items() if k != "SHARD_INDEX"}
    out = subprocess.run(
        [PY, "-m", "worker", "worker"], env=env, capture_output=True, timeout=60, check=False
    )
    assert out.returncode != 0
    assert b"SHARD_INDEX" in out.stderr + out.stdout


def test_a_retry_of_a_request_the_old_shard_accepted_is_a_repeat_after_a_move(shards: Shards) -> None:
    """A page moves from shard 0 to shard 1 while Braze retries a request whose 202 it did not
    get: shard 0 accepted it, the retry reaches shard 1 once the pin is out. `shards move` noted
    in shard 1's P:moved where the page came from, so the intake asks shard 0 for the key and
    answers the retry as a repeat, with shard 0's id: one send. A key shard 0 never saw is
    accepted on shard 1. `--finish` keeps the note (for two IDEMPOTENCY_TTLs from then). The old
    shard down: the lookup gives up within a second and the request goes through (the page's new
    traffic does not depend on the old shard)."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    page = _page(0, 2)
    old_env = dict(stack.env)
    keys = shards.keys()

    def post(psid: str, key: str) -> httpx.Response:
        return stack.post(body(psid), path=path(page), headers={"Idempotency-Key": key})

    first = post(f"{run}-1", f"{run}-k1")
    assert first.status_code == 202, first.text
    accepted = first.json()["delivery_id"]
    assert shards.index_of(accepted) == 0
    shards.wait_final([accepted])

    code, copy = _shards_cli(old_env, "move", page, "--to", "1")
    assert code == 0, copy
    assert copy["keys_asked_on"] == 0
    new = shards.servers[1].client()
    try:
        assert set(new.hkeys(keys.moved)) == {page.encode()}
        ttl = int(stack.env.get("IDEMPOTENCY_TTL", "86400"))
        assert 2 * ttl - 120 < new.ttl(keys.moved) <= 2 * ttl + 1
    finally:
        new.close()

    stack.procs[0].stop()  # the pin rolled out: a new intake with it
    stack.env = {**old_env, "SHARD_PAGES": json.dumps(copy["shard_pages"])}
    stack.start_intake()
    retry = post(f"{run}-1", f"{run}-k1")
    assert retry.status_code == 200, retry.text
    assert retry.json() == {"delivery_id": accepted, "status": "duplicate"}
    assert any(e.get("event") == "delivery.duplicate" and e.get("moved") for e in stack.logs())
    fresh = post(f"{run}-2", f"{run}-k2")
    assert fresh.status_code == 202, fresh.text
    assert shards.index_of(fresh.json()["delivery_id"]) == 1
    shards.wait_final([fresh.json()["delivery_id"]])
    assert [c["psid"] for c in sent(stack.sandbox, page, run)] == [f"{run}-1", f"{run}-2"]

    code, done = _shards_cli(stack.env, "move", page, "--to", "1", "--finish")
    assert code == 0, done
    assert done["keys_asked_on"] == 0
    check = _shards_cli(stack.env, "check")[1]
    assert [(m["page"], m["on"], m["keys_asked_on"]) for m in check["moved"]] == [(page, 1, 0)]
    assert check["moved"][0]["until"] == done["keys_asked_until"]
    assert post(f"{run}-1", f"{run}-k1").json() == {"delivery_id": accepted, "status": "duplicate"}

    shards.servers[0].stop()
    try:
        started = time.monotonic()
        down = post(f"{run}-3", f"{run}-k3")
        assert down.status_code == 202, down.text  # accepted on shard 1 without shard 0's word
        assert time.monotonic() - started < 5
        assert any(e.get("event") == "intake.moved_lookup_failed" for e in stack.logs())
    finally:
        shards.servers[0].start()


def _page(home: int, after: int, *, but: str = "") -> str:
    """A configured, unpinned page that 2 shards route to ``home`` and 3 shards to ``after``."""
    return next(
        p
        for p in TEST_PAGES
        if p not in (PAGE_A, PAGE_B, but) and winner(p, 2) == home and winner(p, 3) == after
    )


def _shards_cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [PY, "-m", "worker", "shards", *args, "--json"], env=env, capture_output=True, timeout=60, check=False
    )
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_adding_a_shard_keeps_the_pages_with_state_where_it_is(shards: Shards, tmp_path: Path) -> None:
    """`shards plan` names the pages with state that a third shard would take (a page that sent,
    whose limiter is there; a paused page whose messages wait) and pins them where they are; a page
    that stays, the pinned pages and pages never seen are not named. `shards check` after the
    list grew: both pages stranded without the pins, nothing with them; a worker of the grown
    list counts and names its shard's stranded page."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    sending, paused = _page(1, 2), _page(0, 2)
    staying = _page(0, 0, but=paused)
    ids = stack.post_many(
        [(path(p), body(f"{run}-{p}")) for p in (sending, staying, PAGE_A) for _ in range(3)]
    )
    assert shards.cli("pages", "pause", paused)
    waiting = stack.post_many([(path(paused), body(f"{run}-{paused}")) for _ in range(2)])
    shards.wait_final(ids)
    assert {shards.record(i)["status"] for i in waiting} <= {"queued", "in_flight", "scheduled"}  # unsent
    assert {shards.index_of(i) for i in ids[:3]} == {1}  # the sending page is on shard 1 now
    assert {shards.index_of(i) for i in ids[3:]} == {0}

    code, check = _shards_cli(stack.env, "check")
    assert code == 0
    assert check["misrouted"] == []
    assert [(row["shard"], row["keys"] > 0) for row in check["scanned"]] == [(0, True), (1, True)]

    code, plan = _shards_cli(stack.env, "plan", "--shards", "3")
    assert code == 0
    moves = {m["page"]: m for m in plan["moves"]}
    assert set(moves) == {sending, paused}, plan["moves"]
    assert (moves[sending]["on"], moves[sending]["to"]) == (1, 2)
    assert "recent sends" in moves[sending]["state"]  # its requests' Idempotency-Keys are there
    assert (moves[paused]["on"], moves[paused]["to"]) == (0, 2)
    assert {"pause", "deliveries"} <= set(moves[paused]["state"])  # its waiting messages too
    assert plan["shard_pages"] == {PAGE_A: 0, PAGE_B: 1, sending: 1, paused: 0}

    third = RedisServer(free_port(), tmp_path / "redis2")
    third.start()
    try:
        grown = {**stack.env, "REDIS_SHARDS": ",".join([*(s.url for s in shards.servers), third.url])}
        code, stranded = _shards_cli(grown, "check")  # the list grown without the pins
        assert code == 1
        assert {(m["page"], m["on"], m["to"]) for m in stranded["misrouted"]} == {
            (sending, 1, 2),
            (paused, 0, 2),
        }
        assert stranded["split"] == []
        assert stranded["shard_pages"] == plan["shard_pages"]
        code, fine = _shards_cli({**grown, "SHARD_PAGES": json.dumps(plan["shard_pages"])}, "check")
        assert code == 0
        assert fine["misrouted"] == []
        assert fine["scanned"][2]["pages"] == 0  # the new shard holds nothing yet
        # a worker of shard 1 under the grown list, without the pins: the gauge and the warning
        port = free_port()
        env = {**grown, "SHARD_INDEX": "1", "METRICS_PORT": str(port)}
        worker = start_process(
            "stranded", ["worker", "--concurrency", "1", "--hostname", f"s-{run}@%h"], env, stack.log_dir
        )
        try:
            assert wait_until(lambda: "shards.stranded" in worker.tail(400), 60), worker.tail()
            (line,) = [json.loads(x) for x in worker.tail(400).splitlines() if '"shards.stranded"' in x]
            assert (line["pages"], line["count"], line["shard"]) == ([sending], 1, 1)
            scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'bmw_shard_stranded_pages{shard="1"} 1.0' in scraped
            assert 'bmw_worker_shard{shard="1"} 1.0' in scraped  # BmwShardWithoutWorker reads it
        finally:
            worker.stop()
    finally:
        third.stop()


def test_a_moved_pages_events_reach_the_messages_its_old_shard_still_holds(shards: Shards) -> None:
    """Between `shards move` and `--finish` the old shard still sends what it holds, while the
    page's webhook events go to its new shard. They are applied on the old shard too, marked
    local (no Braze link): a read receipt marks the message the old shard sent read there.
    Before, it was applied on the new shard alone, which never sent that message."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    page = _page(0, 2)
    psid = f"{run}-reader"
    sent = stack.post_many([(path(page), body(psid))])
    assert shards.index_of(sent[0]) == 0
    shards.wait_final(sent)
    code, copy = _shards_cli(dict(stack.env), "move", page, "--to", "1")
    assert code == 0, copy
    stack.procs[0].stop()  # the intake of before the pin; the new one has it
    stack.env = {**stack.env, "SHARD_PAGES": json.dumps(copy["shard_pages"])}
    stack.start_intake()
    now_ms = int(time.time() * 1000)
    read = {
        "sender": {"id": psid},
        "recipient": {"id": page},
        "timestamp": now_ms,
        "read": {"watermark": now_ms},
    }
    raw = json.dumps(
        {"object": "page", "entry": [{"id": page, "time": now_ms, "messaging": [read]}]}
    ).encode()
    hook = httpx.post(f"{stack.intake_url}/messenger/webhook", content=raw, headers=signed(raw), timeout=15)
    assert hook.status_code == 200, hook.text
    assert wait_until(lambda: "read_at" in shards.record(sent[0]), 20), shards.record(sent[0])


def _pages_cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [PY, "-m", "worker", "pages", *args], env=env, capture_output=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_moving_a_page_takes_its_state_and_leaves_its_messages_to_the_old_shard(shards: Shards) -> None:
    """`shards move PAGE --to 1` on a page of shard 0 with a pause, a recipient's window and a
    Braze link (each with its expiry) and a message waiting for the pause: the state is copied
    (the old shard keeps it until the end); `--finish` after the pin is out refuses while shard 0
    still holds the waiting message, and once it is sent copies what changed, drops shard 0's
    copy and its recent sends, so `shards check` is clean. The pause moved with the page and was
    lifted on shard 1: a pause set again on shard 0 meanwhile does not come back, and the next
    message lands on shard 1 and is sent. With the pin, `pages resume` and `pages pause` reach
    the old shard too while it still sends for the page."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    page = _page(0, 2)
    old_env = dict(stack.env)
    keys = shards.keys()
    old, new = shards.servers[0].client(), shards.servers[1].client()
    try:
        sent_before = stack.post_many([(path(page), body(f"{run}-sent"))])
        shards.wait_final(sent_before)
        old.set(keys.window(page, "9001"), "1900000000", ex=3600)
        old.set(keys.external(page, "9001"), "braze-user-1", ex=7200)
        assert shards.cli("pages", "pause", page, "--seconds", "600")
        waiting = stack.post_many([(path(page), body(f"{run}-waits"))])
        assert shards.index_of(waiting[0]) == 0

        code, copy = _shards_cli(old_env, "move", page, "--to", "1")
        assert code == 0, copy
        assert copy["copied"] >= 3  # the pause, the window, the link (and the page's catalogue)
        assert copy["shard_pages"] == {PAGE_A: 0, PAGE_B: 1, page: 1}
        for key, ttl in ((keys.window(page, "9001"), 3600), (keys.external(page, "9001"), 7200)):
            assert new.get(key) == old.get(key)
            assert ttl - 60 < new.ttl(key) <= ttl  # its expiry came along
        assert new.exists(keys.pause(page))
        assert old.exists(keys.pause(page))  # the old shard keeps its copy until --finish
        assert _shards_cli(old_env, "check")[1]["split"] == [page]  # in two places meanwhile

        # the pin rolled out: a new intake with it
        pinned = {**old_env, "SHARD_PAGES": json.dumps(copy["shard_pages"])}
        code, refused = _shards_cli(pinned, "move", page, "--to", "1", "--finish")
        assert code == 1
        assert (refused["open"], refused["open_on"]) == (1, 0)  # the waiting message
        assert new.exists(keys.window(page, "9001"))
        assert old.exists(keys.window(page, "9001"))  # nothing changed
        # the operator resumes the page with the pin: the old shard's copy of the pause and the
        # message waiting there are released too (before, only shard 1's copy was lifted)
        assert _pages_cli(pinned, "resume", page)["released"] == 1
        assert not old.exists(keys.pause(page))
        assert not new.exists(keys.pause(page))
        shards.wait_final(waiting)
        # a pause asked with the pin before --finish stops the old shard's sends as well
        _pages_cli(pinned, "pause", page, "--seconds", "600")
        assert old.exists(keys.pause(page))
        assert new.exists(keys.pause(page))
        _pages_cli(pinned, "resume", page)
        assert not old.exists(keys.pause(page))
        assert not new.exists(keys.pause(page))
        old.set(keys.suppressed(page, "9002"), "1", ex=900)  # written by shard 0 meanwhile
        old.set(keys.window(page, "9001"), "1900086400", ex=86_400)  # the user wrote again there
        # a pause left on the old shard (set there with the old routing) must not come back
        # with --finish
        assert shards.cli("pages", "pause", page, "--seconds", "600")
        assert old.exists(keys.pause(page))
        assert not new.exists(keys.pause(page))

        code, done = _shards_cli(pinned, "move", page, "--to", "1", "--finish")
        assert code == 0, done
        assert done["from"] == [0]
        assert done["copied"] >= 1  # the suppression shard 1 did not have
        assert done["dropped"] >= 4
        assert new.exists(keys.suppressed(page, "9002"))
        assert new.get(keys.window(page, "9001")) == b"1900086400"  # the later window wins
        assert new.ttl(keys.window(page, "9001")) > 3600
        assert not new.exists(keys.pause(page))  # the new shard's word on the pause stands
        assert new.zscore(keys.paused, page) is None
        assert not [k for k in old.scan_iter(match=f"{keys.prefix}:*:{page}*")]  # no key of the page
        assert not [m for m in old.zrange(keys.buckets, 0, -1) if m.decode().startswith(f"{page}:")]
        code, check = _shards_cli(pinned, "check")
        assert code == 0, check
        assert check["misrouted"] == []

        stack.procs[0].stop()  # the intake of before the pin; the new one has it
        stack.env = pinned
        stack.start_intake()
        moved = stack.post_many([(path(page), body(f"{run}-after"))])
        assert shards.index_of(moved[0]) == 1
        assert shards.wait_final(moved)[moved[0]]["status"] == "sent"  # not paused: resumed there
    finally:
        old.close()
        new.close()


def test_a_campaign_listed_across_shards_has_every_shards_counters(shards: Shards) -> None:
    """Each shard answers its own most recent ``limit`` campaigns. A campaign active on shard 1
    before two others there, then on shard 0, is in the merged top two, and its shard-1 delivery
    was left out: listed with ``accepted`` 1 where ``GET /v1/campaigns/{id}`` said 2."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]

    def post(page: str, campaign: str, n: int) -> None:
        resp = stack.post(
            body(f"{run}-{campaign}-{n}"), path=path(page), headers={"X-Braze-Campaign-Id": campaign}
        )
        assert resp.status_code == 202, resp.text
        time.sleep(0.01)  # activity times in this order

    older, newer, newest = f"x-{run}", f"y-{run}", f"z-{run}"
    post(PAGE_B, older, 0)
    post(PAGE_B, newer, 1)
    post(PAGE_B, newest, 2)
    post(PAGE_A, older, 3)  # shard 0: the latest activity of all
    listed = httpx.get(
        f"{stack.intake_url}/v1/campaigns", params={"limit": 2}, headers=ADMIN_HEADERS, timeout=10
    )
    views = {v["campaign_id"]: v for v in listed.json()["campaigns"]}
    assert list(views) == [older, newest]
    whole = httpx.get(f"{stack.intake_url}/v1/campaigns/{older}", headers=ADMIN_HEADERS, timeout=10).json()
    assert whole["accepted"] == views[older]["accepted"] == 2

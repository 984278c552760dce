"""Claims, leases, fenced outcome writes and final records, against a real redis-server.

The scripts (store/lua) are driven through the engine's own pieces (Recorder, Leases) where they
exist, so what is tested is what a worker does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from worker.config import PageTokens, Settings
from worker.delivery.leases import Leases
from worker.delivery.model import Delivery, Outcome, PauseRequest
from worker.delivery.observers import LogObserver, Observer
from worker.delivery.recorder import Recorder
from worker.graph import SendResult
from worker.states import Event, State
from worker.store import Keys, campaign_ctx, deadletters, outcomes, records, scripts, seals, unread
from worker.store.connections import RECOMMENDED_CONFIG
from worker.store.pages import pause_page

pytestmark = pytest.mark.integration
T = TypeVar("T")


def make_settings(redis: RedisServer, **kw: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "redis_url": redis.url,
        "key_prefix": f"f{tag}",
        "queue_name": f"q{tag}",
        "page_access_tokens": {PAGE: PAGE_TOKEN},
        "delivery_lease_seconds": 6,
        "graph_deadline_seconds": 3,
        "record_flush_ms": 0,
        "_env_file": None,
    }
    base.update(kw)
    return Settings(**base)


def run(s: Settings, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


async def accept(
    client: aioredis.Redis,
    s: Settings,
    ids: list[str],
    *,
    legacy: bool = False,
    ago: float = 0.0,
    **fields: str,
) -> int:
    """Open records as accept.lua leaves them, counted in their second's open deliveries
    (worker/store/ages.py); ``legacy``: as the version before counted them, members of P:open.
    ``ago``: accepted that many seconds ago. Returns the second they were accepted in (the
    same clock reading: a test that read the clock again could cross a second's edge)."""
    keys, now = Keys.of(s), time.time() - ago
    for i in ids:
        await client.hset(  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            keys.delivery(i),
            mapping={
                "status": State.QUEUED,
                "page_id": PAGE,
                "psid": f"psid-{i}",
                "body": orjson.dumps({"recipient": {"id": f"psid-{i}"}, "message": {"text": "hi"}}),
                "token": "",
                "created_at": repr(now),
                "attempts": 0,
                **fields,
            },
        )
        await client.zadd(keys.pending, {i: now + 60})
        if legacy:
            await client.zadd(keys.open, {i: now})
        else:
            await client.hincrby(keys.open_counts, str(int(now)), 1)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            await client.zadd(keys.open_seconds, {str(int(now)): int(now)})
    return int(now)


def ctx(keys: Keys, s: Settings, at: float) -> list[Any]:
    """claim.lua's campaign context (worker/store/campaign_ctx.py)."""
    return campaign_ctx.of_settings(keys, s, at)


async def claim(
    client: aioredis.Redis, s: Settings, token: str, ids: list[str], now: float | None = None
) -> list[Delivery]:
    keys = Keys.of(s)
    at = time.time() if now is None else now
    raw = await scripts.run(
        client,
        "claim",
        keys=[keys.pending],
        args=[repr(at), s.delivery_lease_seconds, keys.delivery_prefix, token, 90, *ctx(keys, s, at), *ids],
    )
    # what it claimed (after {looked at, cancels}); the worker reads their records then
    ids = [i.decode() for i in raw[2:]]
    recs = await records.read_claimed(client, keys.delivery_prefix, ids)
    return [Delivery.from_record(i, token, rec) for i, rec in zip(ids, recs, strict=True)]


async def write(client: aioredis.Redis, s: Settings, *outcomes: Outcome) -> list[int]:
    recorder = Recorder(client, s, PageTokens(s, source=""), Observer())
    await asyncio.gather(*(recorder.record(o) for o in outcomes))
    return [o.written for o in outcomes]


async def fields(client: aioredis.Redis, s: Settings, delivery_id: str) -> dict[str, str]:
    """The record, open (its hash) or final (its outcome), as every reader sees it."""
    return await outcomes.read(client, Keys.of(s), delivery_id, s.record_retention)


async def outcome_bucket(client: aioredis.Redis, s: Settings, delivery_id: str) -> str:
    """The one bucket that holds the delivery's outcome."""
    keys = Keys.of(s)
    found = [
        outcomes.bucket(keys, hour, delivery_id)
        for hour in outcomes.hours(time.time(), s.record_retention)
        if await client.hexists(outcomes.bucket(keys, hour, delivery_id), outcomes.field(delivery_id))  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; a field typed str, Redis takes bytes
    ]
    assert len(found) == 1, found
    return found[0]


async def counted(client: aioredis.Redis, keys: Keys) -> dict[int, int]:
    """The open deliveries' ages, second -> count (worker/store/ages.py); its seconds index agrees."""
    counts = {int(k): int(v) for k, v in (await client.hgetall(keys.open_counts)).items()}  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    seconds = {
        int(m): int(score) for m, score in await client.zrange(keys.open_seconds, 0, -1, withscores=True)
    }
    assert seconds == {k: k for k in counts}, (seconds, counts)
    assert all(v > 0 for v in counts.values()), counts
    return counts


def sent(d: Delivery) -> Outcome:
    return Outcome(d, Event.SEND_OK, result=SendResult("m_1", d.psid, 200, 50.0, started_at=time.time()))


def test_a_lost_claim_cannot_overwrite_the_record(redis_server: RedisServer) -> None:
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a"])
        (first,) = await claim(client, s, "w1.1", ["a"])
        assert first.previous is State.QUEUED
        assert (await fields(client, s, "a"))["status"] == State.IN_FLIGHT
        # held: nobody else can claim it
        assert await claim(client, s, "w2.1", ["a"]) == []
        # the lease ends (its holder stopped renewing): another worker reclaims it
        (second,) = await claim(client, s, "w2.1", ["a"], now=time.time() + s.delivery_lease_seconds + 1)
        assert second.previous is State.IN_FLIGHT  # a reclaim: counted as a possible duplicate
        # the first holder comes back with an outcome: refused by the fence
        assert await write(client, s, Outcome(first, Event.FAIL, reason="permanent")) == [0]
        assert (await fields(client, s, "a"))["status"] == State.IN_FLIGHT
        # the holder's write lands, and sending it again (its answer lost) is recognised
        assert await write(client, s, sent(second)) == [1]
        assert await write(client, s, sent(second)) == [2]
        assert (await fields(client, s, "a"))["status"] == State.SENT

    run(s, go)


def test_a_cancel_asked_while_held_ends_the_next_open_outcome_but_not_a_send(
    redis_server: RedisServer,
) -> None:
    """An operator cancels deliveries a worker holds: they are marked, not ended (the call may be
    under way). The holder's next outcome decides: a retry is written CANCELLED instead (reason
    operator), a send stays SENT (sent again: recognised)."""
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        from worker import campaigns

        await accept(client, s, ["a", "b", "c"])
        a, b, c = await claim(client, s, "w1.1", ["a", "b", "c"])
        assert [await campaigns.cancel_delivery(client, s, i) for i in ("a", "b")] == [False, False]
        retried, waited = (Outcome(d, Event.RETRY, reason="throttled", delay=30) for d in (a, c))
        assert await write(client, s, retried, sent(b), waited) == [1, 1, 1]
        assert retried.status is State.CANCELLED  # record.lua answered 3: cancelled instead
        assert waited.status is State.RETRYING
        ended = await fields(client, s, "a")
        assert ended["status"] == State.CANCELLED
        assert orjson.loads(ended["error"])["reason"] == "operator"
        assert (await fields(client, s, "b"))["status"] == State.SENT
        assert (await fields(client, s, "c"))["status"] == State.RETRYING  # not asked: it waits
        assert await write(client, s, sent(b)) == [2]
        # the cancel ended it, not this claim's write: sent again, the retry is refused and
        # the record stays as the cancel left it
        assert await write(client, s, Outcome(a, Event.RETRY, reason="throttled", delay=30)) == [0]
        assert (await fields(client, s, "a"))["status"] == State.CANCELLED

    run(s, go)


def test_a_cancel_after_a_stall_leaves_a_claim_whose_lease_ran_out_to_its_holder(
    redis_server: RedisServer,
) -> None:
    """After a Redis stall a live holder's lease may have run out before its renewal landed,
    its call under way. A cancel then only marks the delivery: the holder's send stays sent
    (before, the cancel ended it CANCELLED and the send was refused as fenced: a message that
    went out, recorded as cancelled and counted a duplicate). Left unheld, the next claim
    ends it cancelled without a call."""
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        from worker import campaigns

        await accept(client, s, ["a", "b"])
        a, _ = await claim(client, s, "w1.2", ["a", "b"], now=time.time() - 60)  # the leases ran out
        assert [await campaigns.cancel_delivery(client, s, i) for i in ("a", "b")] == [False, False]
        assert await write(client, s, sent(a)) == [1]
        assert (await fields(client, s, "a"))["status"] == State.SENT
        # b's holder died: the claim that takes it next ends it, without a call
        assert await claim(client, s, "w2.1", ["b"]) == []
        ended = await fields(client, s, "b")
        assert ended["status"] == State.CANCELLED
        assert orjson.loads(ended["error"])["reason"] == "operator"

    run(s, go)


def test_a_replayed_dead_letter_is_sent_even_if_a_cancel_was_asked_while_it_was_held(
    redis_server: RedisServer,
) -> None:
    """A cancel asked while a worker held a delivery whose outcome was then a dead letter: the
    operator's later replay is what counts. The replayed delivery is claimed and sent, not ended
    by the old mark."""
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        from worker import campaigns

        await accept(client, s, ["a"])
        (held,) = await claim(client, s, "w1.1", ["a"])
        assert await campaigns.cancel_delivery(client, s, "a") is False  # held: marked
        assert await write(client, s, Outcome(held, Event.DEAD_LETTER, reason="attempts")) == [1]
        assert (await fields(client, s, "a"))["status"] == State.DEAD
        assert await deadletters.replay(client, s, ["a"]) == ["a"]
        (again,) = await claim(client, s, "w2.1", ["a"])
        assert again.previous is State.QUEUED
        assert await write(client, s, sent(again)) == [1]
        assert (await fields(client, s, "a"))["status"] == State.SENT

    run(s, go)


def test_a_claim_sent_again_with_its_token_takes_back_what_it_got(redis_server: RedisServer) -> None:
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b"])
        first = await claim(client, s, "w1.7", ["a", "b"])
        again = await claim(client, s, "w1.7", ["a", "b"])  # the first answer was lost
        assert [d.id for d in again] == [d.id for d in first] == ["a", "b"]
        assert [d.previous for d in again] == [State.QUEUED, State.QUEUED]  # not mistaken for a reclaim

    run(s, go)


def test_an_id_named_twice_in_one_claim_is_claimed_once(redis_server: RedisServer) -> None:
    """One scheduler round can both release an id and sweep it (its wait fell due as its
    deadline passed): the message names it twice. Before, the second copy met the same-token
    rule above and the engine sent the delivery twice."""
    s = make_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b"])
        claimed = await claim(client, s, "w1.8", ["a", "b", "a"])
        assert [d.id for d in claimed] == ["a", "b"]
        again = await claim(client, s, "w1.8", ["a", "a", "b"])  # its answer lost: asked again
        assert [d.id for d in again] == ["a", "b"]

    run(s, go)


def test_a_side_effect_redis_refuses_cannot_hold_the_outcomes_back(redis_server: RedisServer) -> None:
    """A command of the write's side effects that Redis refuses as wrong, every time (here the
    page's waits index is a string: WRONGTYPE; before 1e16-second pauses overflowed EXPIRE the
    same way): after EFFECTS_TRIES the outcomes are written without the side effects, instead
    of retried forever with every later outcome of the process queued behind them."""
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a"])
        (d,) = await claim(client, s, "w1.9", ["a"])
        await client.set(keys.page_waits(PAGE), "not a sorted set")
        dropped = REGISTRY.get_sample_value("bmw_outcome_writes_total", {"result": "effects_dropped"}) or 0.0
        with capture_logs() as lines:
            (written,) = await asyncio.wait_for(
                write(client, s, Outcome(d, Event.WAIT, reason="page_paused", delay=30)), 15
            )
        assert written == 2  # record.lua landed with the first try: the last one finds it written
        assert (await fields(client, s, "a"))["status"] == State.SCHEDULED.value
        assert (
            REGISTRY.get_sample_value("bmw_outcome_writes_total", {"result": "effects_dropped"})
            == dropped + 1
        )
        assert [line["count"] for line in lines if line["event"] == "outcomes.effects_dropped"] == [1]

    run(s, go)


def test_a_pause_ends_within_400_days_whatever_was_asked(redis_server: RedisServer) -> None:
    """pause.lua caps a pause's end: 1e16 s overflowed its EXPIRE after the HSET (a half-written
    pause, and an outcome write retried forever); an end written so before is brought back too."""
    s = make_settings(redis_server)
    keys = Keys.of(s)
    cap = 400 * 86_400

    async def go(client: aioredis.Redis) -> None:
        now = time.time()  # the end is written to the millisecond, rounded: 1 ms of slack
        assert now + cap - 5 <= await pause_page(client, keys, PAGE, 1e16) <= time.time() + cap + 0.001
        assert 0 < await client.ttl(keys.pause(PAGE)) <= cap + 120
        await client.hset(keys.pause(PAGE), "until", "1e16")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await pause_page(client, keys, PAGE, 60) <= time.time() + cap + 0.001

    run(s, go)


def test_the_heartbeat_keeps_a_lease_and_reports_one_taken(redis_server: RedisServer) -> None:
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b"])
        held = await claim(client, s, "w1.1", ["a", "b"])
        lost: list[str] = []
        leases = Leases(client, s, lambda ds: lost.extend(d.id for d in ds))
        leases.hold("w1.1", held, time.time())
        before = float((await fields(client, s, "a"))["lease_until"])
        await asyncio.sleep(0.05)
        assert await leases.renew_once() == 0
        assert float((await fields(client, s, "a"))["lease_until"]) > before
        assert await client.zscore(keys.pending, "a") == pytest.approx(
            float((await fields(client, s, "a"))["lease_until"]) + 1
        )
        # b's lease ran out and another worker claimed it: the heartbeat finds out
        await claim(client, s, "w2.1", ["b"], now=time.time() + s.delivery_lease_seconds + 1)
        assert await leases.renew_once() == 1
        assert lost == ["b"]
        assert leases.is_lost(held[1])
        assert not leases.is_lost(held[0])

    run(s, go)


def test_the_sweeper_leaves_a_renewed_lease_and_takes_an_abandoned_one(redis_server: RedisServer) -> None:
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> list[str]:
        await accept(client, s, ["live", "dead"])
        await claim(client, s, "w1.1", ["live", "dead"])
        later = time.time() + s.delivery_lease_seconds + 2
        # the live holder renewed (its lease reaches past `later`); the other stopped renewing
        await client.hset(keys.delivery("live"), "lease_until", repr(later + 30))  # type: ignore[misc]
        swept = await scripts.run(
            client,
            "sweep",
            keys=[keys.pending, keys.sched, keys.open],
            args=[repr(later), 100, s.sweep_after_seconds, keys.delivery_prefix],
        )
        return [i.decode() for i in swept]

    assert run(s, go) == ["dead"]


def test_final_records_are_outcomes_and_dead_letters_keep_everything(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, record_retention=3600)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["ok", "bad"], external_id="braze-user-1", idempotency_key="k")
        ok, bad = await claim(client, s, "w1.1", ["ok", "bad"])
        # ok failed once before it was sent: the old error must not stay in its status
        await write(client, s, Outcome(ok, Event.RETRY, reason="transient", delay=0))
        assert "error" in await fields(client, s, "ok")
        (ok,) = await claim(client, s, "w1.2", ["ok"])
        assert await write(client, s, sent(ok), Outcome(bad, Event.DEAD_LETTER, reason="max_attempts")) == [
            1,
            1,
        ]
        rec = await fields(client, s, "ok")
        assert rec["status"] == State.SENT
        assert rec["message_id"] == "m_1"
        assert rec["done"] == outcomes.done_digest("w1.2")
        assert not {"body", "psid", "token", "external_id", "idempotency_key", "claim", "error"} & set(rec)
        # no hash of its own any more: one value in the bucket of the hour it ended in, which
        # expires RECORD_RETENTION after that hour
        assert await client.exists(keys.delivery("ok")) == 0
        bucket = await outcome_bucket(client, s, "ok")
        hour = int(bucket.split(":")[-2])
        assert hour == int(time.time() // outcomes.SPAN)
        assert await client.expiretime(bucket) == (hour + 1) * outcomes.SPAN + 3600  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        stored = await client.hget(bucket, "ok")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert outcomes.unpack(stored) == rec
        assert len(stored) < 200, stored
        dead = await fields(client, s, "bad")
        assert dead["status"] == State.DEAD
        assert {"body", "psid"} <= set(dead)  # replayable
        assert await client.ttl(keys.delivery("bad")) == -1  # kept until replayed or purged
        assert await client.zscore(keys.dead, "bad") is not None
        assert await counted(client, keys) == {}
        assert await client.zcard(keys.pending) == 0
        minute = int(time.time() // 60)
        assert int(await client.get(keys.stats(minute, State.SENT)) or 0) == 1

    run(s, go)


def test_outcomes_share_listpack_buckets_and_a_retried_write_is_recognised(redis_server: RedisServer) -> None:
    """Many outcomes of an hour share a bucket per id suffix, held as a listpack whatever the
    body was (the open hash of a long body is a hashtable); a record call sent again after its
    answer was lost is answered "already written" from the outcome, and changes nothing."""
    s = make_settings(redis_server, record_retention=3600)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        # with RECOMMENDED_CONFIG (the tests' redis-server has Redis's defaults: an outcome is
        # longer than the default hash-max-listpack-value of 64, and the bucket a hashtable)
        defaults = await client.config_get(next(iter(RECOMMENDED_CONFIG)))
        await client.config_set(*next(iter(RECOMMENDED_CONFIG.items())))
        try:
            await check(client)
        finally:
            for name, value in defaults.items():
                await client.config_set(name, value)

    async def check(client: aioredis.Redis) -> None:
        long_body = orjson.dumps({"recipient": {"id": "x"}, "message": {"text": "y" * 1500}})
        ids = [f"{n:04d}ab12" for n in range(20)]  # one suffix: one bucket
        await accept(client, s, ids, external_id="u1")
        await client.hset(keys.delivery(ids[0]), "body", long_body.decode())  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await client.object("encoding", keys.delivery(ids[0])) == b"hashtable"
        claimed = await claim(client, s, "w1.1", ids)
        assert await write(client, s, *(sent(d) for d in claimed)) == [1] * 20
        bucket = await outcome_bucket(client, s, ids[0])
        assert await client.hlen(bucket) == 20  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await client.object("encoding", bucket) == b"listpack"
        assert await client.memory_usage(bucket) < 20 * 180
        before = await client.hget(bucket, ids[0])  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        digest = outcomes.done_digest(claimed[0].claim)
        assert bytes.fromhex(digest) in before  # the claim's digest, raw: record.lua compares it
        assert outcomes.unpack(before)["done"] == digest
        assert await write(client, s, sent(claimed[0])) == [2]
        assert await client.hget(bucket, ids[0]) == before  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await client.exists(keys.delivery(ids[0])) == 0
        # another claim's late outcome is still refused
        assert await write(
            client, s, Outcome(dataclasses.replace(claimed[1], claim="w9.9"), Event.FAIL, reason="permanent")
        ) == [0]

    run(s, go)


def test_parked_deliveries_leave_their_park_when_they_end(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, message_ttl=60)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["p"])
        (d,) = await claim(client, s, "w1.1", ["p"])
        assert await write(client, s, Outcome(d, Event.PARK, reason="outside_window")) == [1]
        assert await client.zcard(keys.park(PAGE, "psid-p")) == 1
        assert await client.zcard(keys.parked) == 1
        # its TTL passes: it is claimed once more and ends expired
        (again,) = await claim(client, s, "w1.2", ["p"], now=time.time() + 120)
        assert again.previous is State.PARKED
        assert await write(client, s, Outcome(again, Event.EXPIRE, reason="ttl")) == [1]
        assert await client.zcard(keys.park(PAGE, "psid-p")) == 0
        assert await client.zcard(keys.parked) == 0

    run(s, go)


def test_open_deliveries_are_counted_per_second_until_they_end_park_or_die(redis_server: RedisServer) -> None:
    """The backlog age's counts follow every transition: a delivery counts while it is open and
    not parked; ending, dying or parking takes it out, a release or a replay puts it back (at its
    acceptance second, or the replay's), and when everything has ended nothing is left."""
    from worker import status
    from worker.delivery.inbound import release_parked

    s = make_settings(redis_server, record_retention=3600)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        second = await accept(client, s, ["sent", "dead", "parked", "retried"], ago=40)
        assert await counted(client, keys) == {second: 4}
        done, dead, parked, retried = await claim(client, s, "w1.1", ["sent", "dead", "parked", "retried"])
        assert await write(
            client,
            s,
            sent(done),
            Outcome(dead, Event.DEAD_LETTER, reason="max_attempts"),
            Outcome(parked, Event.PARK, reason="outside_window"),
            Outcome(retried, Event.RETRY, reason="transient", delay=0),
        ) == [1, 1, 1, 1]
        assert await counted(client, keys) == {second: 1}  # only the retried one is a backlog
        # a retried write changes nothing
        assert await write(client, s, sent(done)) == [2]
        assert await counted(client, keys) == {second: 1}
        age = status.read(redis_server.client(), s).oldest_open_age_s
        assert 39 <= age <= 45, age
        # the user wrote: the parked one counts again, at the second it was accepted
        assert await release_parked(client, s, PAGE, "psid-parked") == ["parked"]
        assert await counted(client, keys) == {second: 2}
        # the dead letter is replayed: it counts from its replay
        assert await deadletters.replay(client, s, ["dead"]) == ["dead"]
        replayed = int(float((await fields(client, s, "dead"))["created_at"]))
        assert await counted(client, keys) == {second: 2, replayed: 1}
        held = await claim(client, s, "w1.2", ["dead", "parked", "retried"])
        assert await write(client, s, *(sent(d) for d in held)) == [1, 1, 1]
        assert await counted(client, keys) == {}
        assert status.read(redis_server.client(), s).oldest_open_age_s == 0.0
        assert await client.exists(keys.open) == 0

    run(s, go)


def test_the_open_set_before_the_counts_is_read_and_emptied(redis_server: RedisServer) -> None:
    """An upgrade: deliveries accepted by the version before are members of P:open and were never
    counted. Status reads their age there; as they end or park they leave it without touching a
    count, a released one is counted from then on, and the set is gone with its last member."""
    from worker import status
    from worker.delivery.inbound import release_parked

    s = make_settings(redis_server, record_retention=3600)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        old_second = await accept(client, s, ["old-a", "old-b"], legacy=True, ago=100)
        new_second = await accept(client, s, ["new"], ago=10)
        age = status.read(redis_server.client(), s).oldest_open_age_s
        assert 99 <= age <= 105, age
        old_a, old_b = await claim(client, s, "w1.1", ["old-a", "old-b"])
        assert await write(client, s, sent(old_a), Outcome(old_b, Event.PARK, reason="outside_window")) == [
            1,
            1,
        ]
        assert await client.zcard(keys.open) == 0  # both left the set before: one ended, one parked
        assert await counted(client, keys) == {new_second: 1}  # and no count was taken from "new"
        age = status.read(redis_server.client(), s).oldest_open_age_s
        assert 9 <= age <= 15, age
        assert await release_parked(client, s, PAGE, "psid-old-b") == ["old-b"]
        assert await counted(client, keys) == {new_second: 1, old_second: 1}
        held = await claim(client, s, "w1.2", ["old-b", "new"])
        assert await write(client, s, *(sent(d) for d in held)) == [1, 1]
        assert await counted(client, keys) == {}
        assert await client.exists(keys.open) == 0

    run(s, go)


def test_counts_older_than_two_message_ttls_are_pruned(redis_server: RedisServer) -> None:
    """A count whose delivery vanished (a manual DEL) would hold the backlog age up for ever: the
    housekeeping prunes seconds older than two MESSAGE_TTLs, in bounded batches, and a later
    decrement of a pruned second leaves nothing behind."""
    from worker.store import ages

    s = make_settings(redis_server, message_ttl=60)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        stale = await accept(client, s, ["stale"], ago=130)
        recent = await accept(client, s, ["recent"], ago=5)
        assert await ages.prune(client, keys, ages.horizon(time.time(), s.message_ttl)) == 1
        assert await counted(client, keys) == {recent: 1}
        (d,) = await claim(client, s, "w1.1", ["stale"], now=time.time())
        assert await write(client, s, Outcome(d, Event.EXPIRE, reason="ttl")) == [1]
        assert await counted(client, keys) == {recent: 1}  # -1 on the pruned second: removed at once
        assert stale not in await counted(client, keys)

    run(s, go)


def test_dead_letters_by_id_however_old_and_purge_only_the_dead(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, dead_letter_retention=3600)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for i in range(1500):  # the oldest first: "d0" died first
            pipe.hset(keys.delivery(f"d{i}"), mapping={"status": State.DEAD, "page_id": PAGE})
            pipe.zadd(keys.dead, {f"d{i}": now - 1500 + i})
        pipe.hset(keys.delivery("alive"), mapping={"status": State.QUEUED, "page_id": PAGE})
        pipe.zadd(keys.dead, {"alive": now})  # a stale entry: must not be deleted by a purge
        await pipe.execute()
        flt = deadletters.Filter(limit=10)
        newest = await deadletters.list_dead(client, s, flt)
        assert [v["delivery_id"] for v in newest][:2] == ["d1499", "d1498"]
        found = await deadletters.find_dead(client, s, ["d3", "missing", "d1400"], deadletters.Filter())
        assert [v["delivery_id"] for v in found] == ["d3", "d1400"]
        assert await deadletters.purge(client, s, ["d3", "alive"]) == 1
        assert (await fields(client, s, "alive"))["status"] == State.QUEUED
        assert await client.exists(keys.delivery("d3")) == 0
        # DEAD_LETTER_RETENTION=3600: none is that old yet; an hour later, a chunk of them are
        assert await deadletters.purge_expired(client, s, now=now) == 0
        assert await deadletters.purge_expired(client, s, now=now + 3600) == deadletters.RETENTION_CHUNK

    run(s, go)


def test_listing_dead_letters_pages_by_death_time_not_by_offset(redis_server: RedisServer) -> None:
    """Letters dying while a listing pages through the set shifted an offset-paged listing: some
    were listed twice. By a cursor on the time of death, each is listed once, newest first, ties
    of one death time (600 here, over page edges) included; what dies meanwhile is newer than
    the cursor and left to the next listing."""
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for i in range(1200):  # d0..d599 died in one instant; d600.. one a second after
            pipe.hset(keys.delivery(f"d{i:04}"), mapping={"status": State.DEAD, "page_id": PAGE})
            pipe.zadd(keys.dead, {f"d{i:04}": now - 2000 if i < 600 else now - 1200 + i})
        await pipe.execute()
        original, pages = client.zrevrangebyscore, []

        async def paging(*args: Any, **kwargs: Any) -> Any:
            got = await original(*args, **kwargs)
            pages.append(len(got))
            await client.hset(
                keys.delivery(f"new{len(pages)}"), mapping={"status": State.DEAD, "page_id": PAGE}
            )  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            await client.zadd(keys.dead, {f"new{len(pages)}": time.time()})  # one died meanwhile
            return got

        client.zrevrangebyscore = paging  # type: ignore[method-assign]  # deaths between pages
        listed = [
            v["delivery_id"] for v in await deadletters.list_dead(client, s, deadletters.Filter(limit=5000))
        ]
        assert len(pages) >= 3  # it paged (500 a page)
        # what died after the listing began is newer than its cursor: not in it; the rest once each
        assert len(listed) == len(set(listed)) == 1200
        assert listed[:600] == [f"d{i:04}" for i in range(1199, 599, -1)]
        assert sorted(listed[600:]) == [f"d{i:04}" for i in range(600)]

    run(s, go)


def test_the_sweeper_leaves_a_queued_delivery_waiting_in_a_backlog(redis_server: RedisServer) -> None:
    """A QUEUED delivery past its deadline while messages wait in the queue is merely waiting in a
    backlog: no second message for it (the backlog is not amplified); once the queue is empty, a
    lost message's ids are re-enqueued."""
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def sweep(client: aioredis.Redis, at: float) -> list[str]:
        swept = await scripts.run(
            client,
            "sweep",
            keys=[keys.pending, keys.sched, keys.open, keys.queue],
            args=[repr(at), 100, s.sweep_after_seconds, keys.delivery_prefix],
        )
        return [i.decode() for i in swept]

    async def go(client: aioredis.Redis) -> tuple[list[str], float, list[str]]:
        await accept(client, s, ["old"])
        await client.delete(keys.queue)
        await client.rpush(keys.queue, "a message ahead of it")  # type: ignore[misc]
        later = time.time() + s.sweep_after_seconds + 1
        waiting = await sweep(client, later)
        deadline = await client.zscore(keys.pending, "old")
        await client.delete(keys.queue)  # the backlog drained, and "old" was never claimed: lost
        return waiting, float(deadline or 0), await sweep(client, later + s.sweep_after_seconds + 1)

    waiting, deadline, lost = run(s, go)
    assert waiting == []
    assert deadline > time.time() + s.sweep_after_seconds - 5  # postponed, not dropped
    assert lost == ["old"]


HEX_ID = "ab" * 16  # a delivery id as the intake makes them


def test_a_sent_delivery_joins_its_recipients_unread_field_in_the_bucket_of_its_window(
    redis_server: RedisServer,
) -> None:
    """Sends to one recipient append their entries (id and outcome hour, 20 bytes each) to its
    field of the unread bucket of the window (RECORD_RETENTION long), which expires at the end of
    the next window; no set of its own is written (P:unread: is only read, for the deliveries
    from before)."""
    retention = 10_000_000  # 115 days: no test here runs across a window's edge
    s = make_settings(redis_server, record_retention=retention)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, [HEX_ID, "d0"], psid="same")
        (d1,) = await claim(client, s, "w1.1", [HEX_ID])
        assert await write(client, s, sent(d1)) == [1]
        (d0,) = await claim(client, s, "w1.2", ["d0"])
        assert await write(client, s, sent(d0)) == [1]
        now = time.time()
        window = int(now // retention)
        bucket = unread.bucket(keys.unread_bucket_prefix, window, PAGE, "same")
        field = unread.field(PAGE, "same")
        assert len(field) == unread.FIELD // 2  # a digest's raw bytes, not "{page}:{psid}"
        assert await client.hkeys(bucket) == [field]  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        # redis-py: Awaitable[T] | T, and its stubs type a field as str where Redis takes bytes
        value = await client.hget(bucket, field)  # type: ignore[misc,arg-type]
        entries = unread.entries(value)
        assert [e[0] for e in entries] == [HEX_ID, "d0"]
        hour = int(now // outcomes.SPAN)
        # an id as the intake makes them: its 16 raw bytes and the hour's 3 (a test's "d0": text)
        assert len(unread.entry(HEX_ID, hour)) == unread.ENTRY
        # each entry is its id and its outcome's hour, nothing more: the outcome has its send time
        assert value in (
            unread.entry(HEX_ID, hour) + unread.entry("d0", hour),
            unread.entry(HEX_ID, hour - 1) + unread.entry("d0", hour),  # written across an hour's edge
        )
        for delivery_id, hour in entries:
            rec = await fields(client, s, delivery_id)
            assert rec["sent_at"]
            assert await client.hexists(outcomes.bucket(keys, hour, delivery_id), outcomes.field(delivery_id))  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; a field typed str, Redis takes bytes
        # its expiry comes from the seal pass once the window is over, not from the write
        assert await client.expiretime(bucket) == -1  # type: ignore[misc]  # redis-py types it sync
        layout = next(
            x for x in seals.layouts(keys, s.record_retention, s.idempotency_ttl) if x.name == "unread"
        )
        assert (
            await seals.step(client, layout, (window + 1) * retention, names=16**unread.SUFFIX)
            == 16**unread.SUFFIX
        )
        assert await client.expiretime(bucket) == (window + 2) * retention  # type: ignore[misc]  # redis-py types it sync
        assert await client.object("encoding", bucket) == b"listpack"
        assert await client.exists(keys.unread(PAGE, "same")) == 0
        # a new shard: no version before wrote a hex field here, so none is ever looked for
        assert await client.hget(keys.unread_bucket_prefix + "meta", "raw") == b"0"  # type: ignore[misc]  # redis-py: Awaitable[T] | T

    run(s, go)


def test_a_pause_is_logged_as_set_not_as_asked(redis_server: RedisServer) -> None:
    """A rate limit's answer asks 60 s, but the page is paused for 300 s already: the recorder
    learns the pause's real end from pause.lua and ``page.paused`` says it (an on-call engineer
    reading "60 s" would expect sends a minute later)."""
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> tuple[Outcome, float]:
        until = await pause_page(client, keys, PAGE, 300)
        await accept(client, s, ["paused-1"])
        (d,) = await claim(client, s, "w1", ["paused-1"])
        recorder = Recorder(client, s, PageTokens(s, source=""), LogObserver(s))
        o = Outcome(
            d, Event.WAIT, reason="rate_limited", delay=60, pause=PauseRequest(60, "rate_limited", 80006)
        )
        await recorder.record(o)
        return o, until

    with capture_logs() as logs:
        o, until = run(s, go)
    assert o.paused_until == pytest.approx(until, abs=0.01)
    (line,) = [e for e in logs if e["event"] == "page.paused"]
    assert line["asked_s"] == 60
    assert 290 < line["seconds"] <= 300, line
    assert line["until"] == pytest.approx(until, abs=0.01)

"""The limiter's Lua semantics against a real redis-server: burst, refill, classes, recipients, pauses.

Slots are compared on Redis's clock (``Grant.slot``): consecutive slots of a bucket are exactly one
interval apart however long the calls between them took, as long as each call comes before its
slot. Rates here leave 100 ms or more between slots, so a loaded machine's scheduling delays do
not move them; a delay relative to "now" is only checked where it is exact (a fresh bucket's
first slot, slots granted in one script call) or bounded from the side lag cannot break.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.conftest import RedisServer
from worker import status
from worker.config import Settings
from worker.ratelimit import Grant, Limiter

pytestmark = pytest.mark.integration
T = TypeVar("T")


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {"key_prefix": "rl" + uuid.uuid4().hex[:8], "_env_file": None}
    base.update(kw)
    return Settings(**base)


def run(redis_url: str, s: Settings, fn: Callable[[Limiter, aioredis.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await fn(Limiter(client, s), client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_burst_then_one_slot_per_interval(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=10, pace_burst=3, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> list[Grant]:
        return [await lim.acquire("p1", "text", "u") for _ in range(6)]

    grants = run(redis_server.url, s, go)
    assert all(g.granted for g in grants)
    # burst = min(pace_burst, 1% of 10/s) = 1 immediate slot, then one every 100 ms
    assert grants[0].delay == 0.0
    assert [round(g.slot - grants[0].slot, 4) for g in grants] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(0 < g.delay <= k * 0.1 + 1e-6 for k, g in enumerate(grants[1:], start=1))


def test_refill_after_idle(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=10, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[float, float]:
        first = await lim.acquire("p2", "text", "u")
        for _ in range(9):
            await lim.acquire("p2", "text", "u")
        busy = await lim.acquire("p2", "text", "u")
        await asyncio.sleep(max(0.0, busy.at - time.time()) + 0.2)  # the 11 reserved slots have passed
        idle = (await lim.acquire("p2", "text", "u")).delay
        return busy.slot - first.slot, idle

    busy, idle = run(redis_server.url, s, go)
    assert busy == pytest.approx(10 * 0.1, abs=1e-4)
    assert idle == 0.0


def test_text_and_media_are_separate_buckets(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=10, page_media_rate_limit=5, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[list[Grant], list[Grant]]:
        media = [await lim.acquire("p3", "media", "u") for _ in range(3)]
        text = [await lim.acquire("p3", "text", "u") for _ in range(3)]
        return media, text

    media, text = run(redis_server.url, s, go)
    assert [round(g.slot - media[0].slot, 4) for g in media] == [0.0, 0.2, 0.4]  # 5/s: 200 ms apart
    assert text[0].delay == 0.0  # text unaffected by media reservations
    assert [round(g.slot - text[0].slot, 4) for g in text] == [0.0, 0.1, 0.2]


def test_overrides_per_page(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=10, page_rate_overrides={"vip": {"text": 2}}, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[float, float]:
        vip = [await lim.acquire("vip", "text", "u") for _ in range(2)]
        other = [await lim.acquire("other", "text", "u") for _ in range(3)]
        return vip[1].slot - vip[0].slot, other[2].slot - other[0].slot

    vip, other = run(redis_server.url, s, go)
    assert vip == pytest.approx(0.5, abs=1e-4)  # 2/s
    assert other == pytest.approx(0.2, abs=1e-4)  # 10/s


def test_recipient_pace(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=1000, recipient_rate_limit=2, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[list[Grant], float]:
        same = [await lim.acquire("p4", "text", "alice") for _ in range(3)]
        other = (await lim.acquire("p4", "text", "bob")).delay
        return same, other

    same, other = run(redis_server.url, s, go)
    assert same[0].granted
    # alice's next message is not due for 0.5 s: nothing is reserved, the delivery comes back then
    assert (same[1].granted, same[2].granted) == (False, False)
    assert not same[1].paused  # the recipient's pace, not the page's pause
    assert 0.3 < same[1].delay <= 0.5  # 0.5 s after her first slot, less the time the calls took
    assert other < 0.01  # another recipient of the same page is not held back


def test_every_acquire_reserves_an_exact_slot(redis_server: RedisServer) -> None:
    """Far slots are reserved too (the engine defers the delivery with its slot): no thundering herd."""
    s = settings(page_rate_limit=10, pace_max_hold_seconds=0.25)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[list[Grant], list[Grant]]:
        raw = [await lim.acquire("p5", "text", "u") for _ in range(4)]
        near = await lim.wait_for_slot("p5", "text", "u")  # 0.4 s away: beyond the hold
        started = time.monotonic()
        await lim.acquire("p5c", "text", "u")
        await lim.acquire("p5c", "text", "u")
        held = await lim.wait_for_slot("p5c", "text", "u")  # 0.2 s away: awaited here
        return raw, [near, held, Grant(True, time.monotonic() - started)]

    raw, others = run(redis_server.url, s, go)
    assert all(g.granted for g in raw)
    assert [round(g.slot - raw[0].slot, 4) for g in raw] == [0.0, 0.1, 0.2, 0.3]
    near, held, elapsed = others
    assert near.granted
    assert near.slot - raw[0].slot == pytest.approx(0.4, abs=1e-4)  # handed back: the engine defers with it
    assert near.delay > 0.25  # beyond the hold
    assert held.delay == 0.0  # awaited within the hold
    assert 0.19 <= elapsed.delay < 2.0  # waited for its slot (never early), not deferred


def test_paused_page_grants_nothing(redis_server: RedisServer) -> None:
    s = settings()

    async def go(lim: Limiter, c: aioredis.Redis) -> Grant:
        pause = {"until": repr(time.time() + 30), "reason": "token_invalid"}
        await c.hset(f"{s.key_prefix}:pause:p6", mapping=pause)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        return await lim.acquire("p6", "text", "u")

    grant = run(redis_server.url, s, go)
    assert not grant.granted
    assert grant.paused  # a wait for the page, not for pacing
    assert grant.delay == pytest.approx(30, abs=1)


def test_slow_down_lowers_rate_and_recovers(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=10, pace_recovery_per_second=0.5, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[float, float, float]:
        factor = await lim.slow_down("p7")
        slowed = [await lim.acquire("p7", "text", "u") for _ in range(3)]
        await asyncio.sleep(1.1)  # +0.5/s recovery: back to 1.0, and the slowed slots have passed
        fresh = [await lim.acquire("p7", "text", "u") for _ in range(3)]
        return factor, slowed[2].slot - slowed[0].slot, fresh[2].slot - fresh[1].slot

    factor, slow, gap = run(redis_server.url, s, go)
    assert factor == pytest.approx(0.5)
    # 5/s instead of 10/s: two slots about 200 ms apart (a little less: the rate recovers by 0.5/s
    # from the moment it was halved, so each ms the calls take shortens the next interval)
    assert 0.3 < slow <= 0.4 + 1e-4
    assert gap == pytest.approx(0.1, abs=1e-3)  # recovered: 10/s again


def test_status_view(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=100)

    async def go(lim: Limiter, _c: aioredis.Redis) -> None:
        await lim.acquire("p8", "text", "u")

    run(redis_server.url, s, go)
    rows = status.read(redis_server.client(), s).pages
    assert [(r.page_id, r.kind, r.rate_limit) for r in rows] == [("p8", "text", 100.0)]
    assert rows[0].paused_until is None


def test_fail_closed_without_redis() -> None:
    s = settings()

    async def go() -> None:
        client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        try:
            await Limiter(client, s).acquire("p9", "text", "u")
        finally:
            await client.aclose()

    with pytest.raises((redis.exceptions.ConnectionError, OSError)):
        asyncio.run(go())


def test_acquire_many_reserves_consecutive_slots(redis_server: RedisServer) -> None:
    """One round trip for a batch: the same slots as the same number of single acquires."""
    s = settings(page_rate_limit=10, pace_burst=1, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[list[Grant], Grant]:
        many = await lim.acquire_many("m1", "text", 5)
        after = await lim.acquire("m1", "text", "u")
        return many, after

    many, after = run(redis_server.url, s, go)
    assert [round(g.delay, 3) for g in many] == [0.0, 0.1, 0.2, 0.3, 0.4]  # one call: one "now"
    assert all(g.granted and not g.probe for g in many)
    assert [round(b.slot - a.slot, 3) for a, b in itertools.pairwise(many)] == [0.1] * 4
    assert after.slot - many[0].slot == pytest.approx(0.5, abs=1e-4)  # the bucket moved on by five slots


def test_acquire_many_leaves_paused_pages_and_recipient_pace_to_acquire(redis_server: RedisServer) -> None:
    s = settings(page_rate_limit=100)

    async def go(lim: Limiter, c: aioredis.Redis) -> tuple[list[Grant], bool]:
        pause = {"until": repr(time.time() - 1), "reason": "rate_limited"}  # over, probe not yet sent
        await c.hset(f"{s.key_prefix}:pause:m2", mapping=pause)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        grants = await lim.acquire_many("m2", "text", 3)
        probe = (await lim.acquire("m2", "text", "u")).probe  # the single path sends the probe
        return grants, probe

    grants, probe = run(redis_server.url, s, go)
    assert grants == []
    assert probe

    paced = settings(page_rate_limit=100, recipient_rate_limit=1)
    assert run(redis_server.url, paced, lambda lim, _c: lim.acquire_many("m3", "text", 3)) == []


def test_acquire_pages_takes_every_page_of_a_batch_in_one_call(redis_server: RedisServer) -> None:
    """A batch spread over pages: one script call for all of them, each page's slots as its own
    acquire_many would give, a paused page left to acquire()."""
    s = settings(page_rate_limit=10, pace_burst=1, pace_max_hold_seconds=10)

    async def go(lim: Limiter, c: aioredis.Redis) -> tuple[list[list[Grant]], int, list[Grant]]:
        await c.hset(f"{s.key_prefix}:pause:g2", mapping={"until": repr(time.time() + 60)})  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await lim.acquire_pages([("g0", "text", 1)])  # the script is loaded: count calls from here
        before = (await c.info("commandstats"))["cmdstat_evalsha"]["calls"]
        groups = await lim.acquire_pages(
            [("g1", "text", 3), ("g2", "text", 2), ("g3", "media", 2), ("g4", "text", 0)]
        )
        calls = (await c.info("commandstats"))["cmdstat_evalsha"]["calls"] - before
        after = await lim.acquire_many("g1", "text", 1)
        return groups, calls, after

    groups, calls, after = run(redis_server.url, s, go)
    assert calls == 1
    g1, g2, g3, g4 = groups
    assert [round(g.delay, 3) for g in g1] == [0.0, 0.1, 0.2]
    assert g2 == []  # paused: each send asks acquire(), which runs the pause logic
    assert len(g3) == 2
    assert g4 == []
    assert after[0].slot - g1[0].slot == pytest.approx(0.3, abs=1e-4)  # g1's bucket moved on by three


def test_slots_convert_to_the_local_clock_never_early(redis_server: RedisServer) -> None:
    """The slot's local due time is at or after the moment Redis says it is (same host here)."""
    s = settings(page_rate_limit=50, pace_max_hold_seconds=10)

    async def go(lim: Limiter, _c: aioredis.Redis) -> list[tuple[float, float]]:
        out = []
        for _ in range(5):
            before = time.time()
            grant = await lim.acquire("c1", "text", "u")
            out.append((before, grant.at - grant.delay))  # the local time of Redis's "now"
        return out

    pairs = run(redis_server.url, s, go)
    for before, redis_now_local in pairs:
        assert redis_now_local >= before - 0.002  # not before we asked (clock resolution aside)


def test_wait_for_slot_honours_a_reservation(redis_server: RedisServer) -> None:
    """A slot reserved earlier is awaited (near), handed back unchanged (far), or replaced (stale)."""
    s = settings(page_rate_limit=10, pace_max_hold_seconds=0.3)

    async def go(lim: Limiter, _c: aioredis.Redis) -> tuple[Grant, float, Grant, Grant, Grant]:
        lim.clock.observe(int(time.time() * 1_000_000))  # same host: offset ~0
        started = time.monotonic()
        near = await lim.wait_for_slot("r1", "text", "u", reserved=time.time() + 0.15)
        waited = time.monotonic() - started
        far_slot = time.time() + 5
        far = await lim.wait_for_slot("r1", "text", "u", reserved=far_slot)
        stale = await lim.wait_for_slot("r2", "text", "u", reserved=time.time() - 2)
        fresh = await lim.acquire("r2", "text", "u")
        # a slot that was free when reserved is used however late: no new slot is taken
        late_free = await lim.wait_for_slot("r3", "text", "u", reserved=time.time() - 2, reserved_free=True)
        untouched = await lim.acquire("r3", "text", "u")
        assert late_free.delay == 0.0
        assert untouched.delay == 0.0  # the bucket's first slot is still there
        return near, waited, far, stale, fresh

    near, waited, far, stale, fresh = run(redis_server.url, s, go)
    assert near.granted
    assert near.delay == 0.0
    assert 0.14 <= waited < 2.0  # awaited (never early), not deferred
    assert far.granted
    assert far.delay > 0
    assert far.at - time.time() > 4
    assert stale.granted
    assert stale.delay == 0.0
    assert fresh.slot - stale.slot == pytest.approx(0.1, abs=1e-4)  # ... and it used the bucket's first slot

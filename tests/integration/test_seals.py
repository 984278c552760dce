"""The seal pass (worker/store/seals.py, store/lua/seal.lua) against a real redis-server: the
buckets of outcomes, unread deliveries and Idempotency-Keys get their expiry once per window from
the workers' housekeeping, not from every write, and no bucket is left without one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.conftest import RedisServer, base_env
from tests.integration.test_fence import accept, claim, make_settings, run, sent, write
from worker import status
from worker.config import PageTokens
from worker.delivery.scheduler import Scheduler
from worker.store import Keys, outcomes, seals

pytestmark = pytest.mark.integration

IDS = [f"{n:032x}" for n in (0xA1, 0xB2, 0xC3)]  # hex ids, as the intake makes them


def _hget(client: aioredis.Redis, key: str, field: str) -> Any:
    return client.hget(key, field)


async def _send(client: aioredis.Redis, s: Any, ids: list[str], token: str) -> None:
    await accept(client, s, ids)
    assert await write(client, s, *(sent(d) for d in await claim(client, s, token, ids))) == [1] * len(ids)


def test_outcome_buckets_get_their_expiry_from_the_pass_once_their_hour_is_over(
    redis_server: RedisServer,
) -> None:
    s = make_settings(redis_server, record_retention=7200)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await _send(client, s, IDS, "w1")
        hour = int(time.time() // outcomes.SPAN)
        buckets = [outcomes.bucket(keys, hour, i) for i in IDS]
        if await client.exists(*buckets) != len(buckets):
            pytest.skip("written across an hour's edge")
        # the first write on the shard starts the windows at its own hour; no expiry per write
        assert await _hget(client, keys.outcome_meta, f"open:{outcomes.SPAN}") == str(hour).encode()
        assert [await client.ttl(b) for b in buckets] == [-1, -1, -1]
        # nothing is due while the hour lasts
        assert await seals.run(client, keys, s, now=time.time(), calls=100, budget_s=60) == 0
        # once it is over: every name of the hour (16**4), its buckets with the expiry a write gave
        done = await seals.run(client, keys, s, now=(hour + 1) * outcomes.SPAN + 1, calls=100, budget_s=60)
        assert done >= 16**outcomes.SUFFIX
        assert [await client.expiretime(b) for b in buckets] == [(hour + 1) * outcomes.SPAN + 7200] * 3  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await _hget(client, keys.outcome_meta, f"found:{outcomes.SPAN}") == b"3"
        assert await _hget(client, keys.outcome_meta, f"sealing:{outcomes.SPAN}") is None
        # a write into the hour now (a writer whose clock is behind) sets the expiry itself:
        # here, the pass has begun the current hour (open past it)
        await client.hset(keys.outcome_meta, f"open:{outcomes.SPAN}", str(hour + 1))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        late = f"{0xD4:032x}"
        await _send(client, s, [late], "w2")
        bucket = outcomes.bucket(keys, int(time.time() // outcomes.SPAN), late)
        assert await client.ttl(bucket) > 0

    run(s, go)


def _layout(prefix: str, length: int, digits: int = 3) -> seals.Layout:
    """A layout of few names (16**digits), so a test can run its windows whole; a bucket of
    window w expires at (w + 5) * length + 5 (so one a few windows old is not already past)."""
    return seals.Layout("test", prefix + "meta", prefix, length, k=5, extra=5, digits=digits)


def test_the_pass_goes_window_by_window_in_bounded_calls_that_share_one_cursor(
    redis_server: RedisServer,
) -> None:
    s = make_settings(redis_server)
    layout = _layout(f"{s.key_prefix}:t:", 3600)
    window = int(time.time() // 3600) - 3  # three windows behind, as after workers were down

    async def go(client: aioredis.Redis) -> None:
        await client.hset(layout.meta, "open:3600", str(window))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        names = [f"{layout.prefix}{window}:{n:03x}" for n in (0, 0x7FF, 0xFFF)]
        for name in names:
            await client.hset(name, "f", "v")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        other = aioredis.Redis.from_url(s.redis_url)  # a second worker's calls continue the first's
        try:
            done = [await seals.step(c, layout, time.time(), names=1500) for c in (client, other, client)]
        finally:
            await other.aclose()
        assert done == [1500, 1500, 1096]
        assert [await client.expiretime(n) for n in names] == [(window + 5) * 3600 + 5] * 3  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert await _hget(client, layout.meta, "found:3600") == b"3"
        # the next windows, empty, then nothing: the current one is not over
        for w in (window + 1, window + 2):
            assert await seals.step(client, layout, time.time(), names=4096) == 4096
            assert await _hget(client, layout.meta, "open:3600") == str(w + 1).encode()
        assert await seals.step(client, layout, time.time(), names=4096) == 0
        # an empty window of the length this process uses does not retire it
        assert await _hget(client, layout.meta, "idle:3600") is None

    run(s, go)


def test_a_length_no_longer_used_is_sealed_up_to_now_then_retired(redis_server: RedisServer) -> None:
    """After a change of the window length, the windows of the one before still get their pass;
    once a whole window of it is empty its writers have stopped: its windows up to the one after
    now's are done at once and it is retired (a write with it then sets its own expiry)."""
    s = make_settings(redis_server)
    old = _layout(f"{s.key_prefix}:r:", 3600, digits=2)
    new = seals.Layout(old.name, old.meta, old.prefix, 7200, old.k, old.extra, old.digits)
    current = int(time.time() // 3600)

    async def go(client: aioredis.Redis) -> None:
        await client.hset(old.meta, "open:3600", str(current - 2))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await client.hset(f"{old.prefix}{current - 2}:0a", "f", "v")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        now = time.time()
        assert await seals.step(client, new, now, names=256) == 256  # had a bucket: not idle
        assert await _hget(client, old.meta, "idle:3600") is None
        assert await seals.step(client, new, now, names=256) == 256  # empty: idle
        assert await _hget(client, old.meta, "idle:3600") == b"1"
        # the current window and the next are begun without waiting, then the length retires
        assert [await seals.step(client, new, now, names=256) for _ in range(3)] == [256, 256, 0]
        assert float(await _hget(client, old.meta, "open:3600")) >= 1e15
        assert await client.ttl(f"{old.prefix}{current - 2}:0a") > 0
        # a process that uses it again (its pass) takes it back from the next window on
        assert await seals.step(client, old, now, names=256) == 0
        assert await _hget(client, old.meta, "open:3600") == str(current + 1).encode()

    run(s, go)


def test_short_windows_keep_an_expiry_per_write(redis_server: RedisServer) -> None:
    """A RECORD_RETENTION under SEAL_MIN: the unread buckets get their expiry from the write, as
    the outcome buckets of ids that are not hex do (no pass can name them)."""
    s = make_settings(redis_server, record_retention=seals.SEAL_MIN - 1)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        await _send(client, s, ["not-hex-1"], "w1")
        unread = [k async for k in client.scan_iter(match=f"{keys.unread_bucket_prefix}*:*")]
        assert unread
        assert [k for k in unread if await client.ttl(k) <= 0] == []
        meta = await client.hgetall(keys.unread_bucket_prefix + "meta")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert not [f for f in meta if f.startswith(b"open:")]
        assert await client.ttl(outcomes.bucket(keys, int(time.time() // outcomes.SPAN), "not-hex-1")) > 0

    run(s, go)


def test_the_workers_scheduler_runs_the_pass_in_its_housekeeping(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, record_retention=7200)
    keys = Keys.of(s)
    hour = int(time.time() // outcomes.SPAN) - 1
    bucket = outcomes.bucket(keys, hour, IDS[0])

    async def go(client: aioredis.Redis) -> None:
        # an outcome written an hour ago, left to the pass
        await client.hset(keys.outcome_meta, f"open:{outcomes.SPAN}", str(hour))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        await client.hset(bucket, outcomes.field(IDS[0]), b"x")  # type: ignore[misc,arg-type]  # redis-py: Awaitable[T] | T; its stubs type a field as str where Redis takes bytes
        for _ in range(200):  # each new scheduler's first tick runs the housekeeping
            await Scheduler(client, s, PageTokens(s, source="")).tick()
            if await client.ttl(bucket) > 0:
                break
        assert await client.expiretime(bucket) == (hour + 1) * outcomes.SPAN + 7200  # type: ignore[misc]  # redis-py: Awaitable[T] | T

    run(s, go)


def test_an_operator_seals_the_current_windows_before_a_rollback(redis_server: RedisServer) -> None:
    """``messenger-worker seal --through-now``: the current hour's outcome buckets get their expiry
    at once, and later writes into the hour set their own (as the version before them would)."""
    s = make_settings(redis_server, record_retention=7200)
    keys = Keys.of(s)
    hour = int(time.time() // outcomes.SPAN)

    async def write_one(client: aioredis.Redis, delivery_id: str, token: str) -> str:
        await _send(client, s, [delivery_id], token)
        return outcomes.bucket(keys, int(time.time() // outcomes.SPAN), delivery_id)

    first = run(s, lambda client: write_one(client, IDS[0], "w1"))
    env = base_env(
        redis_server.url,
        "http://127.0.0.1:9",
        KEY_PREFIX=s.key_prefix,
        QUEUE_NAME=s.queue_name,
        RECORD_RETENTION="7200",
    )
    done = subprocess.run(
        [sys.executable, "-m", "worker", "seal", "--through-now"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout)["bucket_names_sealed"]["0"] >= 16**outcomes.SUFFIX
    sync = redis_server.client()
    if int(time.time() // outcomes.SPAN) == hour:  # not across an hour's edge
        assert sync.expiretime(first) == (hour + 1) * outcomes.SPAN + 7200
        later = run(s, lambda client: write_one(client, IDS[1], "w2"))
        assert sync.ttl(later) > 0


def test_the_status_says_how_long_a_finished_window_has_waited_for_the_pass(
    redis_server: RedisServer,
) -> None:
    """``bucket_seal_lag_s`` (``messenger-worker status``, ``bmw_bucket_seal_lag_seconds``): 0
    while the pass keeps up; the time since the end of the oldest window still waiting otherwise
    (the alert BmwBucketSealLagging fires above two hours: no worker runs the pass)."""
    s = make_settings(redis_server, record_retention=7200)
    keys, sync = Keys.of(s), redis_server.client()
    now = time.time()
    hour = int(now // outcomes.SPAN)
    assert status.read(sync, s, now=now).bucket_seal_lag_s == 0.0
    sync.hset(keys.outcome_meta, f"open:{outcomes.SPAN}", str(hour - 3))  # three hours behind
    assert status.read(sync, s, now=now).bucket_seal_lag_s == pytest.approx(
        now - (hour - 2) * outcomes.SPAN, abs=0.1
    )
    assert b"bmw_bucket_seal_lag_seconds" in status.render_metrics([(s, sync)])
    run(s, lambda client: seals.run(client, keys, s, now=now, calls=1000, budget_s=60))
    assert status.read(sync, s, now=now).bucket_seal_lag_s == 0.0


def test_a_failing_pass_does_not_stop_the_schedulers_tick(redis_server: RedisServer) -> None:
    """A seal.lua error (here: a meta value it cannot read) is logged and left to the next run;
    the rest of the tick still runs."""
    s = make_settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> int:
        await client.hset(keys.outcome_meta, f"open:{outcomes.SPAN}", "not a number")  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        with pytest.raises(redis.exceptions.ResponseError):
            await seals.run(client, keys, s)
        return await Scheduler(client, s, PageTokens(s, source="")).tick()

    assert run(s, go) == 0

"""``pending`` holds one entry per queued batch and per claim of a batch, not one per delivery
(store/lua/sweep.lua): what each entry guarantees, against a real redis-server, with the intake's
own committer, the claim, the heartbeat's renew and the sweeper's script."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from tests.integration.test_group_commit import celery_args
from worker import status
from worker.config import Settings
from worker.intake.committer import GroupCommitter
from worker.messenger.validation import validate
from worker.states import State
from worker.store import Keys, campaign_ctx, scripts
from worker.store import connections as redisconn
from worker.store import envelope as broker

pytestmark = pytest.mark.integration
LEASE = 60


def _settings(redis: RedisServer) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        redis_url=redis.url,
        key_prefix=f"pu{tag}",
        queue_name=f"q{tag}",
        page_access_tokens={PAGE: PAGE_TOKEN},
        intake_insecure_no_auth=True,
        _env_file=None,
    )


def _accept(settings: Settings, n: int) -> list[str]:
    """``n`` requests committed together: one batch, one Celery message."""

    async def go() -> list[str]:
        client = redisconn.async_client(settings)
        committer = GroupCommitter(client, settings)
        try:
            requests = [
                validate(
                    orjson.dumps({"recipient": {"id": f"pu-{i}"}, "message": {"text": "hi"}}),
                    settings,
                    path_page_id=PAGE,
                )
                for i in range(n)
            ]
            results = await asyncio.gather(*(committer.submit(r, "", "r") for r in requests))
            return [delivery_id for delivery_id, accepted in results if accepted]
        finally:
            await client.aclose()

    return asyncio.run(go())


def _sweep(settings: Settings, at: float, limit: int = 100) -> list[str]:
    keys = Keys.of(settings)
    swept = scripts.run_sync(
        redisconn.sync_client(settings),
        "sweep",
        keys=[keys.pending, keys.sched, keys.open, keys.queue],
        args=[repr(at), limit, settings.sweep_after_seconds, keys.delivery_prefix, keys.batch_prefix],
    )
    return [i.decode() for i in swept]


def _claim(settings: Settings, batch: str, token: str, now: float) -> list[str]:
    keys = Keys.of(settings)
    _looked_at, _cancels, *flat = scripts.run_sync(
        redisconn.sync_client(settings),
        "claim",
        keys=[keys.pending, keys.batch(batch), keys.gather, keys.batch_taken(batch, token)],
        args=[
            repr(now),
            LEASE,
            keys.delivery_prefix,
            token,
            90,
            *campaign_ctx.of_settings(keys, settings, now),
            batch,
        ],
    )
    return [i.decode() for i in flat]


def _one_batch(redis_server: RedisServer) -> tuple[Settings, Any, list[str], str]:
    """Three deliveries committed together, on keys of their own: settings, a client, the ids and
    their batch."""
    settings = _settings(redis_server)
    client = redis_server.client()
    ids = _accept(settings, 3)
    assert len(ids) == 3
    (batch,) = celery_args(client.lrange(Keys.of(settings).queue, 0, 0)[0], broker.BATCH_TASK)
    return settings, client, ids, batch


def _entries(settings: Settings) -> dict[str, float]:
    client = redisconn.sync_client(settings)
    return {m.decode(): s for m, s in client.zrange(Keys.of(settings).pending, 0, -1, withscores=True)}


def test_a_batch_whose_message_was_lost_is_swept_whole_once_the_queue_has_drained(
    redis_server: RedisServer,
) -> None:
    settings, client, ids, batch = _one_batch(redis_server)
    keys = Keys.of(settings)
    # one entry for the three, SWEEP_AFTER_SECONDS ahead; the status counts three open
    assert _entries(settings) == {
        keys.batch_entry(batch): pytest.approx(time.time() + settings.sweep_after_seconds, abs=5)
    }
    assert status.read(client, settings).open == 3
    later = time.time() + settings.sweep_after_seconds + 1

    # past its deadline while messages wait in the queue: waiting in a backlog, not lost
    client.rpush(keys.queue, "a message ahead of it")
    assert _sweep(settings, later) == []
    assert _entries(settings)[keys.batch_entry(batch)] > later
    assert client.llen(keys.batch(batch)) == 3

    # the queue drained and the batch was never claimed: its message was lost
    client.delete(keys.queue)
    swept = _sweep(settings, later + settings.sweep_after_seconds + 1)
    assert swept == ids
    assert client.exists(keys.batch(batch)) == 0  # a late copy of the message finds nothing
    assert set(_entries(settings)) == set(ids)  # each waits for its own message now
    assert _claim(settings, batch, "late-copy", time.time()) == []
    assert keys.batch_entry(batch) not in _entries(settings)


def test_a_claim_keeps_one_entry_renewed_by_the_heartbeat_and_the_sweeper_takes_back_what_it_held(
    redis_server: RedisServer,
) -> None:
    settings, client, ids, batch = _one_batch(redis_server)
    keys = Keys.of(settings)
    now = time.time()
    assert _claim(settings, batch, "t1", now) == ids
    unit = keys.claim_entry(batch, "t1")
    assert _entries(settings) == {unit: pytest.approx(now + LEASE + 1)}  # no entry per delivery
    assert client.ttl(keys.batch_taken(batch, "t1")) == -1

    # the heartbeat moves the one entry with the leases
    lost = scripts.run_sync(
        client,
        "renew",
        keys=[keys.pending],
        args=[repr(now + 10), LEASE, keys.delivery_prefix, "t1", unit, *ids],
    )
    assert lost == []
    assert _entries(settings) == {unit: pytest.approx(now + 10 + LEASE + 1)}
    leases = [float(client.hget(keys.delivery(i), "lease_until")) for i in ids]
    assert leases == [pytest.approx(now + 10 + LEASE)] * 3

    # due before the leases end (another clock): nothing is taken, the entry waits for them
    client.zadd(keys.pending, {unit: now})
    assert _sweep(settings, now + 20) == []
    assert _entries(settings) == {unit: pytest.approx(now + 10 + LEASE + 1)}

    # its holder died: one outcome was written, one delivery is scheduled for a retry (its own
    # entry), one is still in flight under the claim; once the lease has ended only that one goes
    # back, with an entry of its own, and the claim's entry and list go
    client.hset(keys.delivery(ids[0]), mapping={"status": State.SENT.value, "claim": ""})
    client.hset(keys.delivery(ids[1]), mapping={"status": State.RETRYING.value, "claim": ""})
    client.zadd(keys.sched, {ids[1]: now + 500})
    client.zadd(keys.pending, {ids[1]: now + 500 + settings.sweep_after_seconds})
    after = now + 10 + LEASE + 2
    assert _sweep(settings, after) == [ids[2]]
    entries = _entries(settings)
    assert set(entries) == {ids[1], ids[2]}
    assert entries[ids[2]] == pytest.approx(after + settings.sweep_after_seconds)
    assert client.exists(keys.batch_taken(batch, "t1")) == 0

    # a claim of the named id takes it back (a reclaim: the lease had ended)
    reclaim = scripts.run_sync(
        client,
        "claim",
        keys=[keys.pending],
        args=[
            repr(after),
            LEASE,
            keys.delivery_prefix,
            "t2",
            90,
            *campaign_ctx.of_settings(keys, settings, after),
            ids[2],
        ],
    )
    assert reclaim[0] == 1
    assert reclaim[2].decode() == ids[2]  # after {looked at, cancels}


def test_a_sweep_looks_at_a_bounded_number_of_ids(redis_server: RedisServer) -> None:
    """An entry stands for up to QUEUE_BATCH_MAX ids: the limit counts ids, so one call stays short."""
    settings = _settings(redis_server)
    keys = Keys.of(settings)
    client = redis_server.client()
    batches: list[str] = []
    for _ in range(3):
        _accept(settings, 4)
        (newest,) = celery_args(client.lrange(keys.queue, 0, 0)[0], broker.BATCH_TASK)
        client.delete(keys.gather)  # the next commit starts a batch of its own
        batches.append(newest)
    client.delete(keys.queue)  # every message lost
    later = time.time() + settings.sweep_after_seconds + 1
    first = _sweep(settings, later, limit=5)
    assert len(first) == 8  # two batches (the second went over the limit), then it stopped
    assert sum(1 for m in _entries(settings) if m.startswith("b:")) == 1
    rest = _sweep(settings, later, limit=5)
    assert len(rest) == 4
    assert not [m for m in _entries(settings) if m.startswith("b:")]


def test_the_open_count_follows_the_deliveries_and_survives_a_prune(redis_server: RedisServer) -> None:
    """``P:open:c``: seeded from the per-second counts by the first script that finds it missing
    (an upgrade), kept by every script after, and a pruned second leaves it with its count."""
    from worker.store import ages

    settings = _settings(redis_server)
    keys = Keys.of(settings)
    client = redis_server.client()
    # an upgrade: two deliveries counted by the version before, in a second long ago
    old_second = int(time.time()) - 10 * 86_400
    client.hset(keys.open_counts, str(old_second), 2)
    client.zadd(keys.open_seconds, {str(old_second): old_second})
    _accept(settings, 3)
    assert int(client.get(keys.open_total)) == 5
    assert status.read(client, settings).open == 5
    # the housekeeping prunes the old second: its two leave the total with it
    gone = asyncio.run(_prune(settings, time.time() - 86_400))
    assert gone == 1
    assert int(client.get(keys.open_total)) == 3
    assert ages.first_second(client.zrange(keys.open_seconds, 0, 0, withscores=True)) is not None


async def _prune(settings: Settings, before: float) -> Any:
    from worker.store import ages

    client = redisconn.async_client(settings)
    try:
        return await ages.prune(client, Keys.of(settings), before)
    finally:
        await client.aclose()

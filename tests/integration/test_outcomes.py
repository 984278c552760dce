"""Final records as outcomes (worker/store/outcomes.py) against a real redis-server: the
receipts mark them, a record written before outcomes (a compacted hash) is still marked and read,
and a reader finds an outcome exactly as long as its bucket's hour is within the retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from worker.config import Settings
from worker.delivery.receipts import apply_receipts
from worker.states import State
from worker.store import Keys, outcomes, unread

pytestmark = pytest.mark.integration


def _settings(redis: RedisServer, **kw: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        redis_url=redis.url,
        key_prefix=f"o{tag}",
        queue_name=f"q{tag}",
        page_access_tokens={PAGE: PAGE_TOKEN},
        _env_file=None,
        **kw,
    )


def _run(s: Settings, scenario: Callable[[Any], Awaitable[None]]) -> None:
    """Run a scenario with a client of its own, closed after it (typed Any, as from_url gives it:
    redis-py types each async command Awaitable[T] | T)."""

    async def go() -> None:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            await scenario(client)
        finally:
            await client.aclose()

    asyncio.run(go())


async def _put(client: Any, keys: Keys, hour: int, delivery_id: str, rec: dict[str, str]) -> None:
    """An outcome as record.lua leaves it, in the bucket of the hour it ended in."""
    await client.hset(
        outcomes.bucket(keys, hour, delivery_id), outcomes.field(delivery_id), outcomes.pack(rec)
    )


def _sent(at: float, **extra: str) -> dict[str, str]:
    return {
        "status": State.SENT.value,
        "page_id": PAGE,
        "created_at": repr(at - 2),
        "updated_at": repr(at),
        "attempts": "1",
        "caller": "tok1",
        "message_id": f"m_{uuid.uuid4().hex[:6]}",
        "sent_at": repr(at),
        "campaign_id": "camp-1",
        **extra,
    }


def test_receipts_mark_outcomes_and_records_written_before_them(redis_server: RedisServer) -> None:
    s = _settings(redis_server, record_retention=7200)
    keys = Keys.of(s)
    now = time.time()
    fresh, legacy, newest = "a" * 28 + "0001", "b" * 28 + "0002", "c" * 28 + "0003"
    current, later, expired = "e" * 28 + "0005", "f" * 28 + "0006", "9" * 28 + "0007"
    hour = int(now // outcomes.SPAN)

    async def go(client: Any) -> None:
        await _put(client, keys, hour, fresh, _sent(now - 5, external_id="u1"))
        await client.hset(keys.delivery(legacy), mapping=_sent(now - 4, external_id="u2"))
        # the unread set from before buckets holds those two, the bucket the newest
        unread_before = keys.unread(PAGE, "psid-1")
        await client.zadd(unread_before, {fresh: now - 5, legacy: now - 4})
        await _put(client, keys, hour, newest, _sent(now - 3, external_id="u3"))
        for delivery_id, at in ((current, now - 2), (later, now + 5)):
            await _put(client, keys, hour, delivery_id, _sent(at))
        # the bucket: an entry written before, with its send time, in the field named
        # "{page}:{psid}" as it was then; one as text in the field named by its digest's hex
        # characters; and two as written now, binary, in the raw digest field, the outcome
        # holding the send time: one sent before the watermark, one after it, one whose
        # outcome is gone with its retention
        bucket = unread.bucket(keys.unread_bucket_prefix, int(now // 7200), PAGE, "psid-1")
        field = unread.field(PAGE, "psid-1")
        await client.hset(bucket, f"{PAGE}:psid-1", f"{newest},{now - 3!r},{hour}")
        await client.hset(bucket, unread.hex_field(PAGE, "psid-1"), f"{current},{hour}")
        await client.hset(bucket, field, unread.entry(later, hour) + unread.entry(expired, hour))
        # the versions that wrote them ran on this shard (without `fields`, none of them did)
        await client.hset(keys.unread_bucket_prefix + "meta", "fields", int(now) - 5)
        read = {"kind": "read", "page_id": PAGE, "psid": "psid-1", "watermark": now, "timestamp": now}
        assert await apply_receipts(client, s, [read]) == 8  # delivered and read, each
        assert await apply_receipts(client, s, [read]) == 0  # a replayed webhook: nothing
        assert await client.exists(unread_before) == 0  # read: no longer unread
        # only what was sent after the watermark stays unread
        assert await client.hgetall(bucket) == {field: unread.entry(later, hour)}
        assert "read_at" not in await outcomes.read(client, keys, later, s.record_retention)
        for delivery_id in (fresh, legacy, newest, current):
            rec = await outcomes.read(client, keys, delivery_id, s.record_retention)
            assert rec["status"] == State.SENT
            assert float(rec["read_at"]) == pytest.approx(now)
            assert float(rec["delivered_at"]) == pytest.approx(now)
            assert "external_id" not in rec  # the Braze user goes with the read receipt
        assert await client.exists(keys.delivery(fresh)) == 0  # still an outcome only
        counters = await client.hgetall(keys.campaign("camp-1"))
        assert counters[b"read"] == b"4"
        assert counters[b"delivered"] == b"4"

    _run(s, go)


@pytest.mark.parametrize(
    ("since", "old_field"),
    [("fields", lambda psid: f"{PAGE}:{psid}"), ("raw", lambda psid: unread.hex_field(PAGE, psid))],
    ids=["page-and-psid", "hex-digest"],
)
def test_a_field_written_before_is_read_only_while_one_may_live(
    redis_server: RedisServer, since: str, old_field: Any
) -> None:
    """Unread fields are digests since ``fields`` in P:u:meta, raw digests since ``raw``; a field
    written before either ("{page}:{psid}", the digest's hex characters) lives two windows at
    most: it is read until then, and no longer after."""
    s = _settings(redis_server, record_retention=7200)
    keys, now = Keys.of(s), time.time()
    hour = int(now // outcomes.SPAN)
    old_id, new_id, kept_id = "7" * 28 + "0008", "8" * 28 + "0009", "9" * 28 + "0010"

    async def go(client: Any) -> None:
        for delivery_id in (old_id, new_id, kept_id):
            await _put(client, keys, hour, delivery_id, _sent(now - 3))
        bucket = unread.bucket(keys.unread_bucket_prefix, int(now // 7200), PAGE, "psid-7")
        await client.hset(bucket, old_field("psid-7"), f"{old_id},{hour}")
        await client.hset(bucket, unread.field(PAGE, "psid-7"), unread.entry(new_id, hour))
        meta = keys.unread_bucket_prefix + "meta"
        await client.hset(meta, mapping={"fields": int(now), "raw": int(now)})
        delivery = {"kind": "delivery", "page_id": PAGE, "psid": "psid-7", "watermark": now, "timestamp": now}
        assert await apply_receipts(client, s, [delivery]) == 2  # within two windows: both fields
        for delivery_id in (old_id, new_id):
            assert "delivered_at" in await outcomes.read(client, keys, delivery_id, s.record_retention)
        # two windows later, the field written before is no longer read
        await client.hset(bucket, old_field("psid-7"), f"{kept_id},{hour}")
        await client.hset(meta, since, int(now - 2 * 7200 - 1))
        assert await apply_receipts(client, s, [delivery]) == 0
        assert "delivered_at" not in await outcomes.read(client, keys, kept_id, s.record_retention)

    _run(s, go)


def test_after_a_retention_change_receipts_read_the_unread_windows_of_the_retention_before(
    redis_server: RedisServer,
) -> None:
    """The unread buckets' windows are numbered by RECORD_RETENTION: after a change (P:u:meta),
    the receipts still find the deliveries of the windows numbered by the one before."""
    before = _settings(redis_server, record_retention=10_000_000)
    keys, now = Keys.of(before), time.time()
    hour = int(now // outcomes.SPAN)
    delivery_id = "d" * 28 + "0004"

    async def go(client: Any) -> None:
        await _put(client, keys, hour, delivery_id, _sent(now - 3))
        old = unread.bucket(keys.unread_bucket_prefix, int(now // 10_000_000), PAGE, "psid-9")
        await client.hset(old, f"{PAGE}:psid-9", f"{delivery_id},{now - 3!r},{hour}")
        await client.hset(keys.unread_bucket_prefix + "meta", "ttl", 10_000_000)
        after = before.model_copy(update={"record_retention": 7200})
        read = {"kind": "read", "page_id": PAGE, "psid": "psid-9", "watermark": now, "timestamp": now}
        assert await apply_receipts(client, after, [read]) == 2  # delivered and read
        assert float((await outcomes.read(client, keys, delivery_id, 7200))["read_at"]) == pytest.approx(now)
        meta = await client.hgetall(keys.unread_bucket_prefix + "meta")
        assert (meta[b"ttl"], meta[b"before"]) == (b"7200", b"10000000")

    _run(before, go)


def test_an_outcome_stored_under_its_hex_id_is_read_in_the_hours_before_raw_fields(
    redis_server: RedisServer,
) -> None:
    """An upgrade: outcomes were stored under the id's hex characters before raw fields. ``raw``
    in P:o:meta is the hour raw fields first ran; a hex field in a bucket of that hour or before
    is read (status API, look-ups, receipts), and a receipt's mark is written back under it."""
    s = _settings(redis_server, record_retention=7200)
    keys, now = Keys.of(s), time.time()
    hour = int(now // outcomes.SPAN)
    before, after = "a" * 28 + "0011", "b" * 28 + "0012"

    async def go(client: Any) -> None:
        await client.hset(keys.outcome_meta, "raw", hour - 1)
        old = outcomes.bucket(keys, hour - 1, before)
        await client.hset(old, before, outcomes.pack(_sent(now - 3600)))
        await client.hset(outcomes.bucket(keys, hour, after), after, outcomes.pack(_sent(now - 3)))
        assert (await outcomes.read(client, keys, before, 7200))["status"] == State.SENT
        assert await outcomes.read(client, keys, after, 7200) == {}  # a hex field after `raw`: none
        sync = redis_server.client()
        assert outcomes.read_many_sync(sync, keys, [before, after], 7200)[before]["status"] == State.SENT
        bucket = unread.bucket(keys.unread_bucket_prefix, int(now // 7200), PAGE, "psid-h")
        await client.hset(bucket, unread.field(PAGE, "psid-h"), unread.entry(before, hour - 1))
        read = {"kind": "read", "page_id": PAGE, "psid": "psid-h", "watermark": now, "timestamp": now}
        assert await apply_receipts(client, s, [read]) == 2  # delivered and read
        assert await client.hkeys(old) == [before.encode()]  # written back where it was
        assert float((await outcomes.read(client, keys, before, 7200))["read_at"]) == pytest.approx(now)

    _run(s, go)


def test_an_outcome_is_read_while_its_bucket_is_within_the_retention(redis_server: RedisServer) -> None:
    s = _settings(redis_server, record_retention=7200)
    keys = Keys.of(s)
    client = redis_server.client()
    now = 1_800_000_000.0  # a fixed clock: hour 500,000
    hour = int(now // outcomes.SPAN)
    try:
        for back, delivery_id in ((0, "x0000"), (1, "x0001"), (2, "x0002"), (3, "x0003")):
            rec = _sent(now - back * outcomes.SPAN)
            client.hset(outcomes.bucket(keys, hour - back, delivery_id), delivery_id, outcomes.pack(rec))
        found = outcomes.read_many_sync(client, keys, ["x0000", "x0001", "x0002", "x0003", "nope"], 7200, now)
        # retention 2 h: the buckets of the hours within it, and of the hour it began in
        assert {d for d, rec in found.items() if rec} == {"x0000", "x0001", "x0002"}
        assert found["x0001"]["sent_at"] == repr(now - outcomes.SPAN)

        # one read: the newest hours first, the older ones in a second round trip
        async def single(delivery_id: str) -> dict[str, str]:
            aio = aioredis.Redis.from_url(s.redis_url)
            try:
                return await outcomes.read(aio, keys, delivery_id, 7200, now)
            finally:
                await aio.aclose()

        assert asyncio.run(single("x0002")) == found["x0002"]  # 2 hours back: the second round
        assert asyncio.run(single("x0001")) == found["x0001"]
        assert asyncio.run(single("x0003")) == {}
        # an open hash wins over an outcome of the same id
        client.hset(keys.delivery("x0000"), mapping={"status": State.QUEUED.value, "page_id": PAGE})
        assert outcomes.read_sync(client, keys, "x0000", 7200, now)["status"] == State.QUEUED
    finally:
        client.close()

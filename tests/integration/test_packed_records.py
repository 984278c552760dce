"""A record's intake part packed in one field (``in``, worker/store/records.py): what Redis stores,
what every reader gets back, the scripts that read it, and the way back for a rollback
(``messenger-worker unpack-records``). Real redis-server; the scripts as the service runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

from tests.conftest import PAGE, RedisServer, base_env
from tests.integration.test_fence import make_settings
from worker.config import Settings
from worker.delivery.engine import TAKEN_LIST_SECONDS
from worker.delivery.model import Delivery
from worker.intake.committer import GroupCommitter
from worker.messenger.validation import validate
from worker.store import Keys, campaign_ctx, outcomes, pages, records, scripts
from worker.store import connections as redisconn


def _settings(redis: RedisServer) -> Settings:
    return make_settings(redis, intake_insecure_no_auth=True)


def _body(psid: str, **extra: Any) -> bytes:
    return orjson.dumps({"recipient": {"id": psid}, "message": {"text": f"hello {psid}"}, **extra})


def _run(settings: Settings, work: Any) -> Any:
    async def main() -> Any:
        client = redisconn.async_client(settings)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def _accept(client: aioredis.Redis, s: Settings, bodies: list[bytes], **kw: Any) -> list[str]:
    committer = GroupCommitter(client, s)
    done = await asyncio.gather(
        *(
            committer.submit_with_status(
                validate(b, s, path_page_id=PAGE), "", f"req-{n}", caller="tok-1", **kw
            )
            for n, b in enumerate(bodies)
        )
    )
    return [delivery_id for delivery_id, _ in done]


async def _claim(client: aioredis.Redis, s: Settings, ids: list[str], token: str) -> list[str]:
    keys = Keys.of(s)
    raw = await scripts.run(
        client,
        "claim",
        keys=[keys.pending],
        args=[
            repr(time.time()),
            s.delivery_lease_seconds,
            keys.delivery_prefix,
            token,
            TAKEN_LIST_SECONDS,
            *campaign_ctx.of_settings(keys, s, time.time()),
            *ids,
        ],
    )
    return [i.decode() if isinstance(i, bytes) else str(i) for i in raw[2:]]  # after {looked at, cancels}


def test_an_accepted_record_holds_the_request_in_one_field_and_reads_as_fields(
    redis_server: RedisServer,
) -> None:
    s = _settings(redis_server)
    keys = Keys.of(s)
    body = _body("pk-1")
    (delivery_id,) = _run(s, lambda c: _accept(c, s, [body]))
    raw = redis_server.client().hgetall(keys.delivery(delivery_id))
    # three fields stored: the status, the time and the request (no empty field, no token)
    assert set(raw) == {b"status", b"created_at", b"in"}
    rec = records.decode(raw)
    assert rec["page_id"] == PAGE
    assert rec["psid"] == "pk-1"
    assert rec["caller"] == "tok-1"
    assert rec["request_id"] == "req-0"
    assert orjson.loads(rec["body"])["message"] == {"text": "hello pk-1"}
    assert "in" not in rec
    # every reader gets the same: the status API's read, and the worker's after a claim
    assert outcomes.read_sync(redis_server.client(), keys, delivery_id, s.record_retention)["psid"] == "pk-1"

    async def claimed(client: aioredis.Redis) -> Delivery:
        (got,) = await _claim(client, s, [delivery_id], "c1")
        (claimed_rec,) = await records.read_claimed(client, keys.delivery_prefix, [got])
        return Delivery.from_record(got, "c1", claimed_rec)

    d = _run(s, claimed)
    assert (d.page_id, d.psid, d.request_id) == (PAGE, "pk-1", "req-0")
    assert d.body["message"] == {"text": "hello pk-1"}
    assert d.kept["caller"] == "tok-1"


def test_a_record_written_field_by_field_before_reads_the_same(redis_server: RedisServer) -> None:
    """A record the version before wrote (its fields one by one) is read, claimed and cancelled
    as before: decode and the scripts take either layout."""
    s = _settings(redis_server)
    keys = Keys.of(s)
    (packed_id,) = _run(s, lambda c: _accept(c, s, [_body("pk-2")]))
    sync = redis_server.client()
    legacy_id = uuid.uuid4().hex
    fields = records.decode(sync.hgetall(keys.delivery(packed_id)))
    sync.hset(keys.delivery(legacy_id), mapping=fields)
    assert b"in" not in sync.hgetall(keys.delivery(legacy_id))
    assert records.decode(sync.hgetall(keys.delivery(legacy_id))) == fields

    async def both(client: aioredis.Redis) -> list[Delivery]:
        got = await _claim(client, s, [packed_id, legacy_id], "c2")
        recs = await records.read_claimed(client, keys.delivery_prefix, got)
        return [Delivery.from_record(i, "c2", r) for i, r in zip(got, recs, strict=True)]

    packed, legacy = _run(s, both)
    assert (legacy.page_id, legacy.psid, legacy.body, legacy.request_id, legacy.kept["caller"]) == (
        packed.page_id,
        packed.psid,
        packed.body,
        packed.request_id,
        packed.kept["caller"],
    )


def test_a_packed_delivery_of_a_stopped_campaign_ends_cancelled_with_what_it_keeps(
    redis_server: RedisServer,
) -> None:
    """claim.lua cancels a queued delivery of a stopped campaign (_campaign.lua's camp_cancel
    reads the whole record): its outcome keeps the page, the caller and the request id, which
    the packed field holds."""
    s = _settings(redis_server)
    keys = Keys.of(s)
    attribution = ("camp-pk", "", "", "", "")

    async def scenario(client: aioredis.Redis) -> tuple[list[str], list[str]]:
        ids = await _accept(client, s, [_body("pk-3"), _body("pk-4")], attribution=attribution)
        # stopped after the accept: the claim finds it stopped (stop cancels what no worker holds,
        # so mark it stopped the way a claim racing the stop sees it: the set only)
        await client.zadd(keys.campaigns_stopped, {"camp-pk": time.time()})
        return ids, await _claim(client, s, ids, "c3")

    ids, claimed = _run(s, scenario)
    assert claimed == []
    for delivery_id in ids:
        rec = outcomes.read_sync(redis_server.client(), keys, delivery_id, s.record_retention)
        assert rec["status"] == "cancelled"
        assert (rec["page_id"], rec["caller"], rec["campaign_id"]) == (PAGE, "tok-1", "camp-pk")
        assert rec["request_id"] in ("req-0", "req-1")
        assert "psid" not in rec
        assert "body" not in rec
        assert not redis_server.client().exists(keys.delivery(delivery_id))


def test_resuming_a_page_releases_its_packed_deliveries(redis_server: RedisServer) -> None:
    """Lifting a page's pause reads each waiting delivery's page (worker/store/pages.py): from
    the packed field, or the field of a record written before."""
    s = _settings(redis_server)
    keys = Keys.of(s)

    async def scenario(client: aioredis.Redis) -> tuple[int, list[str]]:
        ids = await _accept(client, s, [_body("pk-5"), _body("pk-6")])
        await records.unpack_all(client, keys)  # one of each layout
        pipe = client.pipeline(transaction=True)  # the first back to the packed layout
        pipe.hset(keys.delivery(ids[0]), mapping={"in": records.pack_intake((PAGE, "pk-5"))})
        pipe.hdel(keys.delivery(ids[0]), "page_id", "psid")
        await pipe.execute()
        for i in ids:
            await client.zadd(keys.sched, {i: time.time() + 3600})
            await client.zadd(keys.page_waits(PAGE), {i: time.time() + 3600})
        released = await pages.resume_page(client, keys, PAGE)
        due = [i for i in ids if await client.zscore(keys.sched, i) == 0]
        return released, due

    released, due = _run(s, scenario)
    assert released == 2
    assert len(due) == 2


def test_unpack_records_writes_the_fields_back_once(redis_server: RedisServer) -> None:
    """``messenger-worker unpack-records``: before a rollback past the version that packs, every
    open record and dead letter gets its fields back (what decode reads does not change), the
    packed field goes; a second run finds nothing to do."""
    s = _settings(redis_server)
    keys = Keys.of(s)
    ids = _run(s, lambda c: _accept(c, s, [_body(f"pk-u{n}") for n in range(3)]))
    sync = redis_server.client()
    before = {i: records.decode(sync.hgetall(keys.delivery(i))) for i in ids}
    sync.hset(keys.delivery(ids[0]), "status", "dead")  # a dead letter is unpacked too
    before[ids[0]]["status"] = "dead"
    env = base_env(redis_server.url, "http://127.0.0.1:9", KEY_PREFIX=s.key_prefix, QUEUE_NAME=s.queue_name)

    def unpack() -> int:
        done = subprocess.run(
            [sys.executable, "-m", "worker", "unpack-records"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return int(json.loads(done.stdout)["records_unpacked"]["0"])

    assert unpack() == 3
    for i in ids:
        raw = sync.hgetall(keys.delivery(i))
        assert b"in" not in raw
        assert raw[b"psid"].decode() == before[i]["psid"]
        assert raw[b"body"].decode() == before[i]["body"]
        assert records.decode(raw) == before[i]
    assert unpack() == 0


def test_pack_intake_cuts_trailing_empty_values_and_decode_keeps_a_field_over_the_pack(
    redis_server: RedisServer,
) -> None:
    """A field written beside the packed value (by an unpack that stopped half-way, say) wins:
    decode, like unpack_records.lua, never overwrites a field with the packed one."""
    s = _settings(redis_server)
    keys = Keys.of(s)
    packed = records.pack_intake((PAGE, "pk-7", b"{}", "tok-1", "", "", ""))
    assert packed == records.pack_intake((PAGE, "pk-7", b"{}", "tok-1"))
    sync = redis_server.client()
    key = keys.delivery(uuid.uuid4().hex)
    sync.hset(key, mapping={"status": "queued", "in": packed, "psid": "other"})
    rec = records.decode(sync.hgetall(key))
    assert (rec["page_id"], rec["psid"], rec["body"], rec["caller"]) == (PAGE, "other", "{}", "tok-1")
    assert "request_id" not in rec
    assert _run(s, lambda c: records.unpack_all(c, keys)) == 1
    assert records.decode(sync.hgetall(key)) == rec


def _records(redis: RedisServer, keys: Keys) -> list[bytes]:
    return sorted(redis.client().scan_iter(match=keys.delivery_prefix + "*", count=1000))


def _batched(redis: RedisServer, keys: Keys) -> list[str]:
    """Every id in a queued batch list."""
    sync = redis.client()
    return [i.decode() for b in sync.scan_iter(match=keys.batch_prefix + "*") for i in sync.lrange(b, 0, -1)]


def test_the_records_are_written_beside_accept_lua_and_only_what_it_queues_stays(
    redis_server: RedisServer,
) -> None:
    """The commit's HSETs and accept.lua run in one MULTI/EXEC: a repeated Idempotency-Key's new
    record is deleted by the script (the first stands), a stopped campaign's becomes its
    outcome; every record that stays is in a queued batch."""
    s = _settings(redis_server)
    keys = Keys.of(s)

    async def scenario(client: aioredis.Redis) -> tuple[list[str], list[str], str]:
        committer = GroupCommitter(client, s)
        first = [
            await committer.submit_with_status(
                validate(_body(f"pk-k{n}"), s, path_page_id=PAGE), f"key-{n}", ""
            )
            for n in range(3)
        ]
        again = [
            await committer.submit_with_status(
                validate(_body(f"pk-k{n}"), s, path_page_id=PAGE), f"key-{n}", ""
            )
            for n in range(3)
        ]
        await client.zadd(keys.campaigns_stopped, {"camp-stop": time.time()})
        (stopped, status) = await committer.submit_with_status(
            validate(_body("pk-s"), s, path_page_id=PAGE), "", "", attribution=("camp-stop", "", "", "", "")
        )
        assert status == "cancelled"
        return [i for i, _ in first], [f"{i}:{st}" for i, st in again], stopped

    first, again, stopped = _run(s, scenario)
    assert again == [f"{i}:duplicate" for i in first]
    assert _records(redis_server, keys) == sorted(keys.delivery(i).encode() for i in first)
    sync = redis_server.client()
    batched = _batched(redis_server, keys)
    assert sorted(batched) == sorted(first)
    cancelled = outcomes.read_sync(sync, keys, stopped, s.record_retention)
    assert (cancelled["status"], cancelled["page_id"], cancelled["campaign_id"]) == (
        "cancelled",
        PAGE,
        "camp-stop",
    )


def test_a_commit_after_the_scripts_are_flushed_writes_each_record_once(redis_server: RedisServer) -> None:
    """NOSCRIPT inside the commit's MULTI/EXEC (a Redis restarted or failed over: no scripts):
    the HSETs ran, accept.lua did not; the commit loads the scripts and runs both again, which
    writes the same records and queues each once."""
    s = _settings(redis_server)
    keys = Keys.of(s)

    async def scenario(client: aioredis.Redis) -> list[str]:
        await _accept(client, s, [_body("pk-warm")])  # the scripts are loaded
        await client.script_flush()
        return await _accept(client, s, [_body(f"pk-f{n}") for n in range(4)])

    ids = _run(s, scenario)
    assert len(_records(redis_server, keys)) == 5
    sync = redis_server.client()
    batched = _batched(redis_server, keys)
    assert sorted(i for i in batched if i in ids) == sorted(ids)
    assert len(batched) == 5  # each once
    for i in ids:
        assert records.decode(sync.hgetall(keys.delivery(i)))["status"] == "queued"

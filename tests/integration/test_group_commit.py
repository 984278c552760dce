"""The intake's group commit against a real redis-server: batches, and when a second commit starts."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from worker.config import Settings
from worker.intake.committer import GATHER_TARGET, GroupCommitter, accept_items
from worker.messenger.validation import validate
from worker.states import State
from worker.store import Keys, campaign_ctx, idempotency, scripts, seals
from worker.store import connections as redisconn
from worker.store import envelope as broker


def _settings(redis: RedisServer, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        redis_url=redis.url,
        key_prefix=f"gc{tag}",
        queue_name=f"q{tag}",
        page_access_tokens={PAGE: PAGE_TOKEN},
        intake_insecure_no_auth=True,
        **extra,
    )


def celery_args(raw: bytes, task: str) -> list[Any]:
    """The positional arguments of a queued Celery message, which must be for ``task``."""
    envelope = orjson.loads(raw)
    assert envelope["headers"]["task"] == task
    args, _kwargs, _embed = orjson.loads(base64.b64decode(envelope["body"]))
    return list(args)


def test_a_second_commit_starts_only_for_a_batch_that_needs_no_company(redis_server: RedisServer) -> None:
    settings = _settings(redis_server)

    async def scenario() -> tuple[list[int], int, list[str], Any]:
        client = redisconn.async_client(settings)
        committer = GroupCommitter(client, settings)
        real = committer._accept
        sizes: list[int] = []
        running = 0
        most = 0

        # the real ACCEPT call, kept in flight for 500 ms: far longer than the two 20 ms sleeps
        # below take, however loaded the machine
        async def held(**kwargs: Any) -> Any:
            nonlocal running, most
            sizes.append(accept_items(kwargs["args"]))
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.5)
            try:
                return await real(**kwargs)
            finally:
                running -= 1

        committer._accept = held  # type: ignore[method-assign]  # a spy around the real script call

        def submit(i: int) -> asyncio.Task[tuple[str, bool]]:
            body = orjson.dumps({"recipient": {"id": f"gc-{i}"}, "message": {"text": "hi"}})
            request = validate(body, settings, path_page_id=PAGE)
            return asyncio.create_task(committer.submit(request, "", f"r{i}"))

        first = [submit(0)]
        await asyncio.sleep(0.02)  # the first request is committed alone, at once
        few = [submit(i) for i in range(1, 6)]
        await asyncio.sleep(0.02)
        assert sizes == [1]  # five waiting: they ride on the next commit, no second one yet
        many = [submit(i) for i in range(6, 6 + GATHER_TARGET)]
        results = await asyncio.gather(*first, *few, *many)
        queue = await client.lrange(settings.queue_name, 0, -1)  # type: ignore[misc]  # redis-py types it sync-or-async
        await client.aclose()
        return sizes, most, [delivery_id for delivery_id, _ in results], queue

    sizes, most, ids, queue = asyncio.run(scenario())
    assert sizes == [1, 5 + GATHER_TARGET]  # the second commit took every waiting request
    assert most == 2
    assert len(set(ids)) == 6 + GATHER_TARGET
    # nobody took the first commit's message yet: the second commit joined it
    assert len(queue) == 1
    keys = Keys.of(settings)
    (batch_id,) = celery_args(queue[0], broker.BATCH_TASK)
    assert [i.decode() for i in redis_server.client().lrange(keys.batch(batch_id), 0, -1)] == ids
    rec = redis_server.client().hgetall(Keys.of(settings).delivery(ids[-1]))
    assert rec[b"status"] == b"queued"


def test_commits_gather_in_the_newest_queued_batch_until_it_is_taken_or_full(
    redis_server: RedisServer,
) -> None:
    """QUEUE_BATCH_MAX=5: commits join the newest queued batch while they fit; a full batch, or
    one a worker has taken, makes the next commit start a new batch (and push its message)."""
    settings = _settings(redis_server, queue_batch_max=5)
    keys = Keys.of(settings)
    sync = redis_server.client()
    counter = iter(range(1000))

    async def commit(n: int, idem: str = "") -> list[str]:
        client = redisconn.async_client(settings)
        committer = GroupCommitter(client, settings)
        try:
            results = []
            for _ in range(n):  # one at a time: each request is its own commit
                body = orjson.dumps({"recipient": {"id": f"gb-{next(counter)}"}, "message": {"text": "hi"}})
                request = validate(body, settings, path_page_id=PAGE)
                results.append(await committer.submit(request, idem, "r"))
            return [delivery_id for delivery_id, accepted in results if accepted]
        finally:
            await client.aclose()

    def batches() -> list[list[str]]:
        ids = [celery_args(raw, broker.BATCH_TASK)[0] for raw in reversed(sync.lrange(keys.queue, 0, -1))]
        return [[i.decode() for i in sync.lrange(keys.batch(b), 0, -1)] for b in ids]

    first = asyncio.run(commit(3))
    second = asyncio.run(commit(2))
    assert batches() == [first + second]  # one message, five ids: full
    third = asyncio.run(commit(1))
    assert batches() == [first + second, third]  # full: a new batch and its message

    # a worker takes the newest batch: the next commit cannot join it
    (newest,) = celery_args(sync.lrange(keys.queue, 0, 0)[0], broker.BATCH_TASK)
    looked_at, _cancels, *flat = scripts.run_sync(
        sync,
        "claim",
        keys=[keys.pending, keys.batch(newest), keys.gather, keys.batch_taken(newest, "t1")],
        args=[repr(time.time()), 60, keys.delivery_prefix, "t1", 90, *_ctx(settings), newest],
    )
    assert looked_at == 1
    assert [i.decode() for i in flat] == third  # claimed (the worker then reads its record)
    assert sync.exists(keys.batch(newest), keys.gather) == 0  # the list and the pointer are gone
    # the batch's deadline became the claim's (its lease's end), kept with its taken list
    assert sync.zscore(keys.pending, keys.batch_entry(newest)) is None
    assert sync.zscore(keys.pending, keys.claim_entry(newest, "t1")) == pytest.approx(time.time() + 61, abs=5)
    assert sync.ttl(keys.batch_taken(newest, "t1")) == -1
    fourth = asyncio.run(commit(1))
    sync.lrem(keys.queue, 1, sync.lrange(keys.queue, -2, -2)[0])  # the taken message left the queue
    assert batches() == [first + second, fourth]

    # a repeated Idempotency-Key adds no id; a batch list has no expiry: its entry in pending,
    # SWEEP_AFTER_SECONDS from its last commit, is what the sweeper finds (a lost message)
    again = asyncio.run(commit(2, idem="same-key"))
    assert len(again) == 1
    assert batches() == [first + second, fourth + again]
    queued = [celery_args(raw, broker.BATCH_TASK)[0] for raw in sync.lrange(keys.queue, 0, -1)]
    assert [sync.ttl(keys.batch(b)) for b in queued] == [-1, -1]
    entries = dict(sync.zrange(keys.pending, 0, -1, withscores=True))
    assert set(entries) == {keys.batch_entry(b).encode() for b in queued} | {
        keys.claim_entry(newest, "t1").encode()
    }
    assert entries[keys.batch_entry(queued[0]).encode()] == pytest.approx(
        time.time() + settings.sweep_after_seconds, abs=5
    )

    # each accepted delivery (not the repeat) counts once, in the second it was accepted
    # (worker/store/ages.py) and in the total, and no sorted-set entry of its own is written
    accepted = first + second + third + fourth + again
    assert len(accepted) == 8
    counts = {int(k): int(v) for k, v in sync.hgetall(keys.open_counts).items()}
    assert counts == Counter(int(float(sync.hget(keys.delivery(i), "created_at"))) for i in accepted)
    assert {int(m) for m in sync.zrange(keys.open_seconds, 0, -1)} == set(counts)
    assert sync.exists(keys.open) == 0
    assert int(sync.get(keys.open_total)) == 8


def _ctx(settings: Settings) -> list[Any]:
    """claim.lua's campaign context (worker/store/campaign_ctx.py)."""
    return campaign_ctx.of_settings(Keys.of(settings), settings, time.time())


def test_a_claim_by_ids_still_works_and_reports_what_it_looked_at(redis_server: RedisServer) -> None:
    """worker.deliver(ids) (the scheduler's and sweeper's messages): only open, due, unleased ids
    are claimed; the count of ids looked at comes first."""
    settings = _settings(redis_server)
    keys = Keys.of(settings)
    sync = redis_server.client()
    sync.hset(keys.delivery("a"), mapping={"status": State.QUEUED, "page_id": PAGE})
    sync.hset(keys.delivery("b"), mapping={"status": State.SENT, "page_id": PAGE})
    now = repr(time.time())
    looked_at, _cancels, *flat = scripts.run_sync(
        sync,
        "claim",
        keys=[keys.pending],
        args=[now, 60, keys.delivery_prefix, "t1", 90, *_ctx(settings), "a", "b", "missing"],
    )
    assert looked_at == 3
    assert [i.decode() for i in flat] == ["a"]  # the ids it claimed, nothing more
    other = scripts.run_sync(
        sync,
        "claim",
        keys=[keys.pending],
        args=[now, 60, keys.delivery_prefix, "t2", 90, *_ctx(settings), "a"],
    )
    assert other == [1, []]  # held under t1 now: another claim gets nothing (and cancels none)
    retried = scripts.run_sync(
        sync,
        "claim",
        keys=[keys.pending],
        args=[now, 60, keys.delivery_prefix, "t1", 90, *_ctx(settings), "a"],
    )
    assert retried[0] == 1
    assert retried[2].decode() == "a"


def _deep(levels: int) -> dict[str, Any]:
    """A message whose ``attachment.payload`` nests ``levels`` objects: it parses, but orjson
    refuses to serialise it (beyond 254 levels)."""
    payload: Any = {"url": "https://example.com/x.png"}
    for _ in range(levels):
        payload = {"a": payload}
    return {"attachment": {"type": "template", "payload": payload}}


def test_an_item_that_cannot_be_encoded_fails_alone_and_never_the_batch(redis_server: RedisServer) -> None:
    """One request the commit cannot encode (a body nested deeper than orjson serialises, built
    without validation, which refuses it) shares a commit with good ones: it alone gets an error
    (422 too_deep), the others are stored and answered, and the committer keeps committing."""
    from worker.messenger.validation import InputError, SendRequest

    settings = _settings(redis_server)

    async def scenario() -> tuple[list[Any], tuple[str, bool]]:
        client = redisconn.async_client(settings)
        committer = GroupCommitter(client, settings)
        sizes: list[int] = []
        real = committer._accept

        async def spy(**kwargs: Any) -> Any:
            sizes.append(accept_items(kwargs["args"]))
            return await real(**kwargs)

        committer._accept = spy  # type: ignore[method-assign]  # counts the items of each call

        def good(i: int) -> SendRequest:
            body = orjson.dumps({"recipient": {"id": f"deep-{i}"}, "message": {"text": "hi"}})
            return validate(body, settings, path_page_id=PAGE)

        bad = SendRequest(
            page_id=PAGE, psid="deep-bad", body={"recipient": {"id": "deep-bad"}, "message": _deep(300)}
        )
        requests = [good(0), good(1), bad, good(2), good(3)]
        try:
            tasks = [asyncio.create_task(committer.submit(r, "", f"r{i}")) for i, r in enumerate(requests)]
            results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            after = await asyncio.wait_for(committer.submit(good(4), "", "r-after"), 10)
        finally:
            await client.aclose()
        assert sizes[0] == 4, sizes  # the first commit carried the four good ones, not the bad one
        return results, after

    results, after = asyncio.run(scenario())
    error = results[2]
    assert isinstance(error, InputError), results
    assert (error.status, error.code) == (422, "too_deep")
    accepted = [r for i, r in enumerate(results) if i != 2]
    assert all(isinstance(r, tuple) and r[1] for r in accepted), results
    sync = redis_server.client()
    keys = Keys.of(settings)
    for delivery_id, _ in accepted:
        assert sync.hget(keys.delivery(delivery_id), "status") == b"queued"
    assert after[1] is True


async def _seal(settings: Settings, layout: seals.Layout, now: float) -> int:
    """A whole window of the seal pass in one call (the housekeeping's calls are 1,024 names)."""
    client = redisconn.async_client(settings)
    try:
        return await seals.step(client, layout, now, names=16**layout.digits)
    finally:
        await client.aclose()


def _submit(settings: Settings, key: str, psid: str) -> tuple[str, bool]:
    """One request with Idempotency-Key ``key`` through a committer of its own."""

    async def go() -> tuple[str, bool]:
        client = redisconn.async_client(settings)
        try:
            body = orjson.dumps({"recipient": {"id": psid}, "message": {"text": "hi"}})
            return await GroupCommitter(client, settings).submit(
                validate(body, settings, path_page_id=PAGE), key, "r"
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


#: An IDEMPOTENCY_TTL of 115 days: no test here runs across a window's edge.
TTL = 10_000_000


def test_an_idempotency_key_lives_in_its_windows_bucket_and_is_found_in_the_next_window(
    redis_server: RedisServer,
) -> None:
    """A key is a field of the bucket of the Redis clock's window (IDEMPOTENCY_TTL long), which
    expires at the end of the next window; a repeat finds it there or in the previous window's
    bucket, and no longer two windows on. Nothing is written as a key of its own."""
    settings = _settings(redis_server, idempotency_ttl=TTL)
    keys, sync = Keys.of(settings), redis_server.client()
    first, accepted = _submit(settings, "order-1", "ik-1")
    assert accepted
    window = idempotency.window(float(sync.time()[0]), TTL)
    digest = idempotency.digest(idempotency.scoped("", PAGE, "order-1"))
    bucket = idempotency.bucket(keys.idem_bucket_prefix, window, digest)
    # the field: the digest after the bucket's suffix, raw; the value: the delivery id's raw bytes
    assert sync.hgetall(bucket) == {idempotency.field(digest): bytes.fromhex(first)}
    # no expiry from the write: the seal pass gives it one once its window is over
    assert sync.expiretime(bucket) == -1
    layout = next(
        x
        for x in seals.layouts(keys, settings.record_retention, settings.idempotency_ttl)
        if x.name == "idempotency"
    )
    assert asyncio.run(_seal(settings, layout, (window + 1) * TTL)) == 16**idempotency.SUFFIX
    assert sync.expiretime(bucket) == (window + 2) * TTL
    assert sync.object("encoding", bucket) == b"listpack"
    assert not list(sync.scan_iter(match=keys.idem("*")))

    assert _submit(settings, "order-1", "ik-1") == (first, False)  # the same window

    # written in the previous window (by the version before: the id in hex): still a repeat
    sync.delete(bucket)
    previous = idempotency.bucket(keys.idem_bucket_prefix, window - 1, digest)
    sync.hset(previous, idempotency.field(digest), first)
    assert _submit(settings, "order-1", "ik-1") == (first, False)
    assert not sync.exists(bucket)  # a repeat writes nothing

    # two windows back (its bucket would have expired): a new delivery
    sync.delete(previous)
    sync.hset(
        idempotency.bucket(keys.idem_bucket_prefix, window - 2, digest),
        idempotency.field(digest),
        first,
    )
    again, accepted = _submit(settings, "order-1", "ik-1")
    assert accepted
    assert again != first
    assert sync.hget(bucket, idempotency.field(digest)) == bytes.fromhex(again)


def test_a_key_remembered_as_its_hex_field_is_read_while_one_may_live(redis_server: RedisServer) -> None:
    """An upgrade: a key written before raw fields (its field the digest's hex characters, in this
    window's bucket or the previous one's) answers a repeat for two windows after raw fields first
    ran on this Redis (``raw`` in P:i:meta), and is not read after."""
    settings = _settings(redis_server, idempotency_ttl=TTL)
    keys, sync = Keys.of(settings), redis_server.client()
    meta = keys.idem_bucket_prefix + "meta"
    window = idempotency.window(float(sync.time()[0]), TTL)
    sync.hset(meta, "since", int(sync.time()[0]) - 5)  # the version before ran here
    for back, key in ((0, "hex-now"), (1, "hex-before")):
        digest = idempotency.digest(idempotency.scoped("", PAGE, key))
        sync.hset(
            idempotency.bucket(keys.idem_bucket_prefix, window - back, digest),
            idempotency.hex_field(digest),
            "ab" * 16,
        )
        assert _submit(settings, key, f"{key}-1") == ("ab" * 16, False)
        # the repeat leaves no raw field of its own behind
        assert sync.hlen(idempotency.bucket(keys.idem_bucket_prefix, window, digest)) == (
            1 if back == 0 else 0
        )
    assert abs(int(sync.hget(meta, "raw") or 0) - int(sync.time()[0])) <= 2  # set by the first accept

    # two windows later, a hex field is no longer read
    sync.hset(meta, "raw", int(sync.time()[0]) - 2 * TTL - 1)
    digest = idempotency.digest(idempotency.scoped("", PAGE, "hex-late"))
    sync.hset(
        idempotency.bucket(keys.idem_bucket_prefix, window, digest), idempotency.hex_field(digest), "cd" * 16
    )
    delivery_id, accepted = _submit(settings, "hex-late", "hex-late-1")
    assert accepted
    assert delivery_id != "cd" * 16


def test_on_a_shard_no_bucket_was_written_to_no_hex_field_is_looked_for(redis_server: RedisServer) -> None:
    """Hex fields were written only by a version with buckets, which set ``since``: on a shard
    without it, raw fields start as done (``raw`` 0) and a new key costs no hex lookups."""
    settings = _settings(redis_server, idempotency_ttl=TTL)
    keys, sync = Keys.of(settings), redis_server.client()
    digest = idempotency.digest(idempotency.scoped("", PAGE, "fresh-1"))
    window = idempotency.window(float(sync.time()[0]), TTL)
    sync.hset(
        idempotency.bucket(keys.idem_bucket_prefix, window, digest), idempotency.hex_field(digest), "ef" * 16
    )
    delivery_id, accepted = _submit(settings, "fresh-1", "fresh-1")
    assert accepted
    assert delivery_id != "ef" * 16
    assert sync.hmget(keys.idem_bucket_prefix + "meta", "raw", "since")[0] == b"0"


def test_keys_the_previous_version_stored_are_read_for_one_ttl_after_the_upgrade(
    redis_server: RedisServer,
) -> None:
    """An upgrade: a P:idem: string written before buckets answers a repeat while the buckets are
    younger than IDEMPOTENCY_TTL on this Redis (``since`` in P:i:meta), and is not read after."""
    settings = _settings(redis_server, idempotency_ttl=TTL)
    keys, sync = Keys.of(settings), redis_server.client()
    meta = keys.idem_bucket_prefix + "meta"
    sync.set(keys.idem(idempotency.scoped("", PAGE, "before-1")), "id-from-before", ex=3600)
    assert _submit(settings, "before-1", "up-1") == ("id-from-before", False)
    # a repeat leaves nothing in the current window (its key, written first, is taken back)
    digest = idempotency.digest(idempotency.scoped("", PAGE, "before-1"))
    window = idempotency.window(float(sync.time()[0]), TTL)
    assert not sync.exists(idempotency.bucket(keys.idem_bucket_prefix, window, digest))
    since = int(sync.hget(meta, "since") or 0)
    assert abs(since - int(sync.time()[0])) <= 2  # set by the first accept
    assert sync.hget(meta, "ttl") == str(TTL).encode()

    sync.set(keys.idem(idempotency.scoped("", PAGE, "before-2")), "id-from-before-2", ex=3600)
    sync.hset(meta, "since", since - TTL - 1)
    delivery_id, accepted = _submit(settings, "before-2", "up-2")
    assert accepted
    assert delivery_id != "id-from-before-2"


def test_a_key_remembered_under_the_ttl_before_a_change_is_still_a_repeat(redis_server: RedisServer) -> None:
    """The windows are numbered by IDEMPOTENCY_TTL: after a change, the buckets of the TTL before
    are read too while they live (two of its TTLs), so a retry across the change is a repeat."""
    before = _settings(redis_server, idempotency_ttl=TTL)
    first, accepted = _submit(before, "across", "tc-1")
    assert accepted
    after = before.model_copy(update={"idempotency_ttl": TTL // 3})
    assert _submit(after, "across", "tc-1") == (first, False)
    meta = Keys.of(after).idem_bucket_prefix + "meta"
    sync = redis_server.client()
    assert sync.hmget(meta, "ttl", "before") == [str(TTL // 3).encode(), str(TTL).encode()]
    # two of the old TTLs after the change its buckets are gone: no longer read
    sync.hset(meta, "changed", int(sync.time()[0]) - 2 * TTL - 1)
    again, accepted = _submit(after, "across", "tc-1")
    assert accepted
    assert again != first

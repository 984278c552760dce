"""What an intake knows of pages `shards move` brought to a shard (worker/intake/moved.py), on a
real redis-server: two key prefixes stand for two shards. The first request waits for the first
read of every shard's P:moved; later reads run in the background every REFRESH_SECONDS; a mark
that ran out, or names the shard itself, asks nothing; a key is found in the old shard's
buckets as accept.lua wrote it. The two-shard end to end: tests/integration/test_shards.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker.config import Settings
from worker.intake import moved
from worker.intake.committer import GroupCommitter
from worker.intake.notices import Throttled
from worker.messenger.validation import SendRequest, validate
from worker.metrics import INTAKE_MOVED_LOOKUPS
from worker.store import Keys, idempotency, pagemove

pytestmark = pytest.mark.integration
PAGE = "777"


@dataclass
class Link:
    redis: aioredis.Redis
    keys: Keys


def test_marks_are_read_first_then_in_the_background(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(moved, "REFRESH_SECONDS", 0.2)
    links = [
        Link(aioredis.Redis.from_url(redis_server.url), Keys("m" + uuid.uuid4().hex[:8], "q")) for _ in "ab"
    ]

    async def main() -> list[int | None]:
        pages = moved.MovedPages(Settings(), links)
        seen = [await pages.source(1, PAGE)]  # the first read: nothing moved yet
        await pagemove.mark_moved(links[1].redis, links[1].keys, PAGE, 0, time.time() + 60)
        seen.append(await pages.source(1, PAGE))  # read 0.2 s ago at most: not seen yet
        await asyncio.sleep(0.25)
        seen.append(await pages.source(1, PAGE))  # starts a read in the background, answers from the last
        await asyncio.sleep(0.1)
        seen.append(await pages.source(1, PAGE))  # that read's marks
        seen.append(await pages.source(0, PAGE))  # a mark is its shard's: shard 0 has none
        await pagemove.mark_moved(links[1].redis, links[1].keys, PAGE, 0, time.time() - 1)  # ran out
        await pagemove.mark_moved(links[1].redis, links[1].keys, "778", 1, time.time() + 60)  # itself
        await asyncio.sleep(0.25)
        await pages.source(1, PAGE)
        await asyncio.sleep(0.1)
        seen += [await pages.source(1, PAGE), await pages.source(1, "778")]
        for link in links:
            await link.redis.aclose()
        return seen

    assert asyncio.run(main()) == [None, None, None, 0, None, None, None]
    sync = redis_server.client()
    assert sync.hkeys(links[1].keys.moved) == [b"778"]  # the mark that ran out was dropped
    assert 55 <= sync.ttl(links[1].keys.moved) <= 61  # the hash goes with its last mark


def lookups(result: str) -> float:
    """bmw_intake_moved_lookups_total{result} as the intake's /metrics shows it."""
    value: float = INTAKE_MOVED_LOOKUPS.labels(result)._value.get()
    return value


def old_shard() -> tuple[Settings, Keys, SendRequest]:
    """A shard's settings and keys of its own (a fresh prefix), and a request for PAGE."""
    settings = Settings(
        key_prefix="m" + uuid.uuid4().hex[:8],
        queue_name="q" + uuid.uuid4().hex[:8],
        page_access_tokens={PAGE: f"sandbox-token-{PAGE}"},
    )
    body = b'{"recipient":{"id":"1234"},"messaging_type":"UPDATE","message":{"text":"hi"}}'
    return (
        settings,
        Keys(settings.key_prefix, settings.queue_name),
        validate(body, settings, path_page_id=PAGE),
    )


def test_a_key_the_old_shard_accepted_is_found_there(redis_server: RedisServer) -> None:
    settings, keys, request = old_shard()

    async def main() -> tuple[str, list[str | None]]:
        client = aioredis.Redis.from_url(redis_server.url)
        committer = GroupCommitter(client, settings)
        try:
            accepted, _ = await committer.submit_with_status(request, "braze-key-1", "", "", caller="c1")
            asked = [
                idempotency.scoped("c1", PAGE, "braze-key-1"),
                idempotency.scoped("c2", PAGE, "braze-key-1"),  # another caller's key of the same text
                idempotency.scoped("c1", PAGE, "braze-key-2"),
            ]
            return accepted, await pagemove.remembered(client, keys, settings.idempotency_ttl, asked)
        finally:
            committer.close()
            await client.aclose()

    accepted, found = asyncio.run(main())
    assert found == [accepted, None, None]  # as accept.lua wrote it: the same digest, bucket, window


def test_concurrent_lookups_share_the_old_shard_s_script_calls(redis_server: RedisServer) -> None:
    """Fifty requests asking at once cost a few script calls on the old shard, not fifty; each
    gets its own answer."""
    settings, old, request = old_shard()
    sync = redis_server.client()

    def script_calls() -> int:
        return int(sync.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    async def main() -> tuple[str, list[str | None], int]:
        client = aioredis.Redis.from_url(redis_server.url)
        committer = GroupCommitter(client, settings)
        links = [Link(client, old), Link(client, Keys("n" + uuid.uuid4().hex[:8], "q"))]
        pages = moved.MovedPages(settings, links)
        try:
            accepted, _ = await committer.submit_with_status(request, "key-7", "", "", caller="c1")
            before = script_calls()
            asked = [idempotency.scoped("c1", PAGE, f"key-{i}") for i in range(50)]
            found = await asyncio.gather(*(pages.remembered(0, key) for key in asked))
            return accepted, list(found), script_calls() - before
        finally:
            committer.close()
            await client.aclose()

    repeats, new = lookups("repeat"), lookups("new")
    accepted, found, calls = asyncio.run(main())
    assert found == [accepted if i == 7 else None for i in range(50)]
    assert (lookups("repeat") - repeats, lookups("new") - new) == (1, 49)
    assert 1 <= calls <= 3, calls  # the first call takes one key; the others wait for the second


def test_an_old_shard_that_does_not_answer_lets_requests_through_within_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis that accepts the connection and never answers (a stalled shard): every waiting
    lookup gives up after LOOKUP_SECONDS and answers None, so the request is accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()

    async def main() -> tuple[list[str | None], float]:
        stalled = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=30)
        links = [Link(stalled, Keys("s", "q")), Link(stalled, Keys("t", "q"))]
        pages = moved.MovedPages(Settings(), links)
        started = time.monotonic()
        found = await asyncio.gather(*(pages.remembered(0, f"c1:{PAGE}:k{i}") for i in range(5)))
        elapsed = time.monotonic() - started
        await stalled.aclose(close_connection_pool=True)
        return list(found), elapsed

    failed = Throttled("intake.moved_lookup_failed", every=60.0)
    counted = lookups("unanswered")
    monkeypatch.setattr(moved, "LOOKUP_FAILED", failed)
    try:
        found, elapsed = asyncio.run(main())
    finally:
        stop.set()
        acceptor.join(5)
        for conn in held:
            conn.close()
        listener.close()
    assert found == [None] * 5
    assert moved.LOOKUP_SECONDS <= elapsed < moved.LOOKUP_SECONDS + 1.0
    assert failed.count == 4  # five failures: the first logged, four counted for the next line
    assert lookups("unanswered") - counted == 5

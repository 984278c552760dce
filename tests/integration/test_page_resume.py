"""Resuming a page releases the deliveries waiting for it from its own index, never a scan of the
whole schedule (worker/store/pages.py, worker/delivery/recorder.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker.config import PageTokens, Settings
from worker.delivery.pauses import PauseKeeper, token_fingerprint
from worker.store import Keys, scripts
from worker.store.pages import resume_page

pytestmark = pytest.mark.integration


def hget_calls(client: object) -> int:
    """Reads of a field of a hash (HGET, HMGET: a record's page is its field or its packed one)."""
    stats = client.info("commandstats")  # type: ignore[attr-defined]
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hget", "hmget"))


def test_resume_reads_the_page_s_index_not_the_schedule(redis_server: RedisServer) -> None:
    keys = Keys("r" + uuid.uuid4().hex[:8], "q")
    sync = redis_server.client()
    others = {f"other-{i}": 100.0 + i for i in range(5_000)}  # a big schedule of other pages' waits
    sync.zadd(keys.sched, others)
    sync.hset(keys.delivery("mine"), mapping={"page_id": "100", "status": "scheduled", "not_before": "9e9"})
    sync.zadd(keys.sched, {"mine": 9e9})
    sync.zadd(keys.page_waits("100"), {"mine": 9e9, "claimed-meanwhile": 9e9})  # the second is stale
    sync.hset(keys.delivery("claimed-meanwhile"), mapping={"page_id": "100", "status": "in_flight"})
    before = hget_calls(sync)

    async def main() -> int:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await resume_page(client, keys, "100")
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 1
    assert hget_calls(sync) - before == 2  # the two indexed ids, not 5,000
    assert sync.zscore(keys.sched, "mine") == 0
    assert sync.hget(keys.delivery("mine"), "not_before") == b"0"
    assert sync.zscore(keys.sched, "claimed-meanwhile") is None  # not put back in the schedule
    assert sync.exists(keys.page_waits("100")) == 0


def test_the_pause_housekeeping_lifts_replaced_tokens_and_forgets_elapsed_pauses(
    redis_server: RedisServer,
) -> None:
    """One round of PauseKeeper.tick: a token-invalid pause whose page has another token now is
    lifted (its waiting delivery due at once, counted in what tick returns), and a pause whose
    time is over leaves the paused index (page.resumed, pause_elapsed)."""
    keys = Keys("r" + uuid.uuid4().hex[:8], "q")
    sync = redis_server.client()
    now = time.time()
    sync.zadd(keys.paused, {"100": now - 10, "101": now + 600})
    sync.hset(
        keys.pause("101"),
        mapping={
            "until": repr(now + 600),
            "reason": "token_invalid",
            "token_fp": token_fingerprint("old-101"),
        },
    )
    sync.hset(keys.delivery("w1"), mapping={"page_id": "101", "status": "scheduled", "not_before": "9e9"})
    sync.zadd(keys.sched, {"w1": 9e9})
    sync.zadd(keys.page_waits("101"), {"w1": 9e9})
    tokens = PageTokens(Settings(page_access_tokens={"101": "new-101"}), source="")

    async def main() -> int:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await PauseKeeper(client, keys, tokens).tick()
        finally:
            await client.aclose()

    assert asyncio.run(main()) == 1
    assert sync.zscore(keys.sched, "w1") == 0
    assert not sync.exists(keys.pause("101"))
    assert sync.zrange(keys.paused, 0, -1) == []  # the lifted pause and the elapsed one


def test_a_wait_claimed_while_its_page_resumes_is_left_alone(redis_server: RedisServer) -> None:
    """resume_page checks its waits, then makes them due: a worker may claim and end one in
    between. The last step is one script that skips what left the schedule or has no record:
    before, its HSET wrote a stub record without an expiry next to the delivery's outcome,
    and its ZADD put the ended delivery back in the schedule."""
    keys = Keys("rw" + uuid.uuid4().hex[:8], "q")

    async def main() -> tuple[int, int, int, float | None]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.hset(keys.delivery("waiting"), mapping={"status": "scheduled", "not_before": "9e9"})
            await client.zadd(keys.sched, {"waiting": 9e9, "ended": 9e9})  # "ended": its record is gone
            released = await scripts.run(
                client,
                "resume_waits",
                keys=[keys.sched],
                args=[keys.delivery_prefix, "waiting", "ended", "claimed"],
            )
            return (
                int(released),
                int(await client.exists(keys.delivery("ended"), keys.delivery("claimed"))),
                int(await client.zscore(keys.sched, "waiting") or 0),
                await client.zscore(keys.sched, "claimed"),
            )
        finally:
            await client.aclose()

    assert asyncio.run(main()) == (1, 0, 0, None)

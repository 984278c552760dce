"""Page pauses as an operator sets and lifts them (the delivery engine's own pauses are
:mod:`worker.delivery.pauses`): shared by the CLI, the admin API and the scheduler, so it lives in
the store layer that all of them may import. :func:`release_waits` makes the deliveries of an
index of waits due now: a page's, on its resume, and those on a utility template Meta paused,
once the catalogue holds it approved again (worker/templates/waits.py)."""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from worker.store import records, scripts
from worker.store.keys import Keys, text

#: An operator's pause without an end: until resumed (a year, renewed by pausing again).
UNTIL_RESUMED_SECONDS = 365 * 86_400
#: Waiting deliveries released per round trip (:func:`release_waits`).
RELEASE_CHUNK = 1000


async def pause_page(client: aioredis.Redis, keys: Keys, page_id: str, seconds: float | None) -> float:
    """Pause ``page_id`` (reason ``operator``) for ``seconds``, or until resumed (None). Its
    deliveries wait, unsent, no attempt burnt; a pause never shortens an existing one. Returns the
    pause's end (epoch s)."""
    args: list[Any] = [
        repr(time.time()),
        UNTIL_RESUMED_SECONDS if seconds is None else seconds,
        "operator",
        "0",
        "",
        "0",
        0,
        page_id,
    ]
    until = await scripts.run(client, "pause", keys=[keys.pause(page_id), keys.paused], args=args)
    return float(text(until))


async def resume_page(client: aioredis.Redis, keys: Keys, page_id: str) -> int:
    """Lift a page pause and make its waiting deliveries due now. Returns how many were released."""
    await client.delete(keys.pause(page_id))
    await client.zrem(keys.paused, page_id)
    # the deliveries that waited for this page (the recorder indexes them), not the whole schedule
    return await release_waits(client, keys, keys.page_waits(page_id), page_id)


async def release_waits(client: aioredis.Redis, keys: Keys, index: str, page_id: str) -> int:
    """Make due now the deliveries of ``page_id`` that ``index`` holds (a zset of waiting
    delivery ids the recorder writes: the page's waits, or those on one of its paused utility
    templates, worker/templates/waits.py). Returns how many were released.

    The index is read and emptied at once (MULTI: an id the recorder adds after stays for the next
    release). A delivery is released only while its record is the page's and it is still in the
    schedule, by one script that checks again (resume_waits.lua): one claimed since, and maybe
    ended, is left alone. Safe to run twice: the second finds the index empty."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrange(index, 0, -1)
        pipe.delete(index)
        taken, _ = await pipe.execute()
    ids = [text(i) for i in taken]
    released = 0
    for start in range(0, len(ids), RELEASE_CHUNK):
        released += await _release(client, keys, ids[start : start + RELEASE_CHUNK], page_id)
    return released


async def _release(client: aioredis.Redis, keys: Keys, chunk: list[str], page_id: str) -> int:
    """One chunk of :func:`release_waits`: three round trips at most."""
    pipe = client.pipeline(transaction=False)
    for i in chunk:
        pipe.hmget(keys.delivery(i), ["page_id", records.PACKED_FIELD])
    pages = [records.page_of(*values) for values in await pipe.execute()]
    mine = [i for i, p in zip(chunk, pages, strict=True) if p == page_id]
    if mine:  # still waiting (a stale member was claimed meanwhile: not in the schedule)
        pipe = client.pipeline(transaction=False)
        for i in mine:
            pipe.zscore(keys.sched, i)
        mine = [i for i, due in zip(mine, await pipe.execute(), strict=True) if due is not None]
    if not mine:
        return 0
    # made due in one script: one claimed since is left alone (resume_waits.lua)
    return int(
        await scripts.run(client, "resume_waits", keys=[keys.sched], args=[keys.delivery_prefix, *mine])
    )

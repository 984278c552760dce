"""Dead letters: deliveries that used up MAX_ATTEMPTS, or passed MESSAGE_TTL while retrying or
while their page was paused.

They stay in ``P:dead`` with their whole record (body included) until replayed or purged, or,
with ``DEAD_LETTER_RETENTION`` > 0, until they are that old (the scheduler purges them, a bounded
number per tick, and logs how many). Replay keeps the delivery_id, resets attempts and the TTL
clock, and acts only on a delivery that is still dead (``replay.lua``), so replaying twice sends
nothing twice. A replayed delivery moves from its campaign's ``dead`` to ``replayed``; a dead
letter outlives its campaign's counters (CAMPAIGN_RETENTION), so when its death is not counted in
them any more (they expired, or were made anew since), the replay counts it ``accepted`` instead:
the campaign comes back with what is known, and no counter goes negative. Purge deletes only
records that are still dead (``purge_dead.lua``).

Listing reads the dead set page by page, newest first, by a cursor on the time of death (not an
offset: a page costs the same however deep, and letters dying meanwhile are neither listed twice
nor make others skipped), and stops at ``limit`` matches; explicit ids are looked up directly,
however old they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker.config import Settings
from worker.states import State
from worker.store import campaign_ctx, envelope, records, scripts
from worker.store.keys import Keys, text

#: Records read per round trip while listing.
PAGE = 500
#: Dead letters purged per scheduler tick by DEAD_LETTER_RETENTION.
RETENTION_CHUNK = 500


@dataclass(frozen=True)
class Filter:
    page_id: str | None = None
    error_code: int | None = None
    older_than: float | None = None  # seconds since death
    limit: int = 1000

    def matches(self, rec: dict[str, str], died_at: float, now: float) -> bool:
        if rec.get("status") != State.DEAD:  # a stale entry (replayed meanwhile): not a dead letter
            return False
        if self.page_id is not None and rec.get("page_id") != self.page_id:
            return False
        if self.error_code is not None:
            err = orjson.loads(rec.get("error") or "{}")
            if err.get("code") != self.error_code:
                return False
        return not (self.older_than is not None and now - died_at < self.older_than)


def _view(delivery_id: str, rec: dict[str, str], died_at: float) -> dict[str, Any]:
    view = records.public_view(delivery_id, rec)
    view["dead_at"] = died_at
    return view


async def list_dead(client: aioredis.Redis, settings: Settings, flt: Filter) -> list[dict[str, Any]]:
    """Dead letters matching ``flt``, newest first, at most ``flt.limit``; pages of PAGE records.
    With ``older_than`` the scan starts at the newest death old enough."""
    keys = Keys.of(settings)
    now = time.time()
    newest = "+inf" if flt.older_than is None else repr(now - flt.older_than)
    out: list[dict[str, Any]] = []
    skip = 0  # the entries at exactly ``newest`` already read (a death time several letters share)
    while len(out) < flt.limit:
        # a cursor by death time, not an offset from the newest: letters dying meanwhile do not
        # shift the pages (listed twice, or skipped), and Redis does not walk the offset again
        entries = await client.zrevrangebyscore(
            keys.dead, newest, "-inf", start=skip, num=PAGE, withscores=True
        )
        if not entries:
            break
        last = float(entries[-1][1])
        same = sum(1 for _, score in entries if float(score) == last)
        skip = same + (skip if repr(last) == newest else 0)
        newest = repr(last)
        pipe = client.pipeline(transaction=False)
        for member, _score in entries:
            pipe.hgetall(keys.delivery(text(member)))
        for (member, score), raw in zip(entries, await pipe.execute(), strict=True):
            rec = records.decode(raw) if raw else {}
            if rec and flt.matches(rec, float(score), now):
                out.append(_view(text(member), rec, float(score)))
                if len(out) >= flt.limit:
                    break
    return out


async def find_dead(
    client: aioredis.Redis, settings: Settings, ids: list[str], flt: Filter
) -> list[dict[str, Any]]:
    """The dead letters among ``ids`` that match ``flt`` (looked up directly, in the given order)."""
    keys = Keys.of(settings)
    now = time.time()
    out: list[dict[str, Any]] = []
    wanted = list(dict.fromkeys(ids))[: flt.limit]
    for start in range(0, len(wanted), PAGE):
        chunk = wanted[start : start + PAGE]
        pipe = client.pipeline(transaction=False)
        for delivery_id in chunk:
            pipe.zscore(keys.dead, delivery_id)
            pipe.hgetall(keys.delivery(delivery_id))
        res = await pipe.execute()
        for i, delivery_id in enumerate(chunk):
            died_at, raw = res[2 * i], res[2 * i + 1]
            rec = records.decode(raw) if raw else {}
            if died_at is not None and rec and flt.matches(rec, float(died_at), now):
                out.append(_view(delivery_id, rec, float(died_at)))
    return out


async def select(
    client: aioredis.Redis, settings: Settings, ids: list[str] | None, flt: Filter
) -> list[dict[str, Any]]:
    """What a replay or purge acts on: the given ids (looked up directly) or every match."""
    if ids is not None:
        return await find_dead(client, settings, ids, flt)
    return await list_dead(client, settings, flt)


async def replay(client: aioredis.Redis, settings: Settings, ids: list[str]) -> list[str]:
    keys = Keys.of(settings)
    done: list[str] = []
    for start in range(0, len(ids), settings.batch_max):
        chunk = ids[start : start + settings.batch_max]
        now = time.time()
        res = await scripts.run(
            client,
            "replay",
            keys=[keys.dead, keys.pending, keys.open],
            args=[
                repr(now),
                settings.sweep_after_seconds,
                keys.delivery_prefix,
                *campaign_ctx.of_settings(keys, settings, now),
                *chunk,
            ],
        )
        replayed = [text(i) for i in res]
        await envelope.publish(client, settings.queue_name, replayed, settings.batch_max)
        done += replayed
    return done


async def purge(client: aioredis.Redis, settings: Settings, ids: list[str]) -> int:
    keys = Keys.of(settings)
    purged = 0
    for start in range(0, len(ids), PAGE):
        chunk = ids[start : start + PAGE]
        res = await scripts.run(
            client, "purge_dead", keys=[keys.dead], args=[keys.delivery_prefix, "", 0, *chunk]
        )
        purged += len(res)
    return purged


async def purge_expired(client: aioredis.Redis, settings: Settings, now: float | None = None) -> int:
    """DEAD_LETTER_RETENTION: delete up to RETENTION_CHUNK dead letters older than it (0 = keep)."""
    if settings.dead_letter_retention <= 0:
        return 0
    keys = Keys.of(settings)
    cutoff = (time.time() if now is None else now) - settings.dead_letter_retention
    res = await scripts.run(
        client, "purge_dead", keys=[keys.dead], args=[keys.delivery_prefix, repr(cutoff), RETENTION_CHUNK]
    )
    return len(res)

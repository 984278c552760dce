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

**A letter of a moved page** (``shards move``, docs/scaling.md) stays on the shard where it died,
which no longer holds the page's pause, suppressions, limiter, links or windows. Replayed there,
that shard's workers would send it without them. So the fleet (worker/fleet.py) first
:func:`move` s it to the page's shard, where it is replayed: the record is copied there as a dead
letter (``dead_move_in.lua``: with its time of death and history; a death its campaign counted
is counted there, ``accepted`` and ``dead``), then the old shard lets it go
(``dead_move_out.lua``: deleted, uncounted). Each step is one script on one Redis and does
nothing the second time, so a move that stops half way (a crash) is finished by the next replay
of the letter, and is never sent twice: the old shard's copy is never replayed once the page
lives elsewhere, the new shard's copy is replayed only after the old one is gone, and a letter
the new shard has already (or has sent: its outcome) is not copied again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker.config import Settings
from worker.states import State
from worker.store import campaign_ctx, envelope, outcomes, records, scripts
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


@dataclass(frozen=True, slots=True)
class _Letter:
    """A dead letter as the shard it died on holds it (what :func:`move` copies)."""

    delivery_id: str
    died_at: float
    fields: list[Any]  # the record's field/value pairs, raw
    history: list[Any]
    history_ms: int  # the history's remaining time (0: none)
    campaign: str
    counted: bool  # its death is in the campaign's `dead` there


async def _letters(client: aioredis.Redis, keys: Keys, ids: list[str]) -> list[_Letter]:
    """The dead letters among ``ids`` on ``client``'s shard, and whether their campaigns' counters
    there count their deaths (replay.lua's rule: the hash began before the death, and its
    ``dead`` has one for each)."""
    pipe = client.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hgetall(keys.delivery(delivery_id))
        pipe.zscore(keys.dead, delivery_id)
        pipe.lrange(keys.history(delivery_id), 0, -1)
        pipe.pttl(keys.history(delivery_id))
    res = await pipe.execute()
    found: list[tuple[str, float, dict[Any, Any], list[Any], int, str]] = []
    for i, delivery_id in enumerate(ids):
        raw, died, history, ttl = res[4 * i : 4 * i + 4]
        rec = records.decode(raw) if raw else {}
        if rec.get("status") == State.DEAD and died is not None:
            camp = rec.get("campaign_id") or rec.get("canvas_id") or ""
            found.append((delivery_id, float(died), raw, history, max(int(ttl), 0), camp))
    camps = sorted({f[5] for f in found if f[5]})
    pipe = client.pipeline(transaction=False)
    for camp in camps:
        pipe.hmget(keys.campaign(camp), ["first_at", State.DEAD.value])
    counts = {
        c: (None if f is None else float(f), int(d or 0))
        for c, (f, d) in zip(camps, await pipe.execute(), strict=True)
    }
    out: list[_Letter] = []
    for delivery_id, died, raw, history, ttl, camp in found:
        first, dead = counts.get(camp, (None, 0))
        counted = bool(camp) and dead > 0 and first is not None and died >= first
        if counted:
            counts[camp] = (first, dead - 1)
        pairs = [x for item in raw.items() for x in item]
        out.append(_Letter(delivery_id, died, pairs, history, ttl, camp, counted))
    return out


async def move(
    source: aioredis.Redis, target: aioredis.Redis, settings: Settings, ids: list[str]
) -> list[str]:
    """Moves the dead letters among ``ids`` from ``source`` to ``target``, the shard of their page
    (the module docstring): :func:`copy_to` ``target`` first, then :func:`let_go` on ``source``,
    so a move cut short leaves the letter on both (the next replay finishes it), never on
    neither. Returns the ids that are dead letters on ``target`` now, to replay there; a letter
    ``target`` holds otherwise (replayed there since) is only let go by ``source``."""
    letters, arrived = await copy_to(source, target, settings, ids)
    await let_go(source, settings, letters)
    return arrived


async def copy_to(
    source: aioredis.Redis, target: aioredis.Redis, settings: Settings, ids: list[str]
) -> tuple[list[_Letter], list[str]]:
    """:func:`move`'s first step: the dead letters among ``ids`` on ``source`` written to
    ``target`` as dead letters (``dead_move_in.lua``), unless ``target`` holds the delivery
    already (open, final or dead: an earlier move's). Returns the letters read (for
    :func:`let_go`) and the ids dead on ``target`` now."""
    keys = Keys.of(settings)
    letters = await _letters(source, keys, ids)
    arrived: list[str] = []
    for letter in letters:
        there = await outcomes.read(target, keys, letter.delivery_id, settings.record_retention)
        if not there:
            copied = await scripts.run(
                target,
                "dead_move_in",
                keys=[keys.dead, keys.delivery(letter.delivery_id), keys.history(letter.delivery_id)],
                args=[
                    letter.delivery_id,
                    repr(letter.died_at),
                    letter.campaign,
                    "1" if letter.counted else "0",
                    keys.campaign_prefix,
                    keys.campaigns,
                    settings.campaign_retention,
                    repr(time.time()),
                    letter.history_ms,
                    len(letter.fields) // 2,
                    *letter.fields,
                    *letter.history,
                ],
            )
            there = {"status": State.DEAD.value} if int(copied) else {}
            if not there:  # written there meanwhile: read again what it is
                there = await outcomes.read(target, keys, letter.delivery_id, settings.record_retention)
        if there.get("status") == State.DEAD:
            arrived.append(letter.delivery_id)
    return letters, arrived


async def let_go(source: aioredis.Redis, settings: Settings, letters: list[_Letter]) -> list[str]:
    """:func:`move`'s second step, once ``target`` holds them: ``source`` deletes the letters
    that are still dead there and takes their counted deaths out of its campaigns' counters
    (``dead_move_out.lua``). Returns the ids let go."""
    keys = Keys.of(settings)
    out: list[str] = []
    for start in range(0, len(letters), PAGE):
        args: list[Any] = [keys.delivery_prefix, keys.history_prefix, keys.campaign_prefix]
        for letter in letters[start : start + PAGE]:
            args += [letter.delivery_id, letter.campaign, "1" if letter.counted else "0"]
        out += [text(i) for i in await scripts.run(source, "dead_move_out", keys=[keys.dead], args=args)]
    return out


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

"""Every shard at once: what the intake, the console and the CLI read and do across REDIS_SHARDS.

A :class:`Fleet` holds one async client per shard (:mod:`worker.store.shards`). What belongs to
one page or one delivery goes to its shard (:meth:`Fleet.for_page`, :meth:`Fleet.for_delivery`:
a delivery id issued before shards is looked for in shard 0 after the shard it seems to name);
what spans pages is asked of every shard and combined here, once, so that the HTTP API, the
console and the CLI give the same answer:

* campaigns: a campaign's deliveries are spread over the shards of its pages, so its counters
  are the sums (and ``accepted = sent + failed + expired + dead + cancelled + open`` still
  holds: it holds in each); a stop is written to every shard (a page of any shard may receive
  the campaign's next request), and is reported stopped when any shard has it stopped;
* dead letters: listed newest first across shards (each shard's list is newest first; a merge);
  purged on the shard that holds each id, replayed on its page's shard: a letter of a page moved
  since it died (``shards move``) is moved there first (:func:`deadletters.move`), where the
  page's pause, suppressions and limiter are;
* the queue purge: every shard's queue.

**A shard that does not answer.** The listings across shards (campaigns, one campaign's counters,
dead letters and their count) leave it out and name it: they return an :class:`Across`, whose
``unavailable`` the API answers as ``unavailable_shards`` and the console and the CLI show as a
warning. Everything else still needs every shard it touches: a stop or a resume is written to
every shard (a 503 when one does not answer: retry it), and a dead-letter action chosen by a
filter refuses (:class:`ShardUnavailable`) rather than replaying or purging only the answering
shards' letters. When no shard answers, a listing raises as before.

With one shard, every method is the single-Redis call it wraps.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from worker import campaigns, lookup
from worker.config import Settings
from worker.store import Keys, deadletters, outcomes, pagemove, records, residents, shards

T = TypeVar("T")

#: A shard whose call raises one of these has not answered: a listing leaves it out.
SHARD_DOWN: tuple[type[Exception], ...] = (RedisError, OSError)


class ShardUnavailable(RedisConnectionError):
    """An action across shards that needs every shard found one that did not answer (a Redis
    error: the intake answers 503, the CLI exits non-zero)."""


@dataclass(frozen=True, slots=True)
class Across(Generic[T]):
    """A read across shards: what the shards that answered gave, and the indexes of those that
    did not (empty with one shard, or when all answered)."""

    value: T
    unavailable: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    settings: Settings
    keys: Keys
    redis: aioredis.Redis


class Fleet:
    def __init__(self, settings: Settings, members: Sequence[Shard]) -> None:
        if len(members) != shards.count(settings):
            raise ValueError("a Fleet needs one client per shard")
        self.settings = settings
        self.shards: tuple[Shard, ...] = tuple(members)

    @classmethod
    def connect(cls, settings: Settings, make_client: Callable[[Settings], aioredis.Redis]) -> Fleet:
        """One client per shard, from ``make_client(shard_settings)``."""
        return cls(
            settings,
            [Shard(i, s, Keys.of(s), make_client(s)) for i, s in enumerate(shards.every(settings))],
        )

    async def close(self) -> None:
        for shard in self.shards:
            await shard.redis.aclose()

    def for_page(self, page_id: str) -> Shard:
        return self.shards[shards.of_page(self.settings, page_id)]

    def for_delivery(self, delivery_id: str) -> list[Shard]:
        """The shards that may hold the delivery, in the order to ask (:func:`shards.holders`:
        its id's shard, then shard 0 for an id issued before shards), then the others: a dead
        letter of a moved page is replayed on the page's new shard (:meth:`replay`), and lives
        there since. Only an id the first ones do not have costs a read of the others."""
        first = shards.holders(self.settings, delivery_id)
        if not first:
            return []
        return [self.shards[i] for i in first] + [s for s in self.shards if s.index not in first]

    async def record(self, delivery_id: str) -> dict[str, str]:
        """The delivery's record, open or final ({} when no shard has it)."""
        for shard in self.for_delivery(delivery_id):
            rec = await outcomes.read(shard.redis, shard.keys, delivery_id, shard.settings.record_retention)
            if rec:
                return rec
        return {}

    async def _each(self, call: Callable[[Shard], Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(call(shard) for shard in self.shards)))

    async def _answering(self, call: Callable[[Shard], Awaitable[T]]) -> tuple[list[T], tuple[int, ...]]:
        """``call`` on every shard at once: the results of the shards that answered, and the
        indexes of those that did not (:data:`SHARD_DOWN`). Raises when none answered."""
        results = await asyncio.gather(*(call(shard) for shard in self.shards), return_exceptions=True)
        got: list[T] = []
        down: list[int] = []
        errors: list[BaseException] = []
        for shard, result in zip(self.shards, results, strict=True):
            if isinstance(result, SHARD_DOWN):
                down.append(shard.index)
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                got.append(result)
        if not got:
            raise errors[0]
        return got, tuple(down)

    async def _by_shard(self, ids: Iterable[str]) -> dict[int, list[str]]:
        """Dead letters (hashes) grouped by the shard that has them, asked in
        :meth:`for_delivery`'s order (each id's own shard, shard 0 for an id issued before
        shards, then the others: a letter moved with its page); ids no shard has are left out.
        The first shard that has it wins: while a move cut short leaves a letter on two shards,
        the one it was moved from (:meth:`replay` finishes the move)."""
        out: dict[int, list[str]] = {}
        asking = {d: [s.index for s in self.for_delivery(d)] for d in dict.fromkeys(ids)}
        if len(self.shards) == 1:
            return {0: list(asking)} if asking else {}
        while asking:
            ask: dict[int, list[str]] = {}
            for delivery_id, order in asking.items():
                ask.setdefault(order[0], []).append(delivery_id)
            for index, chunk in ask.items():
                shard = self.shards[index]
                pipe = shard.redis.pipeline(transaction=False)
                for delivery_id in chunk:
                    pipe.exists(shard.keys.delivery(delivery_id))
                for delivery_id, there in zip(chunk, await pipe.execute(), strict=True):
                    if there:
                        out.setdefault(index, []).append(delivery_id)
            found = {d for chunk in out.values() for d in chunk}
            asking = {d: order[1:] for d, order in asking.items() if order[1:] and d not in found}
        return out

    # --- campaigns ------------------------------------------------------------------------------
    async def campaign(self, campaign_id: str) -> Across[dict[str, Any] | None]:
        found, down = await self._answering(lambda s: campaigns.campaign(s.redis, s.keys, campaign_id))
        views = [v for v in found if v]
        return Across(merge_campaign(views) if views else None, down)

    async def list_campaigns(self, *, limit: int = 100) -> Across[list[dict[str, Any]]]:
        """The ``limit`` most recently active campaigns across shards, newest first. Each shard
        answers its own most recent ``limit``, which picks the merged ones exactly (a campaign's
        latest activity is in its shard's list); a shard that left one of them out (active there
        only before its own ``limit``) is asked for it by id, so its counters are whole."""

        async def listed(shard: Shard) -> tuple[Shard, list[dict[str, Any]]]:
            return shard, await campaigns.list_campaigns(shard.redis, shard.keys, limit=limit)

        lists, down = await self._answering(listed)
        grouped: dict[str, list[dict[str, Any]]] = {}
        for _, views in lists:
            for view in views:
                grouped.setdefault(view["campaign_id"], []).append(view)
        latest = {cid: max(v.get("last_at") or 0.0 for v in views) for cid, views in grouped.items()}
        top = sorted(grouped, key=lambda cid: -latest[cid])[:limit]
        asks = [
            (shard, cid)
            for shard, views in lists
            for cid in sorted(set(top) - {view["campaign_id"] for view in views})
        ]
        found = await asyncio.gather(
            *(campaigns.campaign(shard.redis, shard.keys, cid) for shard, cid in asks)
        )
        for (_, cid), extra in zip(asks, found, strict=True):
            if extra is not None:
                grouped[cid].append(extra)
        return Across([merge_campaign(grouped[cid]) for cid in top], down)

    async def stop_campaign(self, campaign_id: str, *, by: str) -> int:
        return sum(await self._each(lambda s: campaigns.stop(s.redis, s.settings, campaign_id, by=by)))

    async def resume_campaign(self, campaign_id: str) -> bool:
        return any(await self._each(lambda s: campaigns.resume(s.redis, s.settings, campaign_id)))

    async def cancel_delivery(self, delivery_id: str) -> bool:
        for shard in self.for_delivery(delivery_id):
            if await campaigns.cancel_delivery(shard.redis, shard.settings, delivery_id):
                return True
        return False

    async def pause_page(self, page_id: str, seconds: float | None = None) -> float:
        """Pause the page on its shard, and on a shard it was moved from that still sends for
        it (``shards move`` before ``--finish``: the old shard's messages must wait too)."""
        home = self.for_page(page_id)
        until = await campaigns.pause_page(home.redis, home.settings, page_id, seconds)
        for shard in await self._moved_from(home, page_id):
            await campaigns.pause_page(shard.redis, shard.settings, page_id, seconds)
        return until

    async def resume_page(self, page_id: str) -> int:
        """Lift the page's pause on its shard, and on any other shard that holds a pause or
        waits of it (a page paused before it was moved: the old shard's waits are released too).
        A shard that does not answer is skipped: it holds none of this page's, or will say so."""
        home = self.for_page(page_id)
        released = await campaigns.resume_page(home.redis, home.settings, page_id)
        for shard in await self._holding(home, page_id):
            released += await campaigns.resume_page(shard.redis, shard.settings, page_id)
        return released

    async def _holding(self, home: Shard, page_id: str) -> list[Shard]:
        """The other shards with a pause or waits of ``page_id`` (one EXISTS each, at once)."""
        others = [s for s in self.shards if s is not home]
        if not others:
            return []
        found = await asyncio.gather(
            *(s.redis.exists(s.keys.pause(page_id), s.keys.page_waits(page_id)) for s in others),
            return_exceptions=True,
        )
        return [s for s, n in zip(others, found, strict=True) if not isinstance(n, BaseException) and n]

    async def _moved_from(self, home: Shard, page_id: str) -> list[Shard]:
        """The shard ``page_id`` was moved from, while it still holds the page's sends (its
        limiter's recent use, which ``--finish`` drops): [] for a page that never moved."""
        if len(self.shards) == 1:
            return []
        marks = await pagemove.moved_marks(home.redis, home.keys)
        if page_id not in marks:
            return []
        source = self.shards[marks[page_id][0]]
        return [source] if await pagemove.still_sends(source.redis, source.keys, page_id) else []

    async def purge_queue(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counts in await self._each(lambda s: campaigns.purge_queue(s.redis, s.settings)):
            for name, n in counts.items():
                totals[name] = totals.get(name, 0) + n
        return totals

    # --- dead letters ---------------------------------------------------------------------------
    async def list_dead(self, flt: deadletters.Filter) -> Across[list[dict[str, Any]]]:
        lists, down = await self._answering(lambda s: deadletters.list_dead(s.redis, s.settings, flt))
        return Across(list(heapq.merge(*lists, key=lambda v: -float(v["dead_at"])))[: flt.limit], down)

    async def select_dead(self, ids: list[str] | None, flt: deadletters.Filter) -> list[dict[str, Any]]:
        """The dead letters an action applies to: the ids given, or the filter's across every
        shard (refused when a shard does not answer: its letters would be skipped unseen)."""
        if ids is None:
            listed = await self.list_dead(flt)
            if listed.unavailable:
                raise ShardUnavailable(f"shard {listed.unavailable[0]} did not answer; nothing was done")
            return listed.value
        found: list[dict[str, Any]] = []
        for index, chunk in (await self._by_shard(ids)).items():
            shard = self.shards[index]
            found += await deadletters.find_dead(shard.redis, shard.settings, chunk, flt)
        return found[: flt.limit]

    async def dead_count(self) -> Across[int]:
        counts, down = await self._answering(lambda s: s.redis.zcard(s.keys.dead))
        return Across(sum(counts), down)

    async def replay(self, ids: list[str]) -> list[str]:
        """Replays each dead letter on its page's shard: one on the shard where it died, if that
        still holds the page; else it is moved to the page's shard first (:func:`deadletters.move`:
        copied there, then let go here) and replayed there, where the page's pause, suppressions,
        limiter, links and windows are. Returns the ids replayed."""
        done: list[str] = []
        for index, chunk in (await self._by_shard(ids)).items():
            shard = self.shards[index]
            homes = await self._homes(shard, chunk)
            here = [d for d in chunk if homes.get(d, index) == index]
            if here:
                done += await deadletters.replay(shard.redis, shard.settings, here)
            for to in sorted(set(homes.values()) - {index}):
                target = self.shards[to]
                moving = [d for d in chunk if homes.get(d) == to]
                arrived = await deadletters.move(shard.redis, target.redis, target.settings, moving)
                done += await deadletters.replay(target.redis, target.settings, arrived)
        return done

    async def _homes(self, shard: Shard, ids: list[str]) -> dict[str, int]:
        """The shard of each one's page now (SHARD_PAGES, hashing), by its record on ``shard``;
        ids without a record there are left out."""
        if len(self.shards) == 1:
            return {}
        pipe = shard.redis.pipeline(transaction=False)
        for delivery_id in ids:
            pipe.hmget(shard.keys.delivery(delivery_id), ["page_id", records.PACKED_FIELD])
        out: dict[str, int] = {}
        for delivery_id, (page_id, packed) in zip(ids, await pipe.execute(), strict=True):
            page = records.page_of(page_id, packed)
            if page:
                out[delivery_id] = shards.of_page(self.settings, page)
        return out

    async def purge_dead(self, ids: list[str]) -> int:
        purged = 0
        for index, chunk in (await self._by_shard(ids)).items():
            shard = self.shards[index]
            purged += await deadletters.purge(shard.redis, shard.settings, chunk)
        return purged

    # --- look-ups -------------------------------------------------------------------------------
    async def delivery_story(self, delivery_id: str) -> dict[str, Any] | None:
        for shard in self.for_delivery(delivery_id):
            story = await lookup.delivery_story(shard.redis, shard.settings, delivery_id)
            if story is not None:
                return story
        return None

    async def recipient_state(self, page_id: str, psid: str) -> dict[str, Any]:
        shard = self.for_page(page_id)
        return await lookup.recipient_state(shard.redis, shard.settings, page_id, psid)

    # --- the shard list -------------------------------------------------------------------------
    async def pages_with_state(self) -> list[residents.Residents]:
        """Each shard's pages with state (:func:`worker.store.residents.scan`: every key of
        every shard, one at a time). Every shard must answer: a plan or a check that skipped one
        would miss its pages (:class:`ShardUnavailable`)."""
        out = []
        for shard in self.shards:
            try:
                out.append(await residents.scan(shard.redis, shard.keys))
            except SHARD_DOWN as exc:
                raise ShardUnavailable(
                    f"shard {shard.index} did not answer; nothing was read: {exc}"
                ) from exc
        return out


def merge_campaign(views: list[dict[str, Any]]) -> dict[str, Any]:
    """One campaign's views from several shards as one: counters summed, failure reasons summed,
    stopped when any shard has it stopped (the earliest stop), first and last activity."""
    if len(views) == 1:
        return views[0]
    out = dict(views[0])
    for view in views[1:]:
        for name, value in view.items():
            if isinstance(value, int) and not isinstance(value, bool) and name in out:
                out[name] = out[name] + value
        reasons = dict(out["failed_reasons"])
        for reason, n in view["failed_reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n
        out["failed_reasons"] = reasons
    stops = [v for v in views if v.get("stopped")]
    out["stopped"] = bool(stops)
    if stops:
        first = min(stops, key=lambda v: float(v["stopped_at"]))
        out["stopped_at"], out["stopped_by"] = first["stopped_at"], first.get("stopped_by", "")
    firsts = [v["first_at"] for v in views if v.get("first_at")]
    lasts = [v["last_at"] for v in views if v.get("last_at")]
    out["first_at"] = min(firsts) if firsts else None
    out["last_at"] = max(lasts) if lasts else None
    return out

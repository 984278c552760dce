"""Moving a page's state from one shard to another (``messenger-worker shards move``).

A page's deliveries stay where they were accepted: their ids name their shard, and that shard's
workers send them. What moves is the state its new traffic needs (worker/store/residents.py):
its recipients' windows and suppressions, the Braze links from signed refs, the webhook message
ids already recorded, its pause and its template catalogue. Not its limiter buckets (state of
the last seconds) nor its parked and waiting messages: those are deliveries, and a move's
second step waits until the old shard has none of the page's open.

The procedure (docs/scaling.md, Moving a page):

1. :func:`copy_page` from the shard that holds the page to the new one. Keys the new shard has
   already are kept (never overwritten), but for a recipient's window that the old shard has
   later (windows only move later); each copied key keeps its remaining expiry (``DUMP``,
   ``PTTL``, ``RESTORE``).
2. The operator pins the page to the new shard (SHARD_PAGES) and rolls the pin out: new
   requests and webhooks go there, with the state copied. The old shard's workers send what it
   still holds.
3. Once :func:`open_deliveries` on the old shard is 0 (queued, waiting, parked, in flight: their
   records are open): :func:`copy_page` again of :data:`MERGED` (what the old shard wrote
   meanwhile and the new one lacks; not the pause: the new shard's is the page's now), then
   :func:`drop_page` on the old shard, so that no page's state is in two places (``shards
   check``).

What does not move: the Idempotency-Keys of the requests the old shard accepted (they are in
buckets named by a digest, not by the page). So both steps also note on the new shard where the
page came from (:func:`mark_moved`: ``P:moved``, for two IDEMPOTENCY_TTLs, as long as the old
shard may remember a key), and the intake looks a request's key up there too
(:func:`remembered`, ``moved_lookup.lua``) before the new shard accepts it. A Braze retry of a
request whose 202 was lost around the pin's rollout is then answered as a repeat, with the id
the old shard gave it. Left open: a retry that reaches the new shard while a process without
the pin still sends the page's requests to the old one, in the same instant as the first
request (both shards accept it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import ResponseError

from worker.states import OPEN
from worker.store import idempotency, records, scripts
from worker.store.keys import Keys, text
from worker.store.residents import family_of_key

#: The key families that move with a page (worker/store/residents.py's names).
MOVED: Final = frozenset({"wu", "win", "wcl", "supp", "supptag", "ext", "mid", "unread", "pause", "tpl"})
#: What the last step copies again: what the old shard may have learned while it sent the page's
#: last messages, where the new shard's own copy wins. Not the pause nor the catalogue: once the
#: pin is out the new shard's are the page's (a pause lifted there must not come back).
MERGED: Final = MOVED - {"pause", "tpl"}
#: What the old shard drops at the end: the moved keys and its limiter buckets for the page (the
#: pace of its last sends, which it has no more of to make).
DROPPED: Final = MOVED | {"rl", "rl:r"}
_OPEN: Final = frozenset(s.value for s in OPEN)
_BATCH: Final = 500


async def page_keys(
    client: Any, keys: Keys, page: str, *, families: frozenset[str] = MOVED, batch: int = 1000
) -> list[str]:
    """The page's keys of ``families`` on ``client``'s shard (one SCAN of the service's keys)."""
    out: list[str] = []
    async for raw in client.scan_iter(match=f"{keys.prefix}:*", count=batch):
        found = family_of_key(keys.prefix, name := text(raw))
        if found is not None and found[1] == page and found[0] in families:
            out.append(name)
    return out


async def open_deliveries(client: Any, keys: Keys, page: str, *, batch: int = 1000) -> int:
    """How many of the page's deliveries on ``client``'s shard are not final (one SCAN of the
    records and an ``HMGET`` of each one's page and status, ``batch`` at a time)."""
    head = keys.delivery("")
    count = 0
    pending: list[str] = []
    async for raw in client.scan_iter(match=f"{head}*", count=batch):
        if ":" not in (name := text(raw))[len(head) :]:
            pending.append(name)
        if len(pending) >= batch:
            count += await _open_of(client, pending, page)
            pending = []
    return count + (await _open_of(client, pending, page) if pending else 0)


async def _open_of(client: Any, names: list[str], page: str) -> int:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(name, ["page_id", records.PACKED_FIELD, "status"])
    return sum(
        1
        for page_id, packed, status in await pipe.execute()
        if records.page_of(page_id, packed) == page and status is not None and text(status) in _OPEN
    )


@dataclass(frozen=True, slots=True)
class Copied:
    copied: int
    kept: int  # already on the target: its own, newer


async def copy_page(
    source: Any, target: Any, keys: Keys, page: str, *, families: frozenset[str] = MOVED
) -> Copied:
    """The page's keys of ``families`` from ``source`` to ``target`` (the module docstring: step
    1 copies :data:`MOVED`, step 3 :data:`MERGED`)."""
    moved = await page_keys(source, keys, page, families=families)
    copied = kept = 0
    for start in range(0, len(moved), _BATCH):
        chunk = moved[start : start + _BATCH]
        pipe = source.pipeline(transaction=False)
        for name in chunk:
            pipe.dump(name)
            pipe.pttl(name)
        answers = await pipe.execute()
        pipe = target.pipeline(transaction=False)
        restored: list[str] = []
        for j, name in enumerate(chunk):
            dumped, ttl = answers[2 * j], answers[2 * j + 1]
            if dumped is None or ttl == -2:  # expired since the scan named it
                continue
            pipe.restore(name, max(int(ttl), 0), dumped)  # 0: no expiry, as on the source
            restored.append(name)
        if not restored:
            continue
        busy: list[str] = []
        for name, result in zip(restored, await pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, ResponseError) and "BUSYKEY" in str(result):
                busy.append(name)
            elif isinstance(result, Exception):
                raise result
            else:
                copied += 1
        later = await _later_windows(source, target, keys, busy)
        copied, kept = copied + later, kept + len(busy) - later
    indexes = [
        i for family, i in (("pause", keys.paused), ("tpl", keys.templates_synced)) if family in families
    ]
    for index in indexes:  # the shard-wide indexes that name it
        score = await source.zscore(index, page)
        if score is not None:
            await target.zadd(index, {page: score}, nx=True)
    return Copied(copied, kept)


async def _later_windows(source: Any, target: Any, keys: Keys, names: list[str]) -> int:
    """Of the keys both shards hold, the recipients' windows (``wu``: when a window closes, which
    only ever moves later) that the source has later than the target: written to the target with
    the source's expiry (the user wrote again where the page's events still went). The other
    families keep the target's copy: nothing records which shard wrote last. Returns how many."""
    windows = [n for n in names if (family_of_key(keys.prefix, n) or ("", ""))[0] == "wu"]
    if not windows:
        return 0
    pipe = source.pipeline(transaction=False)
    for name in windows:
        pipe.get(name)
        pipe.pttl(name)
    theirs = await pipe.execute()
    ours = await target.mget(windows)
    pipe = target.pipeline(transaction=False)
    later = 0
    for j, name in enumerate(windows):
        value, ttl, current = theirs[2 * j], theirs[2 * j + 1], ours[j]
        if value is None or (current is not None and _number(current) >= _number(value)):
            continue
        pipe.set(name, value, px=int(ttl) if int(ttl) > 0 else None)
        later += 1
    if later:
        await pipe.execute()
    return later


def _number(value: bytes | str) -> float:
    try:
        return float(text(value))
    except ValueError:  # not a time: never the later one
        return float("-inf")


async def drop_page(client: Any, keys: Keys, page: str) -> int:
    """Deletes the page's moving keys on ``client``'s shard, its limiter buckets, its entries in
    the shard-wide indexes and its recent sends (``P:rl:used``): the state now lives on its new
    shard (step 3). Returns how many keys were deleted."""
    moved = await page_keys(client, keys, page, families=DROPPED)
    deleted = 0
    for start in range(0, len(moved), _BATCH):
        deleted += int(await client.unlink(*moved[start : start + _BATCH]))
    await client.zrem(keys.paused, page)
    await client.zrem(keys.templates_synced, page)
    used = [m async for m, _ in client.zscan_iter(keys.buckets, match=f"{_glob(page)}:*", count=1000)]
    if used:
        await client.zrem(keys.buckets, *used)
    return deleted


def _glob(text_: str) -> str:
    """``text_`` matched literally in a SCAN pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text_)


# --- where a page came from: its requests' Idempotency-Keys ------------------------------------


def parse_mark(value: bytes | str) -> tuple[int, float] | None:
    """A ``P:moved`` value, ``{shard}:{until}`` -> (the shard the page came from, until when its
    keys are asked there, epoch seconds); None for anything else."""
    shard, _, until = text(value).partition(":")
    try:
        return int(shard), float(until)
    except ValueError:
        return None


def _live_marks(raw: dict[Any, Any], now: float) -> dict[str, tuple[int, float]]:
    """The marks of a ``P:moved`` HGETALL that have not run out at ``now``."""
    out: dict[str, tuple[int, float]] = {}
    for page, value in raw.items():
        mark = parse_mark(value)
        if mark is not None and mark[1] > now:
            out[text(page)] = mark
    return out


async def moved_marks(client: Any, keys: Keys, now: float | None = None) -> dict[str, tuple[int, float]]:
    """The pages moved to ``client``'s shard whose marks have not run out: page -> (the shard it
    came from, until)."""
    return _live_marks(await client.hgetall(keys.moved), time.time() if now is None else now)


async def mark_moved(client: Any, keys: Keys, page: str, source: int, until: float) -> None:
    """Notes on the page's new shard (``client``) that its requests' keys are asked on shard
    ``source`` too until ``until``; drops the marks that ran out, and the hash expires with its
    last mark."""
    raw = await client.hgetall(keys.moved)
    marks = _live_marks(raw, time.time())
    marks[page] = (source, until)
    stale = [f for f in raw if text(f) not in marks]
    pipe = client.pipeline(transaction=True)
    if stale:
        pipe.hdel(keys.moved, *stale)
    pipe.hset(keys.moved, page, f"{source}:{until:.0f}")
    pipe.expireat(keys.moved, int(max(u for _, u in marks.values())) + 1)
    await pipe.execute()


async def still_sends(client: Any, keys: Keys, page: str) -> bool:
    """Whether ``client``'s shard still sends for ``page``: its limiter was used for the page
    (``P:rl:used``, kept a day), which ``--finish`` drops (:func:`drop_page`). Between the two
    steps of a move, the old shard's pauses and webhook events matter for what it holds."""
    used = await client.zmscore(keys.buckets, [f"{page}:text", f"{page}:media"])
    return any(score is not None for score in used)


def mark_until(idempotency_ttl: int, now: float | None = None) -> float:
    """How long a mark is kept: as long as a key accepted now may be remembered on the old shard
    (two IDEMPOTENCY_TTLs: worker/store/idempotency.py)."""
    return (time.time() if now is None else now) + 2 * idempotency_ttl


async def remembered(client: Any, keys: Keys, idempotency_ttl: int, scoped: list[str]) -> list[str | None]:
    """The delivery id ``client``'s shard remembers for each scoped Idempotency-Key (as
    accept.lua would find it there), or None; one script call for them all."""
    args: list[Any] = [idempotency_ttl, keys.idem_bucket_prefix]
    for key in scoped:
        digest = idempotency.digest(key)
        args += [digest[: idempotency.SUFFIX].encode() + idempotency.field(digest), keys.idem(key)]
    found = await scripts.run(client, "moved_lookup", args=args)
    return [idempotency.delivery_id(f) if isinstance(f, bytes) and f else None for f in found]

"""Which Redis holds what, when REDIS_SHARDS names several (docs/scaling.md).

A shard is an independent Redis with the whole key layout of :mod:`worker.store.keys` and its own
Celery queue, served by its own workers (``SHARD_INDEX``). A **page** lives in exactly one shard:
its deliveries, its limiter buckets, its pause, its recipients' windows, links and parked
messages, and the Celery messages that name them. So every Lua script keeps touching one Redis,
and pacing, ordering and idempotency (keys scoped to a page) hold per shard as they do in one.

* :func:`of_page`: a page pinned by SHARD_PAGES goes there; any other by rendezvous hashing
  (highest ``blake2b(shard index, page)``), stable across processes, and adding a shard moves only
  the pages the new shard wins (about 1/n of them), never a page between two old shards;
* :func:`holders`: a delivery id's first byte is its shard's index (:func:`new_delivery_id`;
  the other 15 bytes stay random), so a read by id goes to one Redis, not to every one; an id
  issued before shards (a random first byte) is looked for in shard 0 after it;
* :func:`settings_for`: the Settings of one shard (its REDIS_URL and SHARD_INDEX), which is all
  that the per-shard code (committer, worker, status read) needs.

Without REDIS_SHARDS there is one shard, REDIS_URL, and ids are 16 random bytes as before.
What spans shards (campaign counters, dead-letter listings, the status read model) is summed or
merged by the callers that read them (:mod:`worker.fleet`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from worker.config import Settings
from worker.store.ids import ID_BYTES


def count(settings: Settings) -> int:
    return len(settings.redis_shards) or 1


def sharded(settings: Settings) -> bool:
    return bool(settings.redis_shards)


def _weight(index: int, page_id: str) -> bytes:
    return hashlib.blake2b(f"{index}:{page_id}".encode(), digest_size=8).digest()


def of_page(settings: Settings, page_id: str, shards: int | None = None) -> int:
    """The shard that holds the page; with ``shards``, the one that would among that many (the
    same pins, REDIS_SHARDS grown or cut to that length: :func:`plan`)."""
    n = count(settings) if shards is None else shards
    pinned = settings.shard_pages.get(page_id)
    if pinned is not None and pinned < n:
        return pinned
    if n == 1:
        return 0
    return max(range(n), key=lambda i: _weight(i, page_id))


def holders(settings: Settings, delivery_id: str) -> list[int]:
    """The shards that may hold the delivery, in the order to ask; [] for an id no shard can hold
    (not hex: not one we issued). Its id's first byte names its shard. An id issued before
    REDIS_SHARDS has a random first byte and lives in shard 0, the Redis of before
    (docs/scaling.md), so shard 0 is asked after the named one, and is the only one for a first
    byte that names no shard. Without shards: shard 0."""
    if not sharded(settings):
        return [0]
    try:
        index = int(delivery_id[:2], 16)
    except ValueError:
        return []
    return [index, 0] if 0 < index < count(settings) else [0]


def owns_page(settings: Settings, page_id: str) -> bool:
    """Whether this process's shard (SHARD_INDEX) holds the page; always, without shards or an
    index (the intake, the CLI)."""
    return settings.shard_index is None or of_page(settings, page_id) == settings.shard_index


def settings_for(settings: Settings, index: int) -> Settings:
    """One shard's Settings: REDIS_URL is the shard's, SHARD_INDEX its index."""
    if not sharded(settings):
        return settings
    return settings.model_copy(update={"redis_url": settings.redis_shards[index], "shard_index": index})


def every(settings: Settings) -> list[Settings]:
    """Each shard's Settings, in index order (one element without REDIS_SHARDS)."""
    return [settings_for(settings, i) for i in range(count(settings))]


def new_delivery_id(settings: Settings) -> str:
    """A delivery id for this shard's Settings: 32 hex characters; with shards, the first byte
    is the shard's index and 120 random bits remain (still unguessable: worker/store/ids.py)."""
    if settings.shard_index is None or not sharded(settings):
        return os.urandom(ID_BYTES).hex()
    return f"{settings.shard_index:02x}{os.urandom(ID_BYTES - 1).hex()}"


@dataclass(frozen=True, slots=True)
class Move:
    """A page with state on shard ``home`` that a change of the shard list would route to
    ``to``; ``state``: the kinds of state it would leave behind (worker/store/residents.py)."""

    page: str
    home: int
    to: int
    state: tuple[str, ...]


def plan(settings: Settings, residents: Sequence[Mapping[str, Iterable[str]]], shards: int) -> list[Move]:
    """The pages that growing REDIS_SHARDS to ``shards`` URLs (appended: order matters) would
    move away from their state: each page with state on the shard that holds it now
    (``residents[i]``: the pages with state on shard i) and a different shard among ``shards``.
    Pinning each to its ``home`` (:func:`pins`) keeps every page where its state is; only pages
    never seen go to the new shards. A page with state on a shard that does not hold it now is
    :func:`misrouted`'s, not a move."""
    return _moves(
        residents,
        lambda index, page: of_page(settings, page, shards) if of_page(settings, page) == index else index,
    )


def misrouted(settings: Settings, residents: Sequence[Mapping[str, Iterable[str]]]) -> list[Move]:
    """The pages with state on a shard that does not hold them under the current REDIS_SHARDS and
    SHARD_PAGES (``to``: the one that does): a shard list changed without pins, or a pin removed.
    Their new traffic runs without that state (the module docstring of
    worker/store/residents.py says what it is)."""
    return _moves(residents, lambda _index, page: of_page(settings, page))


def _moves(residents: Sequence[Mapping[str, Iterable[str]]], to: Callable[[int, str], int]) -> list[Move]:
    """A :class:`Move` for each page with state on shard i (``residents[i]``) that ``to(i, page)``
    sends to another shard, by shard and page."""
    return [
        Move(page, index, target, tuple(sorted(kinds)))
        for index, pages in enumerate(residents)
        for page, kinds in sorted(pages.items())
        if (target := to(index, page)) != index
    ]


#: State that stays served where it is: a delivery is sent by its own shard's workers, a dead
#: letter is moved to its page's shard by its replay (worker/store/deadletters.py).
DRAINING = frozenset({"deliveries", "dead letters"})


@dataclass(frozen=True, slots=True)
class Check:
    """:func:`check`'s answer. ``stranded``: state the page's new traffic runs without (its
    pause, recipients, links, limiter...); ``draining``: only deliveries, which their shard's
    workers still send (its limiter and theirs both pace the page until they are done); ``split``:
    pages with such state on two shards or more (their traffic has run on both: no pin takes it
    back whole); ``pins``: SHARD_PAGES with every other stranded page pinned back to its state
    (None: none to pin)."""

    stranded: list[Move]
    draining: list[Move]
    split: list[str]
    pins: dict[str, int] | None


def check(settings: Settings, residents: Sequence[Mapping[str, Iterable[str]]]) -> Check:
    """What :func:`misrouted` finds, sorted into what the current shard list strands and what is
    merely draining (:class:`Check`)."""
    stranded: list[Move] = []
    draining: list[Move] = []
    for move in misrouted(settings, residents):
        (draining if set(move.state) <= DRAINING else stranded).append(move)
    holders: dict[str, set[int]] = {}
    for index, pages in enumerate(residents):
        for page, kinds in pages.items():
            if not set(kinds) <= DRAINING:
                holders.setdefault(page, set()).add(index)
    split = sorted({m.page for m in stranded if len(holders[m.page]) > 1})
    back = [m for m in stranded if m.page not in split]
    return Check(stranded, draining, split, pins(settings, back) if back else None)


def pins(settings: Settings, moves: Iterable[Move]) -> dict[str, int]:
    """SHARD_PAGES with each move's page pinned to its ``home`` (the pins there stay)."""
    out = dict(settings.shard_pages)
    for move in moves:
        out[move.page] = move.home
    return dict(sorted(out.items()))

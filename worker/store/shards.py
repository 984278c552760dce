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

from worker.config import Settings
from worker.store.ids import ID_BYTES


def count(settings: Settings) -> int:
    return len(settings.redis_shards) or 1


def sharded(settings: Settings) -> bool:
    return bool(settings.redis_shards)


def _weight(index: int, page_id: str) -> bytes:
    return hashlib.blake2b(f"{index}:{page_id}".encode(), digest_size=8).digest()


def of_page(settings: Settings, page_id: str) -> int:
    """The shard that holds the page."""
    n = count(settings)
    if n == 1:
        return 0
    pinned = settings.shard_pages.get(page_id)
    if pinned is not None:
        return pinned
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

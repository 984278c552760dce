"""Pages moved between shards: a request's Idempotency-Key is asked on the shard the page came
from too (``shards move``; worker/store/pagemove.py).

Each shard's ``P:moved`` names the pages moved to it, the shard each came from, and until when
that shard may still remember their keys. The intake reads every shard's every
:data:`REFRESH_SECONDS` (one HGETALL a shard, all at once, in the background: only the first
request with a key waits for the first read; nothing without REDIS_SHARDS). A request with an
Idempotency-Key for a moved page is then looked up on the old shard before its own commits it
(``moved_lookup.lua``): a Braze retry of a request the old shard accepted is a repeat.

The old shard being down must not stop the page's new traffic for up to two days: a lookup that
fails or takes longer than :data:`LOOKUP_SECONDS` lets the request through, with a throttled
``intake.moved_lookup_failed`` warning. ``bmw_intake_moved_lookups_total{result}`` counts the
lookups: repeat, new, unanswered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final, Protocol

import redis.exceptions

from worker import metrics
from worker.config import Settings
from worker.intake.notices import Throttled
from worker.store import Keys, pagemove

#: How often each shard's moved pages are read again.
REFRESH_SECONDS: Final = 5.0
#: The longest a request waits for the old shard's answer (then it goes on without it).
LOOKUP_SECONDS: Final = 1.0
LOOKUP_FAILED = Throttled("intake.moved_lookup_failed", every=60.0)
LOOKUPS_REPEAT, LOOKUPS_NEW, LOOKUPS_FAILED = (
    metrics.INTAKE_MOVED_LOOKUPS.labels(result) for result in ("repeat", "new", "unanswered")
)
READ_FAILED = Throttled("intake.moved_read_failed", every=60.0)


class Link(Protocol):
    """What is read of one shard (worker.intake.state.ShardLink)."""

    @property
    def redis(self) -> Any: ...

    @property
    def keys(self) -> Keys: ...


class MovedPages:
    """Every shard's moved pages, as last read: (shard index, page) -> (the shard it came from,
    until, epoch seconds)."""

    def __init__(self, settings: Settings, links: Sequence[Link]) -> None:
        self._settings = settings
        self._links = tuple(links)
        self._marks: dict[int, dict[str, tuple[int, float]]] = {}
        #: (shard, page) of the moved pages whose old shard still sends for them (its limiter's
        #: recent use, which `--finish` drops): their webhook events are applied there too.
        self._sending: set[tuple[int, str]] = set()
        self._read_at: float | None = None
        self._reading: asyncio.Task[None] | None = None
        #: Per old shard: the lookups waiting for its next script call, and the task making them.
        self._waiting: dict[int, list[tuple[str, asyncio.Future[str | None]]]] = {}
        self._asking: dict[int, asyncio.Task[None]] = {}

    @property
    def watched(self) -> bool:
        """Whether pages can move at all (more than one shard)."""
        return len(self._links) > 1

    async def source(self, index: int, page: str) -> int | None:
        """The shard page ``page`` came from to shard ``index``, while its keys may be there."""
        if not self.watched:
            return None
        if self._read_at is None:  # the first request waits for the first read (a second at most)
            await asyncio.shield(self._read())  # a caller that goes away does not cancel it
        elif time.monotonic() - self._read_at >= REFRESH_SECONDS:
            self._read()  # in the background: this request goes on with the marks read before
        mark = self._marks.get(index, {}).get(page)
        if mark is None or mark[1] <= time.time() or mark[0] == index or mark[0] >= len(self._links):
            return None
        return mark[0]

    async def sending_source(self, index: int, page: str) -> int | None:
        """The shard ``page`` came from to shard ``index`` while that shard still sends for it
        (between `shards move` and `--finish`), as last read."""
        source = await self.source(index, page)
        return source if source is not None and (index, page) in self._sending else None

    def _read(self) -> asyncio.Task[None]:
        """Every shard's marks, read at once (one read in flight at a time)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_all())
        return self._reading

    async def _read_all(self) -> None:
        await asyncio.gather(*(self._read_one(index, link) for index, link in enumerate(self._links)))
        await self._read_sending()
        self._read_at = time.monotonic()

    async def _read_sending(self) -> None:
        """Which moved pages' old shards still send for them (one ZMSCORE a page there)."""
        now, asked = time.time(), []
        for index, marks in self._marks.items():
            for page, (source, until) in marks.items():
                if until > now and source != index and source < len(self._links):
                    asked.append((index, page, source))
        sending: set[tuple[int, str]] = set()
        for index, page, source in asked:
            link = self._links[source]
            try:
                async with asyncio.timeout(LOOKUP_SECONDS):
                    sends = await pagemove.still_sends(link.redis, link.keys, page)
            except (TimeoutError, redis.exceptions.RedisError) as exc:
                READ_FAILED.note(shard=source, error=type(exc).__name__)
                sends = (index, page) in self._sending  # as read before
            if sends:
                sending.add((index, page))
        self._sending = sending

    async def _read_one(self, index: int, link: Link) -> None:
        try:
            async with asyncio.timeout(LOOKUP_SECONDS):
                self._marks[index] = await pagemove.moved_marks(link.redis, link.keys)
        except (TimeoutError, redis.exceptions.RedisError) as exc:
            READ_FAILED.note(shard=index, error=type(exc).__name__)  # the marks read before stay

    async def remembered(self, source: int, scoped: str) -> str | None:
        """The delivery id shard ``source`` remembers for a scoped key; None when it does not,
        or did not answer within LOOKUP_SECONDS (logged). Lookups for the same shard share its
        script calls: one call at a time, taking every key that waited for it (as the group
        commit does), so a busy page costs one round trip per batch, not per request."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(source, []).append((scoped, future))
        asking = self._asking.get(source)
        if asking is None or asking.done():  # done: it found nothing more waiting, and ended
            self._asking[source] = asyncio.create_task(self._ask(source))
        try:
            async with asyncio.timeout(LOOKUP_SECONDS):
                found = await asyncio.shield(future)  # a waiter that gives up leaves the batch be
        except (TimeoutError, redis.exceptions.RedisError) as exc:
            LOOKUP_FAILED.note(shard=source, error=type(exc).__name__)
            LOOKUPS_FAILED.inc()
            return None
        finally:
            future.cancel()  # given up (or its request went away): not asked for, not answered
        (LOOKUPS_REPEAT if found is not None else LOOKUPS_NEW).inc()
        return found

    async def _ask(self, source: int) -> None:
        link = self._links[source]
        while waited := self._waiting.pop(source, []):
            batch = [(key, future) for key, future in waited if not future.done()]
            if not batch:
                continue
            try:
                found = await pagemove.remembered(
                    link.redis, link.keys, self._settings.idempotency_ttl, [key for key, _ in batch]
                )
            except Exception as exc:  # noqa: BLE001  # every waiter gets it (and goes on without)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), delivery_id in zip(batch, found, strict=True):
                if not future.done():
                    future.set_result(delivery_id)

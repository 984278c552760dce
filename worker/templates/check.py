"""The intake's catalogue check: refuse a template the page cannot send, before Braze's send is
accepted and lost downstream.

:func:`check_request` raises ``InputError(422, code, message)`` (codes and messages:
:func:`worker.templates.catalogue.refusal`) and otherwise returns. A campaign sends the same
template thousands of times a minute, so what Redis says about one (page, template, language) is
kept in a small in-process :class:`TemplateCache` for a few seconds: one Redis round trip (a
pipeline of ZSCORE and HGET) per template per TTL, and concurrent misses share it. A change of
the catalogue (a sync, a webhook event) reaches the intake within that TTL.

Redis errors propagate: the caller treats them as it treats the commit's (the request's
deadline covers both).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from worker.messenger.errors import InputError
from worker.messenger.utility import UtilityTemplate
from worker.store import Keys
from worker.templates.catalogue import TemplateInfo, field_name, refusal

_Key = tuple[str, str, str]  # (page, name, language)
_Entry = tuple[float, bool, TemplateInfo | None]  # (expires at, catalogue known, the template)

#: How long the intake trusts what it read about one template.
CACHE_SECONDS = 5.0
#: (page, template, language) triples remembered at most (the oldest go first).
CACHE_ENTRIES = 1024


class TemplateCache:
    """What Redis said about each (page, template, language), for ``ttl`` seconds; at most
    ``max_entries`` of them. One per intake process."""

    def __init__(
        self,
        ttl: float = CACHE_SECONDS,
        max_entries: int = CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: dict[_Key, _Entry] = {}
        self._inflight: dict[_Key, asyncio.Future[tuple[bool, TemplateInfo | None]]] = {}
        self.reads = 0  # Redis round trips made (for tests and curiosity)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    async def get(
        self, client: aioredis.Redis, keys: Keys, page_id: str, name: str, language: str
    ) -> tuple[bool, TemplateInfo | None]:
        """(whether the page's catalogue is known, the template or None)."""
        key = (page_id, name, language)
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            return entry[1], entry[2]
        pending = self._inflight.get(key)
        if pending is None:
            pending = self._inflight[key] = asyncio.ensure_future(self._read(client, keys, key))
            pending.add_done_callback(lambda done: self._settle(key, done))
        # shielded: a caller cancelled by its deadline does not cancel the others' read
        return await asyncio.shield(pending)

    def _settle(self, key: _Key, done: asyncio.Future[tuple[bool, TemplateInfo | None]]) -> None:
        self._inflight.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning if every caller left

    async def _read(self, client: aioredis.Redis, keys: Keys, key: _Key) -> tuple[bool, TemplateInfo | None]:
        page_id, name, language = key
        pipe = client.pipeline(transaction=False)
        pipe.zscore(keys.templates_synced, page_id)
        pipe.hget(keys.templates(page_id), field_name(name, language))
        synced, raw = await pipe.execute()
        self.reads += 1
        known, info = synced is not None, (TemplateInfo.from_json(raw) if raw is not None else None)
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # the oldest
        self._entries[key] = (self._clock() + self.ttl, known, info)
        return known, info


async def check_request(
    client: aioredis.Redis, keys: Keys, page_id: str, t: UtilityTemplate, cache: TemplateCache
) -> None:
    """Raise ``InputError(422, code, message)`` when the page's catalogue refuses ``t``:
    ``unknown_utility_template``, ``utility_template_not_approved``, ``utility_template_parameters``.
    Allows everything while the page's catalogue is unknown (never synced)."""
    known, info = await cache.get(client, keys, page_id, t.name, t.language)
    refused = refusal(info, t, known, page_id)
    if refused is not None:
        raise InputError(422, *refused)

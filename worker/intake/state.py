"""What the intake's routes share: the settings and what the lifespan opens (``app.state.intake``).

The lifespan (:func:`worker.intake.app.create_app`) builds one :class:`IntakeState` when the app
starts and closes its connections when it stops; a route reads it with :func:`of`. Nothing here
opens a connection, so building the app needs no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from starlette.requests import Request

from worker.config import PageTokens, Settings
from worker.fleet import Fleet, Shard
from worker.intake.committer import GroupCommitter
from worker.intake.guard import MemoryGate
from worker.intake.moved import MovedPages
from worker.store import Keys, shards
from worker.templates import TemplateCache


@dataclass(slots=True)
class ShardLink:
    """What the intake holds for one shard (one Redis; :mod:`worker.store.shards`)."""

    shard: Shard
    #: /metrics and the console read the status model from a thread, with a client of their own.
    sync_redis: Any
    committer: GroupCommitter
    memory: MemoryGate

    @property
    def redis(self) -> aioredis.Redis:
        return self.shard.redis

    @property
    def keys(self) -> Keys:
        return self.shard.keys

    @property
    def settings(self) -> Settings:
        """The shard's settings (its REDIS_URL and SHARD_INDEX)."""
        return self.shard.settings


@dataclass(slots=True)
class IntakeState:
    settings: Settings
    #: Every shard's async client (a pool; injectable for tests) and the reads across them.
    fleet: Fleet
    #: One per shard, in index order: a page's requests go to its shard's committer.
    links: tuple[ShardLink, ...]
    #: PAGE_ACCESS_TOKENS, reloaded when it names a file that changes (as the workers do).
    pages: PageTokens
    #: The pages `shards move` brought to each shard: their keys are asked where they came from.
    moved: MovedPages
    #: What the utility-template catalogue said, for a few seconds (worker.templates.check).
    templates: TemplateCache = field(default_factory=TemplateCache)

    def for_page(self, page_id: str) -> ShardLink:
        return self.links[shards.of_page(self.settings, page_id)]

    def sync_clients(self) -> list[tuple[Settings, Any]]:
        """(shard settings, sync client) per shard: what the status read model is read from."""
        return [(link.settings, link.sync_redis) for link in self.links]


def of(request: Request) -> IntakeState:
    state: IntakeState = request.app.state.intake
    return state

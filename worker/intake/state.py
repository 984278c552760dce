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
from worker.intake.committer import GroupCommitter
from worker.intake.guard import MemoryGate
from worker.store import Keys
from worker.templates import TemplateCache


@dataclass(slots=True)
class IntakeState:
    settings: Settings
    keys: Keys
    #: The routes' client (a pool; injectable for tests).
    redis: aioredis.Redis
    #: /metrics reads the status model from a thread, with a client of its own.
    sync_redis: Any
    committer: GroupCommitter
    memory: MemoryGate
    #: PAGE_ACCESS_TOKENS, reloaded when it names a file that changes (as the workers do).
    pages: PageTokens
    #: What the utility-template catalogue said, for a few seconds (worker.templates.check).
    templates: TemplateCache = field(default_factory=TemplateCache)


def of(request: Request) -> IntakeState:
    state: IntakeState = request.app.state.intake
    return state

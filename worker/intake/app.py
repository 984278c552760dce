"""The intake app: ``create_app(settings)`` builds it from the route modules; ``app_factory`` is
what uvicorn runs (``messenger-worker intake``).

The factory wires, and owns nothing else:

* the routes, in order (:mod:`worker.intake.routes`; the send routes come first, as the
  ``/{version}/{page_id}/messages`` pattern also matches some other three-segment paths);
* the exception handlers (:func:`worker.intake.http.exception_handlers`): a refusal raised as
  ``InputError`` becomes its JSON error, a Redis failure ``503 unavailable`` with Retry-After,
  the group commit's refusals 503 with their codes, unknown routes and methods 404 and 405 in
  the same shape;
* the lifespan, which opens the connections when the app starts and closes them when it stops:
  the async Redis client (unless one is injected), the sync client /metrics reads with, the
  :class:`~worker.intake.committer.GroupCommitter` and the Redis memory gate. They are shared
  with the routes as ``app.state.intake`` (:class:`~worker.intake.state.IntakeState`).

Building the app opens no connection, so tests can build it without Redis. ``app_factory``
refuses a configuration a service must not run with (:func:`worker.config.check_service`) and
throttles uvicorn's warning for each request beyond its concurrency limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from worker import gc_tuning
from worker.config import PageTokens, Settings
from worker.fleet import Fleet
from worker.intake import console, protocol
from worker.intake.committer import GroupCommitter
from worker.intake.guard import MemoryGate
from worker.intake.http import exception_handlers
from worker.intake.metrics_server import MetricsServer
from worker.intake.moved import MovedPages
from worker.intake.notices import ThrottledRecords
from worker.intake.routes import admin, campaigns, deliveries, health, lookups, send, webhook
from worker.intake.state import IntakeState, ShardLink
from worker.logging import get_logger
from worker.status import MemoryGuard
from worker.store import connections as redisconn
from worker.store import shards

log = get_logger("worker.intake")
#: What uvicorn logs for each request it refuses beyond INTAKE_LIMIT_CONCURRENCY (503, plain text).
UVICORN_REFUSAL = "Exceeded concurrency limit."


def make_async_redis(settings: Settings) -> aioredis.Redis:
    return redisconn.async_client(settings, max_connections=64, timeout=5)


def build_routes(settings: Settings) -> list[BaseRoute]:
    return [
        *send.routes(settings),
        *deliveries.routes(settings),
        *admin.routes(settings),
        *campaigns.routes(settings),
        *lookups.routes(settings),
        *webhook.routes(settings),
        *health.routes(settings),
        *console.routes(settings),
    ]


def create_app(
    settings: Settings, client: aioredis.Redis | None = None, *, tune_gc: bool = False
) -> Starlette:
    """The intake ASGI app. ``client`` is injectable for tests (the app then does not close it);
    by default the lifespan owns one. ``tune_gc`` (the served process, not a test's) applies
    :func:`worker.gc_tuning.tune` once the app has started."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if client is not None and shards.sharded(settings):
            raise ValueError("an injected client serves one Redis: not with REDIS_SHARDS")
        fleet = Fleet.connect(settings, lambda s: client or make_async_redis(s))
        links = tuple(
            ShardLink(
                shard=shard,
                sync_redis=redisconn.sync_client(shard.settings, timeout=2),
                committer=GroupCommitter(shard.redis, shard.settings),
                memory=MemoryGate(MemoryGuard(settings.redis_memory_headroom), shard.redis),
            )
            for shard in fleet.shards
        )
        intake = IntakeState(
            settings=settings,
            fleet=fleet,
            links=links,
            pages=PageTokens(settings),
            moved=MovedPages(settings, links),
        )
        app.state.intake = intake
        metrics = MetricsServer(settings, intake.sync_clients(), host=settings.metrics_host)
        serving = metrics.start()
        tuned = tune_gc and gc_tuning.tune(settings)
        log.info(
            "intake.started",
            queue=settings.queue_name,
            shards=len(links),
            auth=not settings.intake_insecure_no_auth,
            intake_tokens=len(settings.intake_tokens),
            admin_tokens=len(settings.admin_tokens),
            redis_memory_headroom=settings.redis_memory_headroom,
            gc_gen0_threshold=settings.gc_gen0_threshold if tuned else None,
            metrics_port=metrics.port if serving else None,
        )
        try:
            yield
        finally:
            metrics.stop()
            for link in links:
                link.memory.close()
                link.committer.close()
                link.sync_redis.close()
            if client is None:
                await fleet.close()
            log.info("intake.stopped")

    return Starlette(
        routes=build_routes(settings),
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
    )


def app_factory() -> Starlette:
    """uvicorn factory (``--workers N`` re-imports this in each process)."""
    from worker.config import check_service, load_settings
    from worker.logging import configure_logging

    settings = load_settings()
    configure_logging(settings)
    logging.getLogger("uvicorn.error").addFilter(ThrottledRecords(UVICORN_REFUSAL, every=1.0))
    if not settings.intake_tokens and not settings.intake_insecure_no_auth:
        raise SystemExit("INTAKE_TOKENS is empty: set it, or start with --insecure-no-auth")
    try:
        check_service(settings)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    protocol.configure(settings.intake_header_seconds, settings.intake_max_header_bytes)
    return create_app(settings, tune_gc=True)

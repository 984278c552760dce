"""Probes and documents: ``/healthz``, ``/readyz``, ``/openapi.json`` (no auth). ``/metrics`` is
not here: it has a listener of its own (:mod:`worker.intake.metrics_server`).

* ``/healthz``: the event loop answers (liveness; Redis is not checked, so an outage does not
  restart every intake).
* ``/readyz``: Redis answers. 200 ``{"ok": true, "accepting": bool, "memory_ratio": x}``, or 503
  ``unavailable`` when Redis does not answer. ``accepting`` is false while Redis is at or above
  REDIS_MEMORY_HEADROOM of its maxmemory (``memory_ratio``: used_memory / maxmemory, 0 without a
  maxmemory), and the send route then answers ``503 redis_full``. Readiness stays 200 then, on
  purpose: every replica shares that Redis, so all would leave the Service at once, and an
  intake that is out of the Service cannot serve what still works and what frees the memory:
  delivery status, Messenger events, and dead-letter purge and replay. Braze gets a 503 with
  Retry-After per message instead of connection errors. Watch ``accepting`` or the
  ``intake.redis_full`` log event, not readiness. With REDIS_SHARDS: ready (200) while any shard
  answers, with ``"shards": [{"shard", "up", "accepting", "memory_ratio"}]``; ``accepting`` is
  true only when every shard is, ``memory_ratio`` is the fullest answering shard's; 503
  ``unavailable`` when none answers. A shard that is down fails its own pages' requests (503), not
  the intake (docs/scaling.md).
* ``/openapi.json``: :func:`worker.intake.openapi.openapi_document`.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.intake import state
from worker.intake.http import JSONResponse
from worker.intake.openapi import openapi_document

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def healthz(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    intake = state.of(request)
    # ready while any shard answers (with REDIS_SHARDS, a shard that is down fails only its own
    # pages' requests; taking every intake out of the balancer would fail all of them)
    shards: list[dict[str, Any]] = []
    failure: redis.exceptions.RedisError | None = None
    for link in intake.links:
        try:
            await link.redis.ping()
            room = await link.memory.check()
            shards.append(
                {
                    "shard": link.shard.index,
                    "up": True,
                    "accepting": room,
                    "memory_ratio": round(link.memory.guard.ratio, 4),
                }
            )
        except redis.exceptions.RedisError as exc:
            failure = exc
            shards.append({"shard": link.shard.index, "up": False, "accepting": False, "memory_ratio": None})
    answering = [s for s in shards if s["up"]]
    if not answering and failure is not None:
        raise failure  # none answers: 503 unavailable (the exception handler)
    body: dict[str, Any] = {
        "ok": True,
        "accepting": all(s["accepting"] for s in shards),
        "memory_ratio": max(s["memory_ratio"] for s in answering),
    }
    if len(shards) > 1:
        body["shards"] = shards
    return JSONResponse(body)


async def openapi(_request: Request) -> Response:
    return JSONResponse(openapi_document())


def routes(_settings: Settings) -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]

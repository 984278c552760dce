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
  the intake (docs/scaling.md). The shards are asked at once, each given
  :data:`READY_SHARD_SECONDS`: a shard that holds the connection without answering (a stalled
  or unreachable host) is down for this answer, which still comes within the probes' timeout
  (deploy/k8s/intake.yaml: 2 s), so it cannot take every intake out of the balancer.
* ``/openapi.json``: :func:`worker.intake.openapi.openapi_document`.
"""

from __future__ import annotations

import asyncio
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
#: What /readyz gives each shard's ping and memory read (under the probes' 2 s timeout).
READY_SHARD_SECONDS = 1.0


async def healthz(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _shard_ready(link: state.ShardLink) -> dict[str, Any]:
    """One shard's part of /readyz: up and accepting, or down (no answer within
    READY_SHARD_SECONDS, or an error)."""
    try:
        async with asyncio.timeout(READY_SHARD_SECONDS):
            await link.redis.ping()
            room = await link.memory.check()
    except (OSError, redis.exceptions.RedisError):  # TimeoutError is an OSError
        return {"shard": link.shard.index, "up": False, "accepting": False, "memory_ratio": None}
    return {
        "shard": link.shard.index,
        "up": True,
        "accepting": room,
        "memory_ratio": round(link.memory.guard.ratio, 4),
    }


async def readyz(request: Request) -> Response:
    intake = state.of(request)
    # ready while any shard answers (with REDIS_SHARDS, a shard that is down fails only its own
    # pages' requests; taking every intake out of the balancer would fail all of them)
    shards = list(await asyncio.gather(*(_shard_ready(link) for link in intake.links)))
    answering = [s for s in shards if s["up"]]
    if not answering:  # none answers: 503 unavailable (the exception handler)
        raise redis.exceptions.ConnectionError("Redis did not answer")
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

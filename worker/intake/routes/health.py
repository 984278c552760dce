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
  ``intake.redis_full`` log event, not readiness.
* ``/openapi.json``: :func:`worker.intake.openapi.openapi_document`.
"""

from __future__ import annotations

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
    accepting = True
    for link in intake.links:  # ready when every shard answers; accepting while all have room
        await link.redis.ping()
        accepting = await link.memory.check() and accepting
    ratio = max(link.memory.guard.ratio for link in intake.links)
    return JSONResponse({"ok": True, "accepting": accepting, "memory_ratio": round(ratio, 4)})


async def openapi(_request: Request) -> Response:
    return JSONResponse(openapi_document())


def routes(_settings: Settings) -> list[Route]:
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]

"""The intake's ceiling: a bare Starlette app on the intake's server stack.

Same server as ``messenger-worker intake`` (uvicorn, loop and http "auto", i.e. uvloop + httptools
where installed, no access log, no server header, one process) and the same Redis client
(redis.asyncio with a 64-connection blocking pool); per request it only parses the JSON body and
does one async LPUSH, then answers 202. ``python -m benchmarks.ceiling --port P --redis-url URL``.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ACCEPTED = b'{"status":"queued"}'


def create_app(redis_url: str, key: str) -> Starlette:
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=64, timeout=5, socket_timeout=5, socket_connect_timeout=2
        )
        state["redis"] = aioredis.Redis(connection_pool=pool)
        try:
            yield
        finally:
            await state["redis"].aclose()

    async def send(request: Request) -> Response:
        raw = await request.body()
        orjson.loads(raw)
        await state["redis"].lpush(key, raw)
        return Response(ACCEPTED, status_code=202, media_type="application/json")

    return Starlette(
        routes=[Route("/{version}/{page_id}/messages", send, methods=["POST"])], lifespan=lifespan
    )


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m benchmarks.ceiling")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--key", default="bench:ceiling")
    args = p.parse_args()
    uvicorn.run(
        create_app(args.redis_url, args.key),
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()

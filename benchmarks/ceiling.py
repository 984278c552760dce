"""The intake's ceiling: a bare Starlette app on the intake's server stack that batches like it.

Same server as ``messenger-worker intake`` (uvicorn, loop and http "auto", i.e. uvloop + httptools
where installed, no access log, no server header, one process), the same Redis client
(``worker.store.connections.async_client``: redis.asyncio, a 64-connection blocking pool, commands
packed by hiredis) and the same garbage-collector settings (``worker.gc_tuning.tune``). Per
request it parses the JSON body, reads the Idempotency-Key and hands both to a group commit like
the intake's: up to BATCH_MAX (50) waiting requests are written in one pipelined round trip, at
most two in flight; each request is answered 202 once its round trip returned. A request's writes
are the least the job needs: its idempotency key (SET NX EX), its body under a new id (HSET), and
one LPUSH of the batch's ids (the queue). So it does the intake's job of "store the request
durably, once, and queue it, then answer" with the same stack and the same batching, and nothing
else: no validation of the Send API body, no record fields beyond the body, no Lua, no Celery
message, no atomicity.
``python -m benchmarks.ceiling --port P --redis-url URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker import gc_tuning
from worker.config import load_settings
from worker.store import connections

ACCEPTED = b'{"status":"queued"}'
BATCH_MAX = 50
MAX_INFLIGHT = 2


class Batcher:
    """Bodies waiting for an LPUSH, and the futures of their requests."""

    def __init__(self, client: Any, key: str) -> None:
        self._client = client
        self._key = key
        self._waiting: list[tuple[bytes, str, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, body: bytes, idempotency_key: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((body, idempotency_key, future))
        if self._inflight < MAX_INFLIGHT:
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:BATCH_MAX]
                del self._waiting[:BATCH_MAX]
                pipe = self._client.pipeline(transaction=False)
                ids = [f"c{next(self._ids)}" for _ in batch]
                for delivery_id, (body, idem, _) in zip(ids, batch, strict=True):
                    pipe.set(f"{self._key}:idem:{idem}", delivery_id, nx=True, ex=86_400)
                    pipe.hset(f"{self._key}:d:{delivery_id}", "body", body)
                pipe.lpush(self._key, *ids)
                try:
                    await pipe.execute()
                except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                    for *_, future in batch:
                        future.set_exception(exc)
                    continue
                for *_, future in batch:
                    future.set_result(None)
        finally:
            self._inflight -= 1


def create_app(redis_url: str, key: str) -> Starlette:
    state: dict[str, Any] = {}
    settings = load_settings(redis_url=redis_url, _env_file=None)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        client = connections.async_client(settings)
        state["batcher"] = Batcher(client, key)
        gc_tuning.tune(settings)
        try:
            yield
        finally:
            await client.aclose()

    async def send(request: Request) -> Response:
        raw = await request.body()
        orjson.loads(raw)
        await state["batcher"].submit(raw, request.headers.get("idempotency-key", ""))
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

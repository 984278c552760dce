"""Group commit: the send route's requests written to Redis in batches, one Lua call per batch.

A caller's :meth:`GroupCommitter.submit` returns only once the ``accept.lua`` call that carries
its request has returned: delivery records, pending index, idempotency keys, and the ids,
appended to the queue's newest batch or to a new batch with its Celery message
(:mod:`worker.store.envelope`, ``store/lua/accept.lua``). So a 202 means the message is in Redis;
an exception (``RedisError``, ``OSError``) means nothing of that request was written.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics
from worker.config import Settings
from worker.logging import get_logger
from worker.messenger.validation import SendRequest
from worker.store import Keys, envelope, ids, scripts

log = get_logger("worker.intake")
#: A batch this big is committed without waiting for company (BATCH_MAX caps it).
GATHER_TARGET = 16
#: A queued batch's id list outlives SWEEP_AFTER_SECONDS by this much: if its message is lost,
#: the sweeper re-enqueues the ids first (accept.lua).
BATCH_TTL_MARGIN = 60


@dataclass
class _Item:
    delivery_id: str
    request: SendRequest
    idempotency_key: str
    request_id: str
    external_id: str
    future: asyncio.Future[str]
    #: The sending token's public id (``worker.config.token_id``): who may read the delivery.
    caller: str = ""


class GroupCommitter:
    """Writes queued requests to Redis in batches: one ACCEPT script call per batch.

    Requests arriving while a commit is in flight ride on the next one, so under heavy load
    batches form by themselves and nobody waits for company. A second commit (``max_inflight``,
    default 2) starts while one is in flight only once ``GATHER_TARGET`` requests are waiting:
    the callers then wait for neither, and batches stay that size (measured with wrk, 64
    connections: the intake's core busy 88-90% instead of 85-87%, 3 of 3 rounds faster, batches
    of about 28 instead of 32). Below that, when requests still arrive less than
    ``BATCH_WINDOW_MS`` apart on average, a batch smaller than ``GATHER_TARGET`` waits for company
    while requests keep coming, at most ``BATCH_WINDOW_MS`` (default 10 ms); a trickle is
    committed at once. Batches cut the per-message cost of Celery tasks in the workers (measured:
    2.5 CPU ms per message at 1-2 ids per task, 1.2 at 30); waiting beyond a modest batch saves
    them little and keeps the waiting callers' connections idle. Batches grow where waiting costs
    nobody anything: a commit's ids join the queue's newest Celery message while it is still
    queued, up to ``QUEUE_BATCH_MAX`` (accept.lua), so a backlog reaches the workers in
    messages of up to 100 ids.
    """

    def __init__(self, client: aioredis.Redis, settings: Settings, max_inflight: int = 2) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys.of(settings)
        self._buffer: list[_Item] = []
        self._inflight = 0
        self._max_inflight = max_inflight
        self._target = min(GATHER_TARGET, settings.batch_max)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_arrival = 0.0
        self._gap = math.inf  # moving average of the time between requests (s)

    async def submit(
        self,
        request: SendRequest,
        idempotency_key: str,
        request_id: str,
        external_id: str = "",
        *,
        caller: str = "",
    ) -> tuple[str, bool]:
        """Returns (delivery_id, accepted). accepted is False for a repeated Idempotency-Key.

        An Idempotency-Key is scoped to the sending token and the page: one caller cannot learn
        another's delivery ids by guessing their keys."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        gap = min(now - self._last_arrival, 1.0)
        self._gap = gap if self._gap == math.inf else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now
        scoped = f"{caller}:{request.page_id}:{idempotency_key}" if idempotency_key else ""
        item = _Item(
            ids.new_delivery_id(), request, scoped, request_id, external_id, loop.create_future(), caller
        )
        self._buffer.append(item)
        if self._inflight == 0 or (  # a second commit only for a batch that needs no company
            self._inflight < self._max_inflight and len(self._buffer) >= self._target
        ):
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        existing = await item.future
        return (existing, False) if existing else (item.delivery_id, True)

    async def _drain(self) -> None:
        try:
            window = self._settings.batch_window_ms / 1000
            while self._buffer:
                if window > 0 and self._gap < window:  # every batch, not only the first
                    await self._gather(window)
                batch = self._buffer[: self._settings.batch_max]
                del self._buffer[: self._settings.batch_max]
                await self._commit(batch)
        finally:
            self._inflight -= 1

    async def _gather(self, window: float) -> None:
        """Company is likely: let concurrent requests share one commit and one Celery message, so
        a worker gets batches, not single messages (measured: 1 msg/task at 300 req/s). Waits
        while requests keep arriving (none for four times the usual gap, at least 1 ms, ends it),
        at most ``window``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while len(self._buffer) < self._target:
            now = loop.time()
            quiet = max(0.001, 4 * self._gap)
            wait = min(self._last_arrival + quiet, deadline) - now
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _accept(self, *, keys: list[str], args: list[Any]) -> Any:
        """One accept.lua call (a seam: tests hold it in flight)."""
        return await scripts.run(self._client, "accept", keys=keys, args=args)

    async def _commit(self, batch: list[_Item]) -> None:
        s = self._settings
        batch_id = ids.new_delivery_id()  # used only if this commit has to start a batch
        args: list[Any] = [
            repr(time.time()),
            s.idempotency_ttl,
            s.sweep_after_seconds,
            self._keys.idem_prefix,
            self._keys.delivery_prefix,
            self._keys.batch_prefix,
            envelope.celery_message(batch_id, s.queue_name, task=envelope.BATCH_TASK),
            batch_id,
            s.queue_batch_max,
            math.ceil(s.sweep_after_seconds) + BATCH_TTL_MARGIN,
            9,
        ]
        for item in batch:
            req = item.request
            args += [
                item.delivery_id,
                item.idempotency_key,
                req.page_id,
                req.psid,
                orjson.dumps(req.body),
                item.caller,
                orjson.dumps(req.fallback_tags),
                item.request_id,
                item.external_id,
            ]
        try:
            started = time.perf_counter()
            results = await self._accept(
                keys=[self._keys.pending, self._keys.queue, self._keys.open, self._keys.gather], args=args
            )
            elapsed = time.perf_counter() - started
            for _ in batch:
                metrics.INTAKE_ENQUEUE.observe(elapsed)
        except (redis.exceptions.RedisError, OSError) as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        accepted: list[str] = []
        for item, result in zip(batch, results, strict=True):
            existing = result.decode() if isinstance(result, bytes) else str(result)
            if not existing:
                accepted.append(item.delivery_id)
            if not item.future.done():
                item.future.set_result(existing)
        if accepted:  # one line per commit (the audit trail of 202s), not one per request
            log.info(
                "intake.committed",
                count=len(accepted),
                delivery_ids=accepted,
                enqueue_ms=round(elapsed * 1000, 2),
            )

"""``messenger-worker queue purge``: empty the Celery queue without leaving work half-removed.

``celery purge`` deletes the queue's messages and nothing else: the batch lists they name
(``P:batch:{id}``) and the gather pointer stay, so the next commits join a batch whose message is
gone (their deliveries then wait for the sweeper, SWEEP_AFTER_SECONDS), and every purged delivery
is still open, so the sweeper sends it later anyway. :func:`purge_queue` instead

1. clears the gather pointer first (later commits start a batch of their own, with its message);
2. takes the messages off the queue one at a time (RPOP: a worker's concurrent BRPOP gets each
   message or we do, never both);
3. for a ``worker.deliver_batch`` message reads its batch list (no commit appends to it any
   more: the pointer is gone; no worker takes it: its message is) and for a ``worker.deliver``
   message its ids, ends those deliveries CANCELLED (cancel.lua, reason ``purged``; one a worker
   holds is left to it), and only then deletes the batch lists and their entries in pending (a
   purge that dies before leaves them to the sweeper, which re-enqueues them: a cancelled
   delivery is not sent);
4. puts ``worker.inbound`` messages (Messenger events, which live only in their message) back.

Returns what it did. Messages a worker has taken (kombu's ``unacked``) are not touched.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker import metrics
from worker.states import State
from worker.store import campaign_ctx, envelope, scripts
from worker.store.keys import Keys, text

#: Deliveries cancelled per cancel.lua call.
CHUNK = 500


def _task(raw: bytes) -> tuple[str, list[Any]]:
    """(task name, positional arguments) of a queued Celery message; ("", []) if unreadable."""
    try:
        message = orjson.loads(raw)
        args, _kwargs, _embed = orjson.loads(base64.b64decode(message["body"]))
        return str(message["headers"]["task"]), list(args)
    except (ValueError, KeyError, TypeError):
        return "", []


async def _cancel(client: aioredis.Redis, keys: Keys, settings: Any, ids: list[str]) -> int:
    cancelled = 0
    for start in range(0, len(ids), CHUNK):
        ctx = campaign_ctx.of_settings(keys, settings, time.time())
        res = await scripts.run(client, "cancel", args=[*ctx, "purged", "ids", *ids[start : start + CHUNK]])
        cancelled += int(res[0])
        # in this process's bmw_deliveries_total (reason purged): a CLI's, never scraped
        metrics.count_cancels(settings, scripts.cancels(res[3]))
    return cancelled


async def purge_queue(client: aioredis.Redis, settings: Any) -> dict[str, int]:
    """Empty the queue, cancelling the deliveries its messages named (see the module docstring)."""
    keys = Keys.of(settings)
    await client.delete(keys.gather)
    kept: list[bytes] = []
    messages = 0
    ids: list[str] = []
    batches: list[str] = []
    while (raw := await client.rpop(keys.queue)) is not None:  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        messages += 1
        task, args = _task(raw)
        if task == envelope.INBOUND_TASK:
            kept.append(raw)
        elif task == envelope.BATCH_TASK and args and isinstance(args[0], str):
            listed = await client.lrange(keys.batch(args[0]), 0, -1)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            ids += [text(i) for i in listed]
            batches.append(args[0])
        elif task == envelope.TASK_NAME and args and isinstance(args[0], list):
            ids += [str(i) for i in args[0]]
    if kept:
        await client.rpush(keys.queue, *kept)  # type: ignore[misc]
    cancelled = await _cancel(client, keys, settings, ids)
    if batches:  # only once they are cancelled: until then the sweeper may still find them
        pipe = client.pipeline(transaction=True)
        pipe.delete(*(keys.batch(b) for b in batches))
        pipe.zrem(keys.pending, *(keys.batch_entry(b) for b in batches))
        await pipe.execute()
    return {
        "messages": messages,
        "deliveries": len(ids),
        State.CANCELLED.value: cancelled,
        "kept_inbound": len(kept),
    }

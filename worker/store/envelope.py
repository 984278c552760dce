"""Celery messages written without Celery: the intake's hot path and the scheduler use this.

Publishing through ``send_task`` costs about 0.77 ms CPU per message and needs a thread pool in
an async app (pitfalls.md: 626 req/s against 5,491 for a direct async LPUSH). A Celery message on
the Redis transport is one JSON document LPUSHed onto the queue's list, so we build it ourselves:
Celery task protocol 2 (headers + base64 body of ``[args, kwargs, embed]``) inside kombu's Redis
envelope. ``tests/integration/test_pipeline.py`` proves a real Celery worker consumes it.

Three tasks: ``worker.deliver(ids)``, delivery ids to look at now (the scheduler's and the
sweeper's); ``worker.deliver_batch(batch_id)``, the intake's: the ids gathered in the list
``P:batch:{batch_id}`` while the message waited in the queue (see ``store/lua/accept.lua``); and
``worker.inbound(events)``, Messenger webhook events to record (see :mod:`worker.delivery.inbound`).
"""

from __future__ import annotations

import base64
import os
import socket
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis

TASK_NAME = "worker.deliver"
BATCH_TASK = "worker.deliver_batch"
INBOUND_TASK = "worker.inbound"
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def celery_message(arg: list[Any] | str, queue: str, task: str = TASK_NAME) -> bytes:
    """The kombu/Redis envelope of ``task(arg)`` (default ``worker.deliver(ids)``) routed to
    ``queue``."""
    task_id = str(uuid.uuid4())
    body = orjson.dumps([[arg], {}, _EMBED])
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": f"[<{len(arg)} items>]" if isinstance(arg, list) else f"[{arg!r}]",
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return orjson.dumps(envelope)


async def publish(
    client: aioredis.Redis, queue: str, ids: list[str], batch_max: int, *, front: bool = False
) -> None:
    """Enqueue ``worker.deliver`` messages for ids, ``batch_max`` per message, in one round trip.

    kombu's Redis transport LPUSHes and BRPOPs, so ``front=True`` (RPUSH) puts the messages at the
    head of the queue: released waits hold reserved pacing slots and must not queue behind a backlog.
    """
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    push = pipe.rpush if front else pipe.lpush
    for i in range(0, len(ids), batch_max):
        push(queue, celery_message(ids[i : i + batch_max], queue))
    await pipe.execute()

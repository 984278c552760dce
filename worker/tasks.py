"""Thin tasks: decode the message, hand it to the process's delivery engine.

``deliver`` and ``deliver_batch`` return once the engine has claimed the deliveries (the engine
then paces, sends and records them on its own loop; see :meth:`worker.delivery.engine.Engine.run_batch`).
Delivery errors never reach Celery: every outcome (retry, wait, failure) is decided and recorded
by the engine. What does reach it is Redis not answering: the claim is retried for a minute, then
the message is rejected *with requeue*, never acknowledged and dropped (and the deliveries it
names are in ``pending`` regardless: the sweeper has them). Inbound events live only in their
message, so they are requeued the same way.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions
from celery.exceptions import Reject

from worker.celery import app, get_settings
from worker.delivery.engine import ClaimUnavailable, process_engine
from worker.delivery.inbound import record_events
from worker.store.envelope import BATCH_TASK, INBOUND_TASK, TASK_NAME

_UNAVAILABLE = (ClaimUnavailable, redis.exceptions.RedisError, OSError)


@app.task(name=INBOUND_TASK, acks_late=True, ignore_result=True)
def inbound(events: list[dict[str, Any]]) -> dict[str, int]:
    """Record Messenger webhook events: window, PSID links, parked releases (worker/delivery/inbound.py)."""
    if not isinstance(events, list):
        return {}
    engine = process_engine(get_settings)
    valid = [e for e in events if isinstance(e, dict)]
    try:
        return engine.submit(record_events(engine.redis, engine.settings, valid)).result()
    except _UNAVAILABLE as exc:
        raise Reject(f"Redis unavailable: {type(exc).__name__}", requeue=True) from None


@app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
def deliver(ids: list[str]) -> dict[str, int]:
    """Send the deliveries ``ids`` (from the scheduler or the sweeper)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return {}
    try:
        return process_engine(get_settings).run_batch(ids)
    except _UNAVAILABLE as exc:
        raise Reject(f"Redis unavailable: {type(exc).__name__}", requeue=True) from None


@app.task(name=BATCH_TASK, acks_late=True, ignore_result=True)
def deliver_batch(batch_id: str) -> dict[str, int]:
    """Send the deliveries the intake gathered under ``batch_id`` (taken whole when claimed)."""
    if not isinstance(batch_id, str) or not batch_id:
        return {}
    try:
        return process_engine(get_settings).run_batch(batch=batch_id)
    except _UNAVAILABLE as exc:
        raise Reject(f"Redis unavailable: {type(exc).__name__}", requeue=True) from None

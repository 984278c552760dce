"""Thin tasks: decode, hand the batch to the process's delivery engine.

``deliver`` returns once the engine has claimed the batch (the engine then paces, sends and
records it on its own loop; see :meth:`worker.delivery.Engine.run_batch`). Delivery errors never
reach Celery: every outcome (retry, wait, failure) is decided and recorded by the engine. Only
infrastructure errors (Redis unreachable while claiming) escape; the message is then not
acknowledged (acks_late) and comes back, and the sweeper covers it regardless.
"""

from __future__ import annotations

from typing import Any

from worker.celery import app, get_settings
from worker.delivery.engine import process_engine
from worker.delivery.inbound import record_events
from worker.store.envelope import BATCH_TASK, INBOUND_TASK, TASK_NAME


@app.task(name=INBOUND_TASK, acks_late=True, ignore_result=True)
def inbound(events: list[dict[str, Any]]) -> dict[str, int]:
    """Record Messenger webhook events: window, PSID links, parked releases (worker/inbound.py)."""
    if not isinstance(events, list):
        return {}
    engine = process_engine(get_settings)
    valid = [e for e in events if isinstance(e, dict)]
    return engine.submit(record_events(engine.redis, engine.settings, valid)).result()


@app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
def deliver(ids: list[str]) -> dict[str, int]:
    """Send the deliveries ``ids`` (from the scheduler or the sweeper)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return {}
    return process_engine(get_settings).run_batch(ids)


@app.task(name=BATCH_TASK, acks_late=True, ignore_result=True)
def deliver_batch(batch_id: str) -> dict[str, int]:
    """Send the deliveries the intake gathered under ``batch_id`` (taken whole when claimed)."""
    if not isinstance(batch_id, str) or not batch_id:
        return {}
    return process_engine(get_settings).run_batch(batch=batch_id)

"""Thin tasks: decode, hand the batch to the process's delivery engine, report counts.

Delivery errors never reach Celery: every outcome (retry, wait, failure) is decided and recorded
by the engine. Only infrastructure errors (Redis unreachable) escape; the message is then not
acknowledged (acks_late) and comes back, and the sweeper covers it regardless.
"""

from __future__ import annotations

from worker.broker import TASK_NAME
from worker.celery import app, get_settings
from worker.delivery import process_engine


@app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
def deliver(ids: list[str]) -> dict[str, int]:
    """Send the deliveries ``ids`` (a batch from the intake or the scheduler)."""
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        return {}
    return process_engine(get_settings).run_batch(ids)

"""Messenger's delivery and read receipts: sent deliveries marked ``delivered_at`` / ``read_at``.

The webhook's ``message_deliveries`` (mids and a watermark) and ``message_reads`` (a watermark)
events reach :func:`apply_receipts` from the inbound task. ``receipts.lua`` finds the deliveries
among the recipient's sent, unread deliveries (:mod:`worker.store.unread`: their ids and their
outcome's hour; the outcome has the message id and the send time): by their message id (the
mids) and by the watermark. They expire with
the delivery records (RECORD_RETENTION, at most twice that), so memory stays bounded; there is
no key per message id. Each delivery is marked once;
its campaign counts it (delivered, read) in the same call. Then ``bmw_receipts_total{kind}`` and
the latency histograms. With BRAZE_RECEIPT_EVENTS, ``receipts.lua`` also writes a
``messenger_delivered`` / ``messenger_read`` custom event for the delivery's Braze user (at the
receipt's time, with its campaign fields) to the outbox in the same call, so Braze can retarget
readers: a webhook applied twice adds no event, and no mark is left without its event.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker import metrics
from worker.config import Settings
from worker.store import Keys, campaign_ctx, scripts

RECEIPT_KINDS = ("delivery", "read")
#: Events per receipts.lua call.
CHUNK = 200


def _args(event: dict[str, Any], now: float, braze: bool) -> list[Any] | None:
    page, psid = str(event.get("page_id") or ""), str(event.get("psid") or "")
    if not page or not psid:
        return None
    watermark = event.get("watermark")
    wm = (
        repr(float(watermark))
        if isinstance(watermark, int | float) and not isinstance(watermark, bool)
        else ""
    )
    at = event.get("timestamp")
    when = min(float(at), now) if isinstance(at, int | float) and not isinstance(at, bool) else now
    raw_mids = event.get("mids")
    mids = [m for m in raw_mids if isinstance(m, str) and m] if isinstance(raw_mids, list) else []
    event_time = campaign_ctx.event_time(when) if braze else ""  # only an event needs it
    return [event.get("kind"), page, psid, wm, repr(when), event_time, len(mids), *mids]


async def apply_receipts(client: aioredis.Redis, settings: Settings, events: list[dict[str, Any]]) -> int:
    """Mark what the receipts among ``events`` say; returns how many marks were new. Their Braze
    events (BRAZE_RECEIPT_EVENTS) are written by receipts.lua with the marks."""
    keys = Keys.of(settings)
    now = time.time()
    braze = campaign_ctx.braze_events(settings, settings.braze_receipt_events)
    outbox = keys.braze_outbox if braze else ""
    receipts = [a for a in (_args(e, now, braze) for e in events if e.get("kind") in RECEIPT_KINDS) if a]
    marks: list[Any] = []
    for start in range(0, len(receipts), CHUNK):
        args = [
            *campaign_ctx.of_settings(keys, settings, now),
            keys.unread_bucket_prefix,
            keys.unread_prefix,
            outbox,
        ]
        for item in receipts[start : start + CHUNK]:
            args += item
        parsed = orjson.loads(await scripts.run(client, "receipts", args=args))
        marks += parsed if isinstance(parsed, list) else []  # cjson encodes an empty list as {}
    for _delivery_id, kind, latency in marks:
        metrics.RECEIPTS.labels(kind).inc()
        (metrics.READ_LATENCY if kind == "read" else metrics.DELIVERED_LATENCY).observe(float(latency))
    return len(marks)

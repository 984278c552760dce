"""The Braze ⇄ Messenger loop: what inbound Messenger events change, and what goes back to Braze.

Messenger calls ``/messenger/webhook`` on the intake; verified events reach the task
``worker.inbound`` and :func:`record_events`, which

* remembers each (page, PSID)'s last interaction — the 24-hour window, known in advance:
  a delivery to a PSID whose window is known to be closed goes straight to its fallback tags, or
  to the window outcome, without a doomed Graph call; a window-closed answer teaches the same;
* releases the deliveries parked for that PSID (``WINDOW_POLICY=park``), oldest first;
* writes the PSID to Braze (``BRAZE_PSID_ATTRIBUTE`` on the user) when the event carries an
  m.me/referral ``ref`` naming the Braze external_id (``braze_<external_id>``, see
  :mod:`worker.messenger.webhook`), and remembers the mapping for the feedback below.

Feedback: when a recipient is found unreachable, the Braze user (the ``X-Braze-External-Id``
header given at the intake, else the mapping learned from a ref) gets ``messenger_reachable=false``
(``BRAZE_FEEDBACK=flag``) or a blank PSID attribute (``clear``); with ``BRAZE_OUTCOME_EVENTS`` every
final outcome also becomes a ``messenger_delivery`` custom event. Writes go through the durable
outbox of :mod:`worker.braze`; one worker at a time drains it (a Redis lock).

Keys (:class:`worker.store.Keys`): ``win`` (last interaction, epoch s; "0": learned closed;
WINDOW_MEMORY_SECONDS), ``ext`` (the Braze external_id learned from a ref; 400 days), ``park``
and ``parked`` (deliveries parked until their recipient writes).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from worker.braze import BrazeOutbox, braze_config, psid_attribute_item
from worker.config import Settings
from worker.logging import get_logger, recipient_ref
from worker.messenger.webhook import parse_ref
from worker.store import Keys, envelope, scripts, text

log = get_logger("worker.inbound")
WINDOW_SECONDS = 24 * 3600
EXTERNAL_ID_TTL = 400 * 86_400


def window_closed(value: str | None, now: float) -> bool | None:
    """True/False when the window's state is known from the last interaction, None when unknown."""
    if value is None:
        return None
    try:
        last = float(value)
    except ValueError:
        return None
    return now - last > WINDOW_SECONDS


async def record_events(
    client: aioredis.Redis, settings: Settings, events: list[dict[str, Any]]
) -> dict[str, int]:
    """Apply inbound events (see the module docstring). Returns counts for the task's result."""
    keys = Keys.of(settings)
    now = time.time()
    pipe = client.pipeline(transaction=False)
    braze_items: list[dict[str, Any]] = []
    engaged: dict[tuple[str, str], float] = {}
    config = braze_config(settings)
    for event in events:
        page, psid = str(event.get("page_id", "")), str(event.get("psid", ""))
        if not page or not psid:
            continue
        at = float(event.get("timestamp") or now)
        if event.get("opens_window"):
            engaged[(page, psid)] = max(at, engaged.get((page, psid), 0.0))
        external_id = parse_ref(str(event["ref"])) if event.get("ref") else None
        if external_id:
            pipe.set(keys.external(page, psid), external_id, ex=EXTERNAL_ID_TTL)
            if config is not None:
                braze_items.append(psid_attribute_item(config.psid_attribute, external_id, page, psid))
            log.info("inbound.psid_linked", page_id=page, recipient=recipient_ref(settings, psid))
    for (page, psid), at in engaged.items():
        pipe.set(keys.window(page, psid), repr(at), ex=settings.window_memory_seconds)
    await pipe.execute()
    released = 0
    for page, psid in engaged:
        released += len(await release_parked(client, settings, page, psid))
    if braze_items:
        await BrazeOutbox(keys).enqueue(client, braze_items)
    return {"events": len(events), "engaged": len(engaged), "released": released, "braze": len(braze_items)}


async def release_parked(client: aioredis.Redis, settings: Settings, page_id: str, psid: str) -> list[str]:
    """The user re-engaged: their parked deliveries go back to the queue, oldest first."""
    keys = Keys.of(settings)
    raw = await scripts.run(
        client,
        "release_parked",
        keys=[keys.park(page_id, psid), keys.parked, keys.pending],
        args=[repr(time.time()), settings.sweep_after_seconds, keys.delivery_prefix],
    )
    ids = [text(i) for i in raw]
    if ids:
        # one message for all of them (not envelope.publish's batch_max chunks): the engine sends a
        # recipient's deliveries in order only within one batch
        await client.lpush(settings.queue_name, envelope.celery_message(ids, settings.queue_name))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        log.info(
            "delivery.released", page_id=page_id, recipient=recipient_ref(settings, psid), count=len(ids)
        )
    return ids

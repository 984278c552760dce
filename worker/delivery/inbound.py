"""The Braze ⇄ Messenger loop: what inbound Messenger events change, and what goes back to Braze.

Messenger calls ``/messenger/webhook`` on the intake; verified events reach the task
``worker.inbound`` and :func:`record_events`, which

* remembers each (page, PSID)'s last interaction — the 24-hour window, known in advance:
  a delivery to a PSID whose window is known to be closed goes straight to its fallback tags, or
  to the window outcome, without a doomed Graph call; a window-closed answer teaches the same;
* releases the deliveries parked for that PSID (``WINDOW_POLICY=park``), oldest first;
* writes the PSID to Braze (``BRAZE_PSID_ATTRIBUTE`` on the user) when the event carries an
  m.me/referral ``ref`` naming the Braze external_id (``braze_<external_id>``, see
  :mod:`worker.messenger_webhook`), and remembers the mapping for the feedback below.

Feedback: when a recipient is found unreachable, the Braze user (the ``X-Braze-External-Id``
header given at the intake, else the mapping learned from a ref) gets ``messenger_reachable=false``
(``BRAZE_FEEDBACK=flag``) or a blank PSID attribute (``clear``); with ``BRAZE_OUTCOME_EVENTS`` every
final outcome also becomes a ``messenger_delivery`` custom event. Writes go through the durable
outbox of :mod:`worker.braze`; one worker at a time drains it (a Redis lock).

Keys (``P`` = KEY_PREFIX)::

    P:win:{page}:{psid}    string  last interaction, epoch seconds ("0": learned closed), TTL WINDOW_MEMORY_SECONDS
    P:ext:{page}:{psid}    string  Braze external_id learned from a ref (TTL 400 days)
    P:park:{page}:{psid}   zset    deliveries parked for this recipient -> accepted at
    P:parked               zset    every parked delivery -> accepted at (status, metrics)
    P:braze:lock           string  the outbox drainer's lock (PX 30 s, renewed while draining)
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from worker import store
from worker.braze import BrazeConfig, psid_attribute_item
from worker.config import Settings
from worker.logging import get_logger, recipient_ref
from worker.messenger.webhook import InboundEvent, parse_ref
from worker.store import envelope as broker

log = get_logger("worker.inbound")
WINDOW_SECONDS = 24 * 3600
EXTERNAL_ID_TTL = 400 * 86_400

# RELEASE_PARKED: KEYS[1] the recipient's park zset, KEYS[2] parked zset, KEYS[3] pending zset.
# ARGV[1] now, ARGV[2] sweep_after, ARGV[3] prefix. Parked deliveries become queued again
# (oldest first); returns their ids.
RELEASE_PARKED_LUA = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. ':d:' .. id
  if redis.call('HGET', key, 'status') == 'parked' then
    redis.call('HSET', key, 'status', 'queued', 'not_before', 0, 'lease_until', 0, 'updated_at', ARGV[1])
    redis.call('ZADD', KEYS[3], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    table.insert(out, id)
  end
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
return out
"""


def window_key(settings: Settings, page_id: str, psid: str) -> str:
    return f"{settings.key_prefix}:win:{page_id}:{psid}"


def external_key(settings: Settings, page_id: str, psid: str) -> str:
    return f"{settings.key_prefix}:ext:{page_id}:{psid}"


def park_key(settings: Settings, page_id: str, psid: str) -> str:
    return f"{settings.key_prefix}:park:{page_id}:{psid}"


def parked_key(settings: Settings) -> str:
    return store.Keys(settings.key_prefix, settings.queue_name).parked


def window_closed(value: str | None, now: float) -> bool | None:
    """True/False when the window's state is known from the last interaction, None when unknown."""
    if value is None:
        return None
    try:
        last = float(value)
    except ValueError:
        return None
    return now - last > WINDOW_SECONDS


def braze_config(settings: Settings) -> BrazeConfig | None:
    if not settings.braze_enabled or settings.braze_rest_url is None or settings.braze_api_key is None:
        return None
    return BrazeConfig(
        rest_url=settings.braze_rest_url.rstrip("/"),
        api_key=settings.braze_api_key.get_secret_value(),
        psid_attribute=settings.braze_psid_attribute,
        batch_size=settings.braze_batch_size,
    )


def event_to_dict(event: InboundEvent) -> dict[str, Any]:
    return {
        "page_id": event.page_id,
        "psid": event.psid,
        "timestamp": event.timestamp,
        "kind": event.kind,
        "ref": event.ref,
        "opens_window": event.opens_window,
    }


async def record_events(
    client: aioredis.Redis, settings: Settings, events: list[dict[str, Any]]
) -> dict[str, int]:
    """Apply inbound events (see the module docstring). Returns counts for the task's result."""
    from worker.braze import BrazeOutbox

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
            pipe.set(external_key(settings, page, psid), external_id, ex=EXTERNAL_ID_TTL)
            if config is not None:
                braze_items.append(psid_attribute_item(config, external_id, page, psid))
            log.info("inbound.psid_linked", page_id=page, recipient=recipient_ref(settings, psid))
    for (page, psid), at in engaged.items():
        pipe.set(window_key(settings, page, psid), repr(at), ex=settings.window_memory_seconds)
    await pipe.execute()
    released = 0
    for page, psid in engaged:
        released += len(await release_parked(client, settings, page, psid))
    if braze_items:
        await BrazeOutbox(settings.key_prefix).enqueue(client, braze_items)
    return {"events": len(events), "engaged": len(engaged), "released": released, "braze": len(braze_items)}


async def release_parked(client: aioredis.Redis, settings: Settings, page_id: str, psid: str) -> list[str]:
    """The user re-engaged: their parked deliveries go back to the queue, oldest first."""
    keys = store.Keys(settings.key_prefix, settings.queue_name)
    script = client.register_script(RELEASE_PARKED_LUA)
    raw = await script(
        keys=[park_key(settings, page_id, psid), parked_key(settings), keys.pending],
        args=[repr(time.time()), settings.sweep_after_seconds, settings.key_prefix],
    )
    ids = [store._s(i) for i in raw]
    if ids:
        # one message for all of them (not broker.publish's batch_max chunks): the engine sends a
        # recipient's deliveries in order only within one batch
        await client.lpush(settings.queue_name, broker.celery_message(ids, settings.queue_name))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        log.info(
            "delivery.released", page_id=page_id, recipient=recipient_ref(settings, psid), count=len(ids)
        )
    return ids

"""The Braze ⇄ Messenger loop: what inbound Messenger events change, and what goes back to Braze.

Messenger calls ``/messenger/webhook`` on the intake; verified events reach the task
``worker.inbound`` and :func:`record_events`, which hands template status changes to
:func:`worker.templates.apply_status_events` and, for the users' events,

* ignores an event whose message id (``mid``: messages and postbacks) was already recorded — Meta
  retries a webhook it thinks was lost, and a captured body could be replayed; the mid is
  remembered for :data:`MID_MEMORY_SECONDS` once the event is applied (so a task that fails half
  way and is requeued applies it again rather than losing it: everything below is idempotent);
* remembers when each (page, PSID)'s window closes, only ever later (``touch_window.lua``: an
  event that arrives late, or a replay, cannot move it back): the interaction's time + 24 hours,
  + 7 days after a Click-to-Messenger ad; ``standby`` events (another app holds the thread)
  count as ``messaging`` ones. A delivery to a PSID whose window is known to be closed goes
  straight to its fallback routes, or to the window outcome, without a doomed Graph call; a
  window-closed answer from Graph teaches the same. Neither is believed for longer than it can
  be true (:func:`window_closed`): after ``WINDOW_RECHECK_SECONDS`` without a newer event Graph
  is asked again (a user may have written where no webhook told us, or no webhook is set up);
* releases the deliveries parked for that PSID (``WINDOW_POLICY=park``), oldest first, when the
  last interaction moved forward;
* marks the deliveries a ``read`` or ``delivery`` receipt names ``read_at`` / ``delivered_at``
  (:mod:`worker.delivery.receipts`);
* links the PSID to a Braze user when the event carries a ref that proves it was issued by us
  (``braze_<external_id>.<expires>.<mac>``, HMAC under ``LINK_SECRET``, bound to the page:
  :mod:`worker.messenger.refs`): writes the PSID to Braze (``BRAZE_PSID_ATTRIBUTE``) and remembers
  the mapping for the feedback below. Any other ``braze_`` ref (unsigned, forged, for another
  page, expired, or any ref while LINK_SECRET is unset) still counts as an interaction but links
  nothing: ``inbound.link_refused`` (``reason``) and ``bmw_link_refusals_total{reason}``.

Links (``link_psid.lua``): a PSID linked to user A that brings a valid ref for user B is a
conflict. ``LINK_CONFLICT_POLICY=keep`` (default) leaves it linked to A and writes nothing to
Braze (``inbound.link_conflict``); ``replace`` links it to B and writes B's profile
(``inbound.psid_relinked``). Both are counted in ``bmw_link_conflicts_total{action}``. A's
profile is not changed either way: A's own signed link put the PSID there. One Braze user
linked from several PSIDs (another Messenger account, another page) is normal: each PSID's
mapping is kept, and the profile's attribute holds the latest. Log lines never carry an
external id or a PSID in clear: both go through :func:`worker.logging.recipient_ref` (a salted
hash unless ``LOG_RAW_RECIPIENTS``).

Feedback: when a recipient is found unreachable, the Braze user (the ``X-Braze-External-Id``
header given at the intake, else the mapping learned from a ref) gets ``messenger_reachable=false``
(``BRAZE_FEEDBACK=flag``) or a blank PSID attribute (``clear``); with ``BRAZE_OUTCOME_EVENTS`` every
final outcome also becomes a ``messenger_delivery`` custom event. Writes go through the durable
outbox of :mod:`worker.braze`; one worker at a time drains it (a Redis lock).

Keys (:class:`worker.store.Keys`): ``wu`` (when the window closes, epoch s;
WINDOW_MEMORY_SECONDS), ``wcl`` (when Graph last said it is closed; WINDOW_RECHECK_SECONDS), ``ext`` (the Braze external_id learned from a ref; 400 days), ``mid``
(message ids recorded; 1 day), ``park`` and ``parked`` (deliveries parked until their recipient
writes).
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis

from worker import metrics
from worker.braze import BrazeOutbox, braze_config, psid_attribute_item
from worker.config import Settings
from worker.delivery.receipts import apply_receipts
from worker.logging import get_logger, recipient_ref
from worker.messenger.refs import check_ref
from worker.messenger.webhook import AD_WINDOW_SECONDS, WINDOW_SECONDS
from worker.store import Keys, envelope, scripts, text
from worker.templates import TEMPLATE_STATUS, apply_status_events

log = get_logger("worker.inbound")
EXTERNAL_ID_TTL = 400 * 86_400
#: How long a recorded message id is remembered: Meta retries a webhook it could not deliver
#: for hours, not days; a replay after this cannot move a window back anyway (touch_window.lua).
MID_MEMORY_SECONDS = 86_400


def _served_statuses(settings: Settings, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The template status events of the pages this deployment sends as. Meta sends them for every
    page subscribed to the app; another page's would make a catalogue that nothing reads and
    nothing expires (a page configured since the process started gets its catalogue from the
    next sync)."""
    served = settings.page_access_tokens
    statuses = [e for e in events if e.get("kind") == TEMPLATE_STATUS and not e.get("local")]
    kept = [e for e in statuses if str(e.get("page_id", "")) in served]
    if len(kept) < len(statuses):
        metrics.TEMPLATE_EVENTS.labels("ignored").inc(len(statuses) - len(kept))
        log.info("templates.events_of_other_pages", count=len(statuses) - len(kept))
    return kept


async def record_events(
    client: aioredis.Redis, settings: Settings, events: list[dict[str, Any]]
) -> dict[str, int]:
    """Apply inbound events (see the module docstring). Returns counts for the task's result."""
    keys = Keys.of(settings)
    now = time.time()
    statuses = _served_statuses(settings, events)
    templates = await apply_status_events(client, keys, statuses) if statuses else 0
    fresh = await _unseen(client, keys, events)
    engaged: dict[tuple[str, str], float] = {}
    links: list[tuple[str, str, str]] = []  # (page, PSID, external_id)
    for event in fresh:
        page, psid = str(event.get("page_id", "")), str(event.get("psid", ""))
        if not page or not psid:
            continue
        at = _seconds(event.get("timestamp"), now)
        if event.get("opens_window"):
            until = at + _window_length(event.get("window_seconds"))
            engaged[(page, psid)] = max(until, engaged.get((page, psid), 0.0))
        # a copy for the shard a page moved from (worker/intake/routes/webhook.py) links nothing:
        # the page's own shard does
        external_id = None if event.get("local") else _verified(settings, page, psid, event.get("ref"), now)
        if external_id is not None:
            links.append((page, psid, external_id))
    moved = await _touch_windows(client, settings, keys, engaged)
    braze_items = [item for link in links for item in await _link(client, settings, keys, link)]
    released = 0
    for page, psid in moved:
        released += len(await release_parked(client, settings, page, psid))
    if braze_items:
        await BrazeOutbox(keys).enqueue(client, braze_items)
    await _remember_mids(client, keys, fresh)
    receipts = await apply_receipts(client, settings, fresh)
    return {
        "receipts": receipts,
        "events": len(events),
        "duplicates": len(events) - len(fresh),
        "engaged": len(engaged),
        "released": released,
        "braze": len(braze_items),
        "templates": templates,
    }


def _window_length(value: object) -> int:
    """The event's window (24 h, or 7 days after an ad); anything else: 24 h."""
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value in (WINDOW_SECONDS, AD_WINDOW_SECONDS)
    ):
        return value
    return WINDOW_SECONDS


def _seconds(value: object, now: float) -> float:
    """An event's time (epoch s); missing or unusable: now; never in the future."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return min(float(value), now)
    return now


def _mid_key(keys: Keys, event: dict[str, Any]) -> str | None:
    mid, page = event.get("mid"), event.get("page_id")
    if isinstance(mid, str) and mid and page:
        return keys.inbound_mid(str(page), mid)
    return None


async def _unseen(client: aioredis.Redis, keys: Keys, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events whose mid was never recorded (or that have none), first of each mid only."""
    mid_keys = [_mid_key(keys, e) for e in events]
    known = [k for k in mid_keys if k is not None]
    seen: set[str] = set()
    if known:
        pipe = client.pipeline(transaction=False)
        for known_key in known:
            pipe.exists(known_key)
        seen = {k for k, hit in zip(known, await pipe.execute(), strict=True) if hit}
    fresh: list[dict[str, Any]] = []
    for event, key in zip(events, mid_keys, strict=True):
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        fresh.append(event)
    if len(fresh) < len(events):
        metrics.INBOUND_DUPLICATES.inc(len(events) - len(fresh))
        log.info("inbound.duplicates_ignored", count=len(events) - len(fresh))
    return fresh


async def _remember_mids(client: aioredis.Redis, keys: Keys, events: list[dict[str, Any]]) -> None:
    mid_keys = [k for k in (_mid_key(keys, e) for e in events) if k is not None]
    if mid_keys:
        pipe = client.pipeline(transaction=False)
        for key in mid_keys:
            pipe.set(key, "1", ex=MID_MEMORY_SECONDS)
        await pipe.execute()


async def _touch_windows(
    client: aioredis.Redis, settings: Settings, keys: Keys, engaged: dict[tuple[str, str], float]
) -> list[tuple[str, str]]:
    """Set each window's end if it is later (touch_window.lua); the (page, PSID)s that moved."""
    if not engaged:
        return []
    pairs = list(engaged)
    flags = await scripts.run(
        client,
        "touch_window",
        keys=[keys.window(page, psid) for page, psid in pairs],
        args=[settings.window_memory_seconds, *(repr(engaged[pair]) for pair in pairs)],
    )
    return [pair for pair, flag in zip(pairs, flags, strict=True) if int(flag) == 1]


def _verified(settings: Settings, page: str, psid: str, ref: object, now: float) -> str | None:
    """The Braze external_id a ref proves (worker/messenger/refs.py); refusals logged and counted."""
    secret = settings.link_secret.get_secret_value() if settings.link_secret is not None else None
    check = check_ref(ref, page, secret, now)
    if check is None:  # not a braze_ ref: not ours, nothing refused
        return None
    if check.refusal is not None:
        metrics.LINK_REFUSALS.labels(check.refusal).inc()
        log.warning(
            "inbound.link_refused",
            reason=check.refusal,
            page_id=page,
            recipient=recipient_ref(settings, psid),
            braze_user=recipient_ref(settings, check.claimed) if check.claimed else None,
        )
        return None
    return check.external_id


async def _link(
    client: aioredis.Redis, settings: Settings, keys: Keys, link: tuple[str, str, str]
) -> list[dict[str, Any]]:
    """Link (page, PSID) to the external_id under LINK_CONFLICT_POLICY; the Braze writes it needs."""
    page, psid, external_id = link
    policy = settings.link_conflict_policy
    outcome, previous = (
        text(v)
        for v in await scripts.run(
            client, "link_psid", keys=[keys.external(page, psid)], args=[external_id, EXTERNAL_ID_TTL, policy]
        )
    )
    fields: dict[str, Any] = {
        "page_id": page,
        "recipient": recipient_ref(settings, psid),
        "braze_user": recipient_ref(settings, external_id),
    }
    if outcome == "kept":
        metrics.LINK_CONFLICTS.labels("kept").inc()
        log.warning(
            "inbound.link_conflict", policy=policy, linked_user=recipient_ref(settings, previous), **fields
        )
        return []
    if outcome == "replaced":
        metrics.LINK_CONFLICTS.labels("replaced").inc()
        log.warning("inbound.psid_relinked", previous_user=recipient_ref(settings, previous), **fields)
    else:
        log.info("inbound.psid_linked", **fields)
    config = braze_config(settings)
    return [] if config is None else [psid_attribute_item(config.psid_attribute, external_id, page, psid)]


async def release_parked(client: aioredis.Redis, settings: Settings, page_id: str, psid: str) -> list[str]:
    """The user re-engaged: their parked deliveries go back to the queue, oldest first."""
    keys = Keys.of(settings)
    raw = await scripts.run(
        client,
        "release_parked",
        keys=[keys.park(page_id, psid), keys.parked, keys.pending, keys.open],
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

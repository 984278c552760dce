"""Campaigns under control: attribution, counters, stop and resume, cancelling one delivery,
pausing a page. The service functions the admin API, the CLI and the operator console call.

Attribution. The Braze webhook template sends ``X-Braze-Campaign-Id``, ``X-Braze-Canvas-Id``,
``X-Braze-Canvas-Step-Id``, ``X-Braze-Message-Variation-Id`` and ``X-Braze-Send-Id`` (README:
"Braze set-up"); the intake stores those given on the delivery (``records.ATTRIBUTION``), every
outcome line carries them and the status API shows them. A delivery belongs to its campaign, or
to its Canvas when it has no campaign id: that id names the "campaign" below.

Counters (``P:camp:{id}``, a hash) change in the same Lua call that changes a status, never in a
round trip of their own: ``accepted`` (accept.lua), ``sent``, ``failed`` and ``failed:{reason}``,
``expired``, ``dead`` (record.lua), ``cancelled`` (claim.lua, record.lua, cancel.lua,
accept.lua), ``delivered`` and ``read`` (receipts.lua), ``replayed`` (replay.lua: a dead letter
replayed leaves ``dead``, or is counted ``accepted`` when the counters no longer hold its death) and ``sent_after_stop``. So ``accepted = sent + failed + expired + dead
+ cancelled + open`` (``open``: the campaign's open index). The hash, the open index
(``P:campopen:{id}``) and the stop expire ``CAMPAIGN_RETENTION`` after the campaign's last
activity; ``P:camps`` (campaigns by last activity, for :func:`list_campaigns`) is pruned to the
same horizon. Prometheus gets no campaign label: per-campaign numbers are read here.

Stop. :func:`stop` puts the campaign in ``P:campstop`` first, then cancels its open deliveries
(queued, scheduled, retrying, parked, in a batch not yet claimed) from its open index, chunk by
chunk (O(its open deliveries), never a scan of everything). From the moment of the stop:

* accept.lua answers a new request of it ``cancelled`` (200: Braze does not retry a 2xx);
* claim.lua cancels any of its deliveries instead of claiming it (a batch already queued, a
  retry coming due, a sweep);
* record.lua turns any open outcome of a delivery a worker held (retry, wait, park, release) into
  CANCELLED;
* every worker reads ``P:campstop`` every 0.5 s (engine.STOP_WATCH_SECONDS) while it holds
  deliveries (and at once when it starts holding some after holding none) and starts no Graph
  call for a stopped campaign's delivery.

The window: a delivery whose Graph call had started when the stop landed, or started before its
worker's next read of the stops (at most 0.5 s later), may still be sent. It is recorded ``sent``
and counted ``sent_after_stop``. :func:`resume` lifts the stop for new requests (what was
cancelled stays cancelled).

Service functions (``client`` is a ``redis.asyncio.Redis``; ``keys`` a
:class:`worker.store.Keys`; ``settings`` a :class:`worker.config.Settings`)::

    list_campaigns(client, keys, *, limit) -> list[dict]        most recently active first
    campaign(client, keys, campaign_id) -> dict | None          counters, open, stopped, times
    stop(client, settings, campaign_id, *, by) -> int           how many it cancelled
    resume(client, settings, campaign_id) -> bool               False: it was not stopped
    cancel_delivery(client, settings, delivery_id) -> bool      True: it is cancelled now
    pause_page(client, settings, page_id, seconds) -> float     seconds None: until resumed
    resume_page(client, settings, page_id) -> int               deliveries released
    purge_queue(client, settings) -> dict[str, int]             the queue emptied, its deliveries cancelled

A campaign's object (:func:`campaign`): ``campaign_id`` and the counters ``accepted``, ``sent``,
``failed``, ``expired``, ``dead``, ``cancelled``, ``delivered``, ``read`` (always present),
``failed_reasons`` ({reason: n}), ``open``, ``replayed``, ``sent_after_stop``, ``stopped``
(bool), ``stopped_at`` and ``stopped_by`` (when stopped), ``first_at``, ``last_at`` (Unix s).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from worker import metrics
from worker.config import Settings
from worker.states import State
from worker.store import Keys, campaign_ctx, records, scripts, text
from worker.store import pages as _pages
from worker.store import purge as _purge

__all__ = [
    "COUNTERS",
    "MAX_CAMPAIGN_ID",
    "MAX_LIST",
    "campaign",
    "cancel_delivery",
    "list_campaigns",
    "pause_page",
    "purge_queue",
    "resume",
    "resume_page",
    "stop",
]

#: The counters every campaign object carries (0 when none happened).
COUNTERS = (
    "accepted",
    *(s.value for s in (State.SENT, State.FAILED, State.EXPIRED, State.DEAD, State.CANCELLED)),
    "delivered",
    "read",
)
#: Other counters, shown when present.
EXTRA_COUNTERS = ("replayed", "sent_after_stop")
#: The longest campaign id (the intake refuses longer X-Braze-* values).
MAX_CAMPAIGN_ID = 128
#: The most campaigns one listing reads (the admin API's bound too): one MULTI of three reads each.
MAX_LIST = 1000
#: Open deliveries looked at per cancel.lua call while stopping a campaign.
STOP_CHUNK = 500
_FAILED = "failed:"


def _view(campaign_id: str, rec: dict[str, str], open_count: int, stopped_at: float | None) -> dict[str, Any]:
    view: dict[str, Any] = {"campaign_id": campaign_id}
    for name in COUNTERS:
        view[name] = int(rec.get(name, "0") or 0)
    view["failed_reasons"] = {
        k[len(_FAILED) :]: int(v) for k, v in sorted(rec.items()) if k.startswith(_FAILED) and int(v)
    }
    view["open"] = open_count
    for name in EXTRA_COUNTERS:
        view[name] = int(rec.get(name, "0") or 0)
    view["stopped"] = stopped_at is not None
    if stopped_at is not None:
        # the stop's own time; P:campstop's score moves on with the campaign's activity (_campaign.lua)
        view["stopped_at"] = records.number(rec, "stopped_at") or stopped_at
        view["stopped_by"] = rec.get("stopped_by", "")
    view["first_at"] = records.number(rec, "first_at") or None
    view["last_at"] = records.number(rec, "last_at") or None
    return view


async def campaign(client: aioredis.Redis, keys: Keys, campaign_id: str) -> dict[str, Any] | None:
    """The campaign's counters, open count, stop and times; None when nothing is known of it
    (never seen, or its retention passed)."""
    if not campaign_id or len(campaign_id) > MAX_CAMPAIGN_ID:
        return None
    # MULTI: the counters, the open index and the stop of one moment (a script between them
    # would show more open than accepted, or fewer)
    pipe = client.pipeline(transaction=True)
    pipe.hgetall(keys.campaign(campaign_id))
    pipe.zcard(keys.campaign_open(campaign_id))
    pipe.zscore(keys.campaigns_stopped, campaign_id)
    raw, open_count, stopped = await pipe.execute()
    if not raw and not open_count and stopped is None:
        return None
    return _view(
        campaign_id, records.decode(raw), int(open_count), None if stopped is None else float(stopped)
    )


async def list_campaigns(client: aioredis.Redis, keys: Keys, *, limit: int = 100) -> list[dict[str, Any]]:
    """The ``limit`` most recently active campaigns (within CAMPAIGN_RETENTION), newest first
    (1 to :data:`MAX_LIST`)."""
    limit = max(1, min(limit, MAX_LIST))
    ids = [text(i) for i in await client.zrevrange(keys.campaigns, 0, limit - 1)]
    if not ids:
        return []
    pipe = client.pipeline(transaction=True)  # one moment's, as campaign()'s
    for cid in ids:
        pipe.hgetall(keys.campaign(cid))
        pipe.zcard(keys.campaign_open(cid))
        pipe.zscore(keys.campaigns_stopped, cid)
    res = await pipe.execute()
    out = []
    for n, cid in enumerate(ids):
        raw, open_count, stopped = res[3 * n : 3 * n + 3]
        if raw or open_count or stopped is not None:
            out.append(
                _view(cid, records.decode(raw), int(open_count), None if stopped is None else float(stopped))
            )
    return out


async def _cancel(
    client: aioredis.Redis, settings: Settings, reason: str, *args: Any
) -> tuple[int, int, int]:
    keys = Keys.of(settings)
    ctx = campaign_ctx.of_settings(keys, settings, time.time())
    res = await scripts.run(client, "cancel", args=[*ctx, reason, *args])
    # counted where they end: the intake's /metrics for the admin API and the console; a CLI
    # process exits unscraped (its cancels are in the campaign counters and the status API)
    metrics.count_cancels(settings, scripts.cancels(res[3]))
    return int(res[0]), int(res[1]), int(res[2])


async def stop(client: aioredis.Redis, settings: Settings, campaign_id: str, *, by: str) -> int:
    """Stop a campaign: no new request of it is queued, and every open delivery of it that no
    worker holds ends CANCELLED now (those held: by their worker, see the module docstring).
    Returns how many this call cancelled. Stopping a stopped campaign cancels what is left."""
    if not campaign_id or len(campaign_id) > MAX_CAMPAIGN_ID:
        raise ValueError("a campaign id is 1 to 128 characters")
    keys = Keys.of(settings)
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.zadd(keys.campaigns_stopped, {campaign_id: now}, nx=True)
    pipe.hsetnx(keys.campaign(campaign_id), "first_at", repr(now))
    pipe.hsetnx(keys.campaign(campaign_id), "stopped_at", repr(now))  # a second stop keeps the first's
    pipe.hset(keys.campaign(campaign_id), mapping={"stopped_by": by, "last_at": repr(now)})
    pipe.expire(keys.campaign(campaign_id), settings.campaign_retention)
    pipe.zadd(keys.campaigns, {campaign_id: now})
    await pipe.execute()
    total = 0
    for _ in range(3):  # a pass misses members that ended meanwhile (the slice shifts): again
        cancelled_in_pass = 0
        offset = 0
        while True:
            cancelled, held, looked = await _cancel(
                client, settings, "campaign_stopped", "campaign", campaign_id, offset, STOP_CHUNK
            )
            cancelled_in_pass += cancelled
            offset += held
            if looked < STOP_CHUNK:
                break
        total += cancelled_in_pass
        if cancelled_in_pass == 0:
            break
    return total


async def resume(client: aioredis.Redis, settings: Settings, campaign_id: str) -> bool:
    """Lift a stop: new requests of the campaign are queued again (what was cancelled stays so).
    False when it was not stopped."""
    keys = Keys.of(settings)
    pipe = client.pipeline(transaction=True)
    pipe.zrem(keys.campaigns_stopped, campaign_id)
    pipe.hdel(keys.campaign(campaign_id), "stopped_by", "stopped_at")
    removed, _ = await pipe.execute()
    return bool(removed)


async def cancel_delivery(client: aioredis.Redis, settings: Settings, delivery_id: str) -> bool:
    """Cancel one open delivery. True: it is CANCELLED now. False: it is final already, unknown,
    or a worker holds it; a held one is marked, so that its next outcome is CANCELLED unless
    its call had started (then it is recorded as what Graph answered)."""
    cancelled, _held, _ = await _cancel(client, settings, "operator", "ids", delivery_id)
    return cancelled == 1


async def pause_page(
    client: aioredis.Redis, settings: Settings, page_id: str, seconds: float | None = None
) -> float:
    """Pause a page for ``seconds`` (None: until :func:`resume_page`): its deliveries wait unsent,
    no attempt burnt. Returns the pause's end (epoch s)."""
    return await _pages.pause_page(client, Keys.of(settings), page_id, seconds)


async def resume_page(client: aioredis.Redis, settings: Settings, page_id: str) -> int:
    """Lift a page's pause; its waiting deliveries are due now. Returns how many were released."""
    return await _pages.resume_page(client, Keys.of(settings), page_id)


async def purge_queue(client: aioredis.Redis, settings: Settings) -> dict[str, int]:
    """Empty the Celery queue, cancelling the deliveries its messages named and clearing the
    gather pointer (:mod:`worker.store.purge`; what ``celery purge`` would leave half done)."""
    return await _purge.purge_queue(client, settings)

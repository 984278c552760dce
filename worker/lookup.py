"""Look-ups for operators: one delivery with its whole story, one recipient on one page.

The console (``/console/lookup``), the admin API (``GET /v1/deliveries/{id}``,
``GET /v1/pages/{page}/recipients/{psid}``) and the CLI (``messenger-worker lookup``) read them
from here: a fixed number of keys each, one round trip, whatever the backlog.

* :func:`delivery_story` — the status API's view of the record plus what an operator needs to
  answer "why did this user get nothing": the recipient, the routes it may take and has tried,
  and its history (``P:hist:{id}``: one entry per round that did not end in a first-try send;
  accepted, sent, delivered and read come from the record).
* :func:`recipient_state` — a (page, recipient)'s window (open, closed or unknown, and since
  when), whether Graph said so lately, suppression (unreachable, tagged sends), the Braze user a
  signed ref linked, and the deliveries parked for it.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker.config import Settings
from worker.states import State
from worker.store import Keys, outcomes, records, text
from worker.store.windows import window_closed

#: Parked deliveries listed at most for one recipient (their count is always exact).
PARKED_SHOWN = 50


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(text(value))
    except ValueError:
        return None


async def delivery_story(
    client: aioredis.Redis, settings: Settings, delivery_id: str
) -> dict[str, Any] | None:
    """The delivery's view with its recipient, routes and history; None when unknown (or past
    RECORD_RETENTION)."""
    keys = Keys.of(settings)
    rec = await outcomes.read(client, keys, delivery_id, settings.record_retention)
    if not rec:
        return None
    history = await client.lrange(keys.history(delivery_id), 0, -1)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    view = records.public_view(delivery_id, rec)
    if rec.get("psid"):  # kept while the delivery is open or dead (a final record drops it)
        view["recipient"] = rec["psid"]
    for name in ("fallbacks", "routes_tried", "fallback_tags", "tags_tried"):
        if rec.get(name):
            view[name] = orjson.loads(rec[name])
    if rec.get("active_route"):
        view["active_route"] = rec["active_route"]
    view["failures"] = int(rec.get("failures") or 0)
    story: list[dict[str, Any]] = [
        {"at": records.number(rec, "first_created_at") or view["created_at"], "status": "accepted"}
    ]
    story += [orjson.loads(entry) for entry in history]
    sent = State.SENT.value
    if rec.get("sent_at") and not any(e.get("status") == sent for e in story):
        story.append(
            {"at": records.number(rec, "sent_at"), "status": sent, "route": rec.get("delivered_via", "")}
        )
    for name in ("delivered_at", "read_at"):
        if rec.get(name):
            story.append({"at": records.number(rec, name), "status": name.removesuffix("_at")})
    view["history"] = sorted(story, key=lambda e: e.get("at") or 0)
    return view


async def recipient_state(
    client: aioredis.Redis, settings: Settings, page_id: str, psid: str
) -> dict[str, Any]:
    """What the service knows of one recipient of one page (see the module docstring)."""
    keys, now = Keys.of(settings), time.time()
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.window(page_id, psid))
    pipe.get(keys.window_closed(page_id, psid))
    pipe.get(keys.suppressed(page_id, psid))
    pipe.ttl(keys.suppressed(page_id, psid))
    pipe.get(keys.tag_suppressed(page_id, psid))
    pipe.get(keys.external(page_id, psid))
    pipe.zcard(keys.park(page_id, psid))
    pipe.zrange(keys.park(page_id, psid), 0, PARKED_SHOWN - 1, withscores=True)
    until, closed_at, supp, supp_ttl, supp_tag, external, parked, parked_ids = await pipe.execute()
    closed = window_closed(
        None if until is None else text(until),
        None if closed_at is None else text(closed_at),
        now,
        settings.window_recheck_seconds,
    )
    return {
        "page_id": page_id,
        "recipient": psid,
        "window": {None: "unknown", True: "closed", False: "open"}[closed],
        "window_until": _number(until),
        "graph_said_closed_at": _number(closed_at),
        "suppressed": None if supp is None else {"reason": text(supp), "for_s": max(0, int(supp_ttl))},
        "tagged_sends_suppressed": supp_tag is not None,
        "braze_external_id": None if external is None else text(external),
        "parked_count": int(parked),
        "parked_deliveries": [{"delivery_id": text(m), "accepted_at": float(s)} for m, s in parked_ids],
    }

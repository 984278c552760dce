"""``message_template_status_update`` webhook events: Meta telling a page that one of its
templates was approved, rejected, paused, disabled ...

They arrive on the Messenger webhook (the app must subscribe the ``message_template_status_update``
field) as ``changes``, not ``messaging``::

    {"object": "page", "entry": [{"id": "<PAGE_ID>", "time": 1767225600,
      "changes": [{"field": "message_template_status_update",
                   "value": {"event": "PAUSED", "message_template_id": 123,
                             "message_template_name": "order_update",
                             "message_template_language": "en_US", "reason": "..."}}]}]}

(field names as in the WhatsApp webhook reference, which shares Meta's template system).
:func:`parse_status_events` reads them (pure, never raises); the intake queues them with the
inbound events as dicts of kind :data:`TEMPLATE_STATUS`; the inbound task hands them to
:func:`apply_status_events`, which sets the template's status in the page's catalogue. A
template the catalogue does not hold is inserted with that status (an APPROVED event before the
first sync counts). Applying an event twice changes nothing more; an event older than what the
catalogue learned since (a sync, a later event; by a second or more: events carry whole seconds)
is ignored.

``REINSTATED`` is stored as APPROVED; events that are not statuses (``FLAGGED``, ``LOCKED``,
``UNARCHIVED``, quality and category changes) are logged and left to the next sync. An event
that sets APPROVED (``APPROVED``, ``REINSTATED``) also releases the messages waiting on that
template since Meta paused it (:mod:`worker.templates.waits`), whatever status the catalogue
held before; a second one finds none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics
from worker.logging import get_logger
from worker.store import Keys
from worker.templates.catalogue import APPROVED, STATUSES, TemplateInfo, field_name
from worker.templates.waits import release_template

log = get_logger("worker.templates")

#: ``kind`` of a template status event among the inbound events (worker/delivery/inbound.py).
TEMPLATE_STATUS: Final = "template_status"
FIELD: Final = "message_template_status_update"
#: Events whose meaning is a status of its own.
_EVENT_STATUS: Final[Mapping[str, str]] = {"REINSTATED": APPROVED}
_MAX: Final = 512
_WATCH_RETRIES: Final = 10
#: An event's time is whole seconds: one stamped in the second a sync read Graph is not older.
_TIME_GRAIN: Final = 1.0


@dataclass(frozen=True, slots=True)
class StatusEvent:
    page_id: str
    event: str
    name: str
    language: str
    template_id: str | None = None
    reason: str | None = None
    timestamp: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as the ``worker.inbound`` task's JSON argument."""
        return {"kind": TEMPLATE_STATUS, **asdict(self)}


def _text(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value[:_MAX] if isinstance(value, str) and value else None


def _seconds(value: object) -> float | None:
    """An entry's ``time``: seconds, or milliseconds as Messenger sends them."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value) / 1000.0 if value > 100_000_000_000 else float(value)


def _event(page: str, value: object, at: float | None) -> StatusEvent | None:
    if not isinstance(value, dict):
        return None
    raw_event = value.get("event")
    event = _text(raw_event) if isinstance(raw_event, str) else None
    name = _text(value.get("message_template_name"))
    language = _text(value.get("message_template_language"))
    if event is None or name is None or language is None:
        return None
    reason = _text(value.get("reason"))
    return StatusEvent(
        page_id=page,
        event=event.upper(),
        name=name,
        language=language,
        template_id=_text(value.get("message_template_id")),
        reason=None if reason == "NONE" else reason,
        timestamp=at,
    )


def parse_status_events(payload: object) -> list[StatusEvent]:
    """Every template status event of a webhook body (already JSON-decoded); never raises."""
    if not isinstance(payload, dict) or payload.get("object") != "page":
        return []
    entries = payload.get("entry")
    out: list[StatusEvent] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            continue
        page = _text(entry.get("id"))
        if page is None:
            continue
        at = _seconds(entry.get("time"))
        for change in entry["changes"]:
            if isinstance(change, dict) and change.get("field") == FIELD:
                event = _event(page, change.get("value"), at)
                if event is not None:
                    out.append(event)
    return out


def _from_dict(value: Mapping[str, Any]) -> StatusEvent | None:
    """An event back from the task's argument (None if it is not a well-formed one)."""
    page, event = _text(value.get("page_id")), _text(value.get("event"))
    name, language = _text(value.get("name")), _text(value.get("language"))
    if page is None or event is None or name is None or language is None:
        return None
    return StatusEvent(
        page, event, name, language, _text(value.get("template_id")), _text(value.get("reason")),
        _seconds(value.get("timestamp")),
    )  # fmt: skip


async def _apply(client: aioredis.Redis, keys: Keys, e: StatusEvent, status: str, now: float) -> bool:
    """Set one template's status (optimistic: WATCH the page's hash). True if it was written."""
    key, hash_field = keys.templates(e.page_id), field_name(e.name, e.language)
    at = min(e.timestamp, now) if e.timestamp is not None else now
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(_WATCH_RETRIES):
            try:
                await pipe.watch(key)
                raw = await pipe.hget(key, hash_field)  # type: ignore[misc]  # watching: executes at once
                current = TemplateInfo.from_json(raw) if raw is not None else None
                if current is not None and current.updated_at >= at + _TIME_GRAIN:
                    await pipe.reset()  # type: ignore[no-untyped-call]  # redis-py's stubs
                    return False  # the catalogue learned something newer since
                if current is None:
                    new = TemplateInfo(
                        e.name, e.language, status, reason=e.reason, template_id=e.template_id, updated_at=at
                    )
                else:
                    new = current.with_status(status, e.reason, max(at, current.updated_at))
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py's stubs
                pipe.hset(key, mapping={hash_field: new.to_json()})
                await pipe.execute()
            except redis.exceptions.WatchError:
                continue  # a sync or another event wrote the page meanwhile: read again
            log.info(
                "templates.status_changed",
                page_id=e.page_id,
                template=e.name,
                language=e.language,
                status=status,
                previous=current.status if current is not None else None,
                reason=e.reason,
            )
            return True
    log.warning("templates.status_contended", page_id=e.page_id, template=e.name, language=e.language)
    return False


async def apply_status_events(client: aioredis.Redis, keys: Keys, events: list[dict[str, Any]]) -> int:
    """Apply template status events (dicts of :meth:`StatusEvent.as_dict`) to the catalogue;
    returns how many changed it."""
    now = time.time()
    applied = 0
    for raw in events:
        e = _from_dict(raw)
        if e is None:
            continue
        status = _EVENT_STATUS.get(e.event, e.event)
        if status not in STATUSES:
            metrics.TEMPLATE_EVENTS.labels("ignored").inc()
            log.info("templates.event_ignored", page_id=e.page_id, template=e.name, webhook_event=e.event)
            continue
        if await _apply(client, keys, e, status, now):
            applied += 1
            metrics.TEMPLATE_EVENTS.labels(status.lower()).inc()
            if status == APPROVED:  # approved again: its waiting messages go now (waits.py)
                await release_template(client, keys, e.page_id, e.name, e.language)
    return applied

"""Messages waiting on a utility template Meta paused, or one pending approval, released once it
is approved.

A message whose template is paused (Graph's 132015, or the catalogue saying so before the call),
with no other route left, waits TEMPLATE_PAUSE_RETRY_SECONDS (worker/delivery/policy.py); one
whose template the catalogue holds pending waits a minute, again and again. The
recorder indexes it per page and template, ``Keys.template_waits(page, "{name}|{language}")``
(the catalogue's name of the template, :func:`~worker.templates.catalogue.field_name`), as it
indexes the waits of a paused page. When the catalogue holds that template APPROVED again, the
waits are released at once (:func:`worker.store.pages.release_waits`, as a page's resume
releases its own): by a status event (``REINSTATED`` or ``APPROVED``,
:func:`worker.templates.events.apply_status_events`) and by a sync that reads it APPROVED
(:func:`worker.templates.sync.sync_page`), whatever status the catalogue held before: the
index is the evidence that the template was paused for these messages, even when the catalogue
never saw the pause (a Graph answer between two syncs, an event lost). A delivery claimed since
is left alone; a second release finds the index empty. A template paused again before the send
costs one round: the send is refused again and waits again, indexed again.

Logged ``templates.waits_released`` (page, template, language, how many) when it released any.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from worker.logging import get_logger
from worker.store import Keys
from worker.store.pages import release_waits
from worker.templates.catalogue import APPROVED, TemplateInfo, field_name

log = get_logger("worker.templates")


async def release_template(client: aioredis.Redis, keys: Keys, page_id: str, name: str, language: str) -> int:
    """Make due now the deliveries waiting on the page's template ``name`` in ``language``
    (the catalogue holds it approved: the caller knows). Returns how many."""
    index = keys.template_waits(page_id, field_name(name, language))
    released = await release_waits(client, keys, index, page_id)
    if released:
        log.info(
            "templates.waits_released", page_id=page_id, template=name, language=language, released=released
        )
    return released


async def release_approved(
    client: aioredis.Redis, keys: Keys, page_id: str, templates: Iterable[TemplateInfo]
) -> int:
    """:func:`release_template` for each of ``templates`` (the page's catalogue as just written)
    that is APPROVED and has deliveries waiting on it: one round trip to find them (EXISTS each),
    then one release each. Returns how many were released in all."""
    approved = [t for t in templates if t.status == APPROVED]
    if not approved:
        return 0
    pipe = client.pipeline(transaction=False)
    for t in approved:
        pipe.exists(keys.template_waits(page_id, t.hash_field))
    waited = [t for t, found in zip(approved, await pipe.execute(), strict=True) if found]
    released = 0
    for t in waited:
        released += await release_template(client, keys, page_id, t.name, t.language)
    return released

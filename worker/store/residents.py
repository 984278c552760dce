"""Which pages a shard holds state for: what stays behind when a page's shard changes.

A page lives in one shard (:mod:`worker.store.shards`), and much of what it keeps there is not
its deliveries: its recipients' 24-hour windows and suppressions, the Braze links learned from
signed refs (kept 400 days), its pause, its limiter, its parked and waiting messages. Appending
a shard to REDIS_SHARDS re-routes the pages the new shard wins (rendezvous hashing); their new
traffic would then start on the new shard without any of that: a paused page sending again, a
recipient who blocked the page messaged again, windows forgotten, a retry of an accepted request
not recognised as one. ``messenger-worker shards plan`` pins such pages where they are before the
list changes, ``shards check`` finds a page whose state sits on a shard that no longer holds it
(docs/scaling.md: Changing the shard list), and ``shards move`` (:mod:`worker.store.pagemove`)
takes a page's state along to another shard.

This module reads one shard: :func:`scan` walks its keys once (``SCAN`` with ``MATCH
{prefix}:*``, ``batch`` names a round trip: the whole keyspace, so an operator's command, never a
request's or a tick's) and names the pages in the keys that carry one (:func:`page_of_key`), the
pages of its delivery records (``HMGET`` of their page, ``batch`` at a time), and the pages that
sent within the last day (``{prefix}:rl:used``: their recent requests' Idempotency-Keys are
there, in buckets that name no page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from worker.states import State
from worker.store import records
from worker.store.keys import Keys, text

#: The key families named by a page (``{prefix}:{family}:{page}...``; worker/store/keys.py) and
#: the kind of state each is, as the commands report it. Not the template catalogue
#: (``{prefix}:tpl:{page}``): a copy of Graph's, which the new shard's workers read again.
FAMILIES: Final[dict[str, str]] = {
    "wu": "recipients",  # window open until
    "win": "recipients",  # the same before routes (left to expire)
    "wcl": "recipients",  # window last said closed
    "supp": "suppressions",
    "supptag": "suppressions",
    "ext": "links",  # Braze external ids from signed m.me refs
    "park": State.PARKED.value,  # messages parked for a recipient outside the window
    "pwait": "waiting",  # deliveries waiting for their page
    "twait": "waiting",  # deliveries waiting on one of its utility templates Meta paused
    "pause": "pause",
    "mid": "webhooks",  # inbound message ids already recorded
    "unread": "receipts",  # before the unread buckets: one zset per recipient
}
#: ``{prefix}:rl:{name}`` names that are not a page's.
_SHARED: Final = frozenset({"usage", "used"})
#: ``{prefix}:tpl:{name}`` names that are not a page's.
_SHARED_TPL: Final = frozenset({"synced", "lock"})
#: The families of one key per page, ``{prefix}:{family}:{page}``.
_ONE_KEY: Final = frozenset({"pause", "pwait", "tpl"})
#: A delivery record: ``{prefix}:d:{id}``.
DELIVERIES: Final = "deliveries"
#: A dead letter's record: it stays on the shard it died on, and a replay moves it to its page's
#: shard (worker/store/deadletters.py), so it strands nothing.
DEAD_LETTERS: Final = "dead letters"
#: A page in ``{prefix}:rl:used``: it sent within the last day.
SENT: Final = "recent sends"


def family_of_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(family, page) of a key named by a page: a family of :data:`FAMILIES`, ``tpl`` (its
    template catalogue), ``rl`` (its limiter buckets) or ``rl:r`` (its recipients'); None for a
    key of the shard's shared layout, a delivery's, or not the service's."""
    head = f"{prefix}:"
    if not key.startswith(head):
        return None
    parts = key[len(head) :].split(":")
    family = parts[0]
    if family == "rl":  # {prefix}:rl:{page}:{class}, {prefix}:rl:r:{page}:{psid}
        if len(parts) == 4 and parts[1] == "r":
            return "rl:r", parts[2]
        if len(parts) == 3 and parts[1] not in _SHARED:
            return "rl", parts[1]
        return None
    if (family not in FAMILIES and family != "tpl") or len(parts) < 2 or not parts[1]:
        return None
    if family in _ONE_KEY:  # {prefix}:{family}:{page}
        return (family, parts[1]) if len(parts) == 2 and parts[1] not in _SHARED_TPL else None
    return (family, parts[1]) if len(parts) >= 3 else None


def page_of_key(prefix: str, key: str) -> tuple[str, str] | None:
    """(page, kind) of a key named by a page, or None (a key of the shard's shared layout, a
    delivery's, the template catalogue's, or not the service's)."""
    found = family_of_key(prefix, key)
    if found is None or found[0] == "tpl":
        return None
    family, page = found
    return page, "limiter" if family in ("rl", "rl:r") else FAMILIES[family]


@dataclass(slots=True)
class Residents:
    """One shard's pages and the kinds of state each has there; ``keys``: the names scanned."""

    pages: dict[str, set[str]] = field(default_factory=dict)
    keys: int = 0

    def note(self, page: str, kind: str) -> None:
        self.pages.setdefault(page, set()).add(kind)


async def scan(client: Any, keys: Keys, *, batch: int = 1000) -> Residents:
    """The pages ``client``'s shard holds state for (the module's docstring)."""
    out = Residents()
    delivery_head = keys.delivery("")
    pending: list[str] = []
    async for raw in client.scan_iter(match=f"{keys.prefix}:*", count=batch):
        name = text(raw)
        out.keys += 1
        if name.startswith(delivery_head) and ":" not in name[len(delivery_head) :]:
            pending.append(name)
            if len(pending) >= batch:
                await _record_pages(client, pending, out)
                pending = []
        elif (found := page_of_key(keys.prefix, name)) is not None:
            out.note(*found)
    if pending:
        await _record_pages(client, pending, out)
    # pages that sent within the last day (P:rl:used, pruned after one): the Idempotency-Keys of
    # their requests live in buckets that name no page, for IDEMPOTENCY_TTL (a day by default)
    for member in await client.zrange(keys.buckets, 0, -1):
        if page := keys.page_of_used(text(member)):
            out.note(page, SENT)
    return out


async def _record_pages(client: Any, names: list[str], out: Residents) -> None:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(name, ["page_id", records.PACKED_FIELD, "status"])
    for page_id, packed, status in await pipe.execute():
        page = records.page_of(page_id, packed)
        if page:  # None: gone since the scan named it
            out.note(page, DEAD_LETTERS if status is not None and text(status) == State.DEAD else DELIVERIES)

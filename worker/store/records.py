"""The delivery record (``P:d:{id}``, a Redis hash while it is open): its fields, how they
decode, what the status API shows, and what a final record keeps.

Fields, by who writes them::

    accept (intake)   status, created_at, and ``in``: what the intake read of the request, one
                      MessagePack value (:data:`PACKED`: page_id, psid, body (JSON), caller (the
                      sending intake token's public id: who may read it), and when it has them
                      request_id (the caller's X-Request-Id), fallbacks (JSON list of routes:
                      worker/delivery/routes.py), utility (JSON)); external_id when it has one.
                      A missing attempts is 0 and updated_at is created_at
    claim             status (in_flight), previous (the status it was claimed from), claim (the
                      fence token), lease_until
    record (engine)   status, updated_at, attempts, failures, routes_tried (JSON), active_route,
                      slot_at, not_before, message_id, sent_at, delivered_via, delivered_tag, error (JSON),
                      done (the last claim whose outcome was written), parked_at
    replay            first_created_at, replays
    accept (intake)   also campaign_id, canvas_id, canvas_step_id, variation_id, send_id (those given)
    cancel            cancel (1: cancel it when its worker writes its next outcome)
    receipts          delivered_at, read_at (Messenger's delivery and read webhooks)

A dead letter keeps its hash, everything in it (it can be replayed), with no expiry
(``DEAD_LETTER_RETENTION``). Any other final delivery leaves its hash for an *outcome*
(:mod:`worker.store.outcomes`): status, page_id, times, attempts, failures, request_id,
message_id, sent_at, delivered_via, delivered_tag, error, done, first_created_at, replays, caller,
the attribution fields, delivered_at, read_at, as one short value. Not the body, the PSID, the
working fields, or the Braze user (kept on a sent one only while BRAZE_RECEIPT_EVENTS needs it
for its receipts). No record ever holds a page token. Read a record, open or final, with
:func:`worker.store.outcomes.read`.

**Why one packed value** (``in``, :func:`pack_intake`): nothing changes those fields after the
accept and no script decides by them, yet as fields each cost Redis its work five times over (an
argument into Lua and back out, a listpack insert with its realloc, an entry in the AOF, a field
scanned past by every HMGET, an entry in the claimed record's reply): about 10% of its
instructions per delivery (docs/benchmarks.md). :func:`decode` gives them back as fields, so a
reader sees one record, whichever way it was written; Lua reads them with ``record_expand``
(_outcome.lua). A record written before (its fields one by one) reads the same: an upgrade needs
nothing, a rollback first turns packed records back into fields (``messenger-worker
unpack-records``, README).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgpack
import orjson

from worker.states import State

#: Attribution (the Braze webhook's X-Braze-* headers): stored on the record, kept in its
#: outcome, shown by the status API and written on every outcome line. A delivery belongs to
#: its campaign, or to its Canvas when it has no campaign id (:func:`owner`).
ATTRIBUTION: Final = ("campaign_id", "canvas_id", "canvas_step_id", "variation_id", "send_id")


#: The field that holds what the intake read of the request (:func:`pack_intake`), and the fields
#: it holds, in order.
PACKED_FIELD: Final = "in"
PACKED: Final = ("page_id", "psid", "body", "caller", "request_id", "fallbacks", "utility")


def pack_intake(values: Sequence[bytes | str]) -> bytes:
    """The ``in`` value: :data:`PACKED`'s values in order as a MessagePack array ('' for one the
    request has not, trailing ones cut); strings in MessagePack's str family, as Lua's cmsgpack
    reads and writes them."""
    last = len(values)
    while last and not values[last - 1]:
        last -= 1
    packed: bytes = msgpack.packb(list(values[:last]), use_bin_type=False)
    return packed


def _unpack_intake(raw: bytes | str) -> list[Any]:
    """:func:`pack_intake`'s values back (trailing empty ones cut)."""
    values: list[Any] = msgpack.unpackb(raw if isinstance(raw, bytes) else raw.encode(), raw=True)
    return values


def _expand(rec: dict[str, str], raw: Any) -> None:
    for name, value in zip(PACKED, _unpack_intake(raw), strict=False):
        if value and name not in rec:
            rec[name] = _s(value)


def page_of(page_id: Any, packed: Any) -> str | None:
    """A record's page from ``HMGET page_id in`` (None: no such record)."""
    if page_id is not None:
        return _s(page_id)
    if packed is None:
        return None
    values = _unpack_intake(packed)
    return _s(values[0]) if values else ""


def owner(rec: dict[str, str]) -> str:
    """The campaign a record counts towards: its campaign id, else its Canvas id ("" = none)."""
    return rec.get("campaign_id") or rec.get("canvas_id") or ""


async def read_claimed(client: Any, delivery_prefix: str, ids: Sequence[str]) -> list[dict[str, str]]:
    """The records of the deliveries a claim took, in one pipeline ({} for one that is gone).
    claim.lua returns only the ids it claimed: a record read in Lua is parsed into Lua strings and
    packed again for the reply, about a third of the claim's Redis instructions
    (docs/benchmarks.md); read here, Redis sends it once. Nothing but the claim's holder writes
    a claimed record, so what is read after the claim is what the claim left."""
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for delivery_id in ids:
        pipe.hgetall(delivery_prefix + delivery_id)
    return [decode(raw) for raw in await pipe.execute()]


async def unpack_all(client: Any, keys: Any, *, batch: int = 500) -> int:
    """Every record whose intake part is packed written back as fields (``unpack_records.lua``),
    for a rollback past the version that packs; returns how many. SCANs ``P:d:*`` once:
    bounded by the records there are, each unpacked atomically; safe to run twice."""
    from worker.store import scripts  # scripts imports this module

    done, found = 0, []
    async for key in client.scan_iter(match=keys.delivery_prefix + "*", count=1000):
        found.append(key)
        if len(found) >= batch:
            done += int(await scripts.run(client, "unpack_records", keys=found))
            found = []
    if found:
        done += int(await scripts.run(client, "unpack_records", keys=found))
    return done


def decode(raw: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """HGETALL as a flat list (from Lua) or a dict (from redis-py) -> a str dict."""
    if isinstance(raw, dict):
        items: Iterable[tuple[Any, Any]] = raw.items()
    else:
        items = zip(raw[0::2], raw[1::2], strict=True)
    rec, packed = {}, None
    for k, v in items:
        name = _s(k)
        if name == PACKED_FIELD:
            packed = v
        else:
            rec[name] = _s(v)
    if packed is not None:
        _expand(rec, packed)
    return rec


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def number(rec: dict[str, str], name: str) -> float:
    value = rec.get(name)
    return float(value) if value else 0.0


def error_fields(
    reason: str | None,
    code: int | None = None,
    subcode: int | None = None,
    message: str | None = None,
    fbtrace_id: str | None = None,
) -> bytes:
    """The ``error`` field: why the last attempt did not send (a Graph error or our reason)."""
    return orjson.dumps(
        {
            "reason": reason,
            "code": code,
            "subcode": subcode,
            "message": message if message is not None else reason,
            "fbtrace_id": fbtrace_id,
        }
    )


def public_view(delivery_id: str, rec: dict[str, str]) -> dict[str, Any]:
    """The status API's view of a record: never the token, the body or the raw PSID."""
    status = rec.get("status", "")
    view: dict[str, Any] = {
        "delivery_id": delivery_id,
        "status": status,
        "attempts": int(rec.get("attempts", "0") or 0),
        "page_id": rec.get("page_id"),
        "created_at": number(rec, "created_at"),
        "updated_at": number(rec, "updated_at") or number(rec, "created_at"),
    }
    if rec.get("message_id"):
        view["message_id"] = rec["message_id"]
    if rec.get("sent_at"):
        view["sent_at"] = number(rec, "sent_at")
    if rec.get("error"):
        view["error"] = orjson.loads(rec["error"])
    if rec.get("delivered_via"):
        view["delivered_via"] = rec["delivered_via"]
    if rec.get("delivered_tag"):
        view["delivered_tag"] = rec["delivered_tag"]
    if rec.get("first_created_at"):
        view["first_created_at"] = number(rec, "first_created_at")
        view["replays"] = int(rec.get("replays", "0") or 0)
    for name in ATTRIBUTION:
        if rec.get(name):
            view[name] = rec[name]
    for name in ("delivered_at", "read_at"):
        if rec.get(name):
            view[name] = number(rec, name)
    if status in (State.RETRYING, State.SCHEDULED) and rec.get("not_before"):
        view["next_attempt_at"] = number(rec, "not_before")
    return view

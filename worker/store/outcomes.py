"""Final records ("outcomes"): what a delivery keeps once it is sent, failed, expired or cancelled.

An open delivery is a hash, ``P:d:{id}`` (:mod:`worker.store.records`). When it ends (any final
status but ``dead``: a dead letter keeps its hash, body included, to be replayed), the script
that ends it deletes that hash and writes one short value instead: the :data:`FIELDS` below in
their order, as a MessagePack array ('' for a field it does not have, trailing ones cut): strings,
but the :data:`TIMES` as numbers (a double is 9 bytes where its text is 19 with its quotes; the
number reads back as the same text, ``repr`` of the same double). The value is the field of
the id's 16 raw bytes (:func:`field`: half its hex) in a bucket hash::

    P:o:{hour}:{suffix}   hour = the epoch hour the delivery ended in (⌊t / 3600⌋),
                          suffix = the delivery id's last SUFFIX characters (65,536 buckets an
                          hour: about 55 outcomes each at 1,000 deliveries/s)

Written before (an upgrade): the field was the id's hex. ``P:o:meta``'s ``raw`` is the hour raw
fields first ran on the shard (set by the first script call that stores an outcome); a reader
that does not find the raw field in the bucket of that hour or an earlier one asks for the hex
field there too (in Python in the second round trip, :func:`read`).

A bucket expires as a whole, RECORD_RETENTION after its hour ends, so an outcome is kept at
least RECORD_RETENTION and at most an hour more (the expiry is given once per bucket by the
workers' seal pass when the hour is over, not by each write: :mod:`worker.store.seals`). Why
buckets: a key of its own costs Redis about 100 bytes before its value (the key, its object, its main-table and expiry-table entries), and a
hash's field names are repeated in every record. In a bucket of up to ``hash-max-listpack-entries``
(128 by default) outcomes Redis keeps them as one listpack: an outcome costs its id and value
plus a few bytes. Above about 2,300 deliveries/s per shard the buckets pass 128 entries and Redis
holds them as hashtables (about 60 bytes more per outcome); raise ``hash-max-listpack-entries``
there (docs/scaling.md).

Nothing stores where an outcome went: a reader looks for it in the buckets of the hours it may
have ended in, newest first (:func:`hours`: the retention's hours plus the next, for clocks a
little ahead), after the open hash: one pipeline with the newest FIRST_HOURS, a second with
the rest (23 ``HGET``\\s more with the default retention of a day) only when it is not there.
Receipts (``receipts.lua``) and a fenced write sent again (``record.lua``) look the same way in
Lua (``store/lua/_outcome.lua``), newest first, stopping at the first found.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Sequence
from typing import Any, Final

import msgpack
import orjson

from worker.store import ids, records
from worker.store.keys import Keys

#: The fields an outcome keeps, in the order they are stored. What a final record keeps and
#: nothing else: never the body, the PSID, the token or the working fields. ``external_id`` only
#: on a sent delivery while BRAZE_RECEIPT_EVENTS needs it, until its read receipt; ``done`` as
#: a digest of the claim token (:data:`DONE`).
FIELDS: Final = (
    "status",
    "page_id",
    "created_at",
    "updated_at",
    "attempts",
    "caller",
    "request_id",
    "done",
    "message_id",
    "sent_at",
    "delivered_via",
    "delivered_at",
    "read_at",
    "error",
    "failures",
    "delivered_tag",
    "external_id",
    *records.ATTRIBUTION,
    "first_created_at",
    "replays",
)
#: The fields that are times (epoch seconds): stored as numbers.
TIMES: Final = frozenset(
    {"created_at", "updated_at", "sent_at", "delivered_at", "read_at", "first_created_at"}
)
#: Counters whose 0 is stored as absent (a reader's default): a delivery sent at its first try
#: keeps no ``failures``, and the four empty fields before it are cut with it.
ZERO_ABSENT: Final = frozenset({"failures"})
#: An outcome's ``done`` is this many hex characters of the SHA-1 of the claim token it ended
#: under (:func:`done_digest`): it recognises a record call sent again. Stored as DONE / 2 raw
#: bytes (7 bytes of MessagePack where the hex took 13; readers get the hex back).
DONE: Final = 12
_DONE_HEX: Final = re.compile(f"[0-9a-f]{{{DONE}}}")
#: Seconds per bucket generation (an hour).
SPAN: Final = 3600
#: The id's last characters that pick the bucket within an hour (16**4 buckets of hex ids).
SUFFIX: Final = 4


def _text(name: str, value: Any) -> str:
    """A stored value as the open hash had it: a time number as the text it was written from,
    ``done``'s raw bytes as their hex."""
    if isinstance(value, bytes):
        if name == "done" and len(value) == DONE // 2:
            return value.hex()
        return value.decode("utf-8", "replace")
    return repr(value) if isinstance(value, float) else str(value)


def _time(value: str) -> float | int | str:
    """A time's text -> the number that reads back as the same text (else the text, kept)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if repr(number) == value:
        return number
    return int(value) if value.isdigit() and str(int(value)) == value else value


def _stored(name: str, value: str) -> Any:
    """A field's value as an outcome stores it: '' for none (and for a 0 of ZERO_ABSENT), a time
    as a number, anything else as it is."""
    if name in ZERO_ABSENT and value == "0":
        return ""
    if name == "done" and _DONE_HEX.fullmatch(value):
        return bytes.fromhex(value)
    return _time(value) if name in TIMES and value else value


def unpack(raw: bytes | str) -> dict[str, str]:
    """An outcome's stored value -> the record fields it holds (as the open hash would give them).
    A value written before MessagePack (a JSON array of strings, starting with ``[``) reads too."""
    data = raw.encode() if isinstance(raw, str) else raw
    values = orjson.loads(data) if data[:1] == b"[" else msgpack.unpackb(data, raw=True)
    return {name: _text(name, v) for name, v in zip(FIELDS, values, strict=False) if v not in ("", b"")}


def pack(rec: dict[str, str]) -> bytes:
    """The stored value of an outcome (as the Lua scripts write it: the worker packs what
    record.lua stores, and tests and tools use it)."""
    values = [_stored(name, rec.get(name, "")) for name in FIELDS]
    while values and values[-1] == "":
        values.pop()
    # bytes as MessagePack's str family, as Lua's cmsgpack writes every string (a receipt
    # repacks an outcome): one encoding, read back by unpack whichever wrote it
    packed: bytes = msgpack.packb(values, use_bin_type=False)
    return packed


def done_digest(token: str) -> str:
    """What an outcome keeps of the claim token it ended under (``redis.sha1hex`` in Lua)."""
    return hashlib.sha1(token.encode(), usedforsecurity=False).hexdigest()[:DONE]


def hours(now: float, retention: int) -> range:
    """The bucket hours an outcome readable at ``now`` may be in, newest first."""
    return range(math.floor(now / SPAN) + 1, math.floor((now - retention) / SPAN) - 1, -1)


def bucket(keys: Keys, hour: int, delivery_id: str) -> str:
    return keys.outcome(hour, delivery_id[-SUFFIX:])


def field(delivery_id: str) -> bytes:
    """An outcome's field in its bucket: the id's 16 raw bytes (``_outcome.lua`` writes the same;
    a test's id that is not 32 lowercase hex characters as its text)."""
    return ids.raw(delivery_id)


#: Hours a single read looks in first (the open hash and the newest buckets); the older ones
#: only when it is not there. Most reads by id are of recent deliveries.
FIRST_HOURS: Final = 3


def _queue(pipe: Any, keys: Keys, delivery_id: str, wanted: Sequence[int], *, open_hash: bool = True) -> None:
    if open_hash:
        pipe.hgetall(keys.delivery(delivery_id))
    for hour in wanted:
        pipe.hget(bucket(keys, hour, delivery_id), field(delivery_id))


def _hex_hours(raw_since: Any, wanted: Sequence[int], delivery_id: str) -> list[int]:
    """The hours whose buckets may hold this id's outcome under its hex field, as written before
    raw fields: up to the hour they first ran on the shard (``raw`` in P:o:meta; every hour
    when that is not set yet)."""
    if field(delivery_id) == delivery_id.encode():
        return []
    since = None if raw_since is None else int(raw_since)
    return [hour for hour in wanted if since is None or hour <= since]


def _queue_hex(pipe: Any, keys: Keys, delivery_id: str, wanted: Sequence[int]) -> None:
    for hour in wanted:
        pipe.hget(bucket(keys, hour, delivery_id), delivery_id)


def _first(results: list[Any]) -> dict[str, str]:
    if results[0]:
        return records.decode(results[0])
    for raw in results[1:]:
        if raw is not None:
            return unpack(raw)
    return {}


async def read(
    client: Any, keys: Keys, delivery_id: str, retention: int, now: float | None = None
) -> dict[str, str]:
    """A delivery's record, open (its hash) or final (its outcome); {} when unknown or expired.
    One round trip for a delivery that is open or ended in the newest FIRST_HOURS hours, a second
    for an older one (or none; or one stored before raw fields, while one may live)."""
    wanted = list(hours(time.time() if now is None else now, retention))
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.outcome_meta, "raw")
    _queue(pipe, keys, delivery_id, wanted[:FIRST_HOURS])
    raw_since, *results = await pipe.execute()
    found = _first(results)
    hex_hours = _hex_hours(raw_since, wanted, delivery_id)
    if found or (len(wanted) <= FIRST_HOURS and not hex_hours):
        return found
    pipe = client.pipeline(transaction=False)
    _queue(pipe, keys, delivery_id, wanted[FIRST_HOURS:], open_hash=False)
    _queue_hex(pipe, keys, delivery_id, hex_hours)
    return _first([None, *await pipe.execute()])


def read_sync(
    client: Any, keys: Keys, delivery_id: str, retention: int, now: float | None = None
) -> dict[str, str]:
    """:func:`read` for a synchronous client (the CLI, tests)."""
    return read_many_sync(client, keys, [delivery_id], retention, now)[delivery_id]


def read_many_sync(
    client: Any, keys: Keys, delivery_ids: list[str], retention: int, now: float | None = None
) -> dict[str, dict[str, str]]:
    """:func:`read_sync` for many ids in one round trip (a second for those not found while
    outcomes stored before raw fields may live)."""
    wanted = list(hours(time.time() if now is None else now, retention))
    per = 1 + len(wanted)
    pipe = client.pipeline(transaction=False)
    pipe.hget(keys.outcome_meta, "raw")
    for delivery_id in delivery_ids:
        _queue(pipe, keys, delivery_id, wanted)
    raw_since, *results = pipe.execute()
    found = {d: _first(results[j * per : (j + 1) * per]) for j, d in enumerate(delivery_ids)}
    missing = {d: _hex_hours(raw_since, wanted, d) for d, rec in found.items() if not rec}
    missing = {d: hex_hours for d, hex_hours in missing.items() if hex_hours}
    if missing:
        pipe = client.pipeline(transaction=False)
        for delivery_id, hex_hours in missing.items():
            _queue_hex(pipe, keys, delivery_id, hex_hours)
        results, at = pipe.execute(), 0
        for delivery_id, hex_hours in missing.items():
            found[delivery_id] = _first([None, *results[at : at + len(hex_hours)]])
            at += len(hex_hours)
    return found

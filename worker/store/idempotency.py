"""Idempotency keys: where a request's key is remembered, and for how long.

A request's Idempotency-Key is scoped by the intake to its caller and page (``caller:page:key``:
one caller cannot learn another's delivery ids by guessing keys). What Redis keeps of it is a
digest (:func:`digest`): its first :data:`SUFFIX` hex characters pick a bucket, the next
:data:`FIELD` are the field in it as raw bytes (8), and the value is the delivery id as its 16
raw bytes (the 32 hex characters halved; a value written before this is the hex id, and is still
read)::

    P:i:{window}:{suffix}   hash    digest field (raw) -> delivery id (raw); window = ⌊Redis time
                                    / IDEMPOTENCY_TTL⌋; expires at the end of the next window
                                    (given by the seal pass once its window is over:
                                    worker/store/seals.py)

``accept.lua`` writes a key into the current window's bucket unless it is there (``HSETNX``:
one command for a new key), then looks in the previous window's, and takes it back when it is
found there. So a key is remembered at least IDEMPOTENCY_TTL and at most twice that
(one and a half times on average), and a repeat within IDEMPOTENCY_TTL is always answered with
the first delivery's id. The window comes from the Redis server's clock (``TIME``), one clock per
shard, so intakes whose clocks differ cannot miss each other's keys at a window's edge. The
windows are numbered by IDEMPOTENCY_TTL. ``P:i:meta`` keeps the TTL they are numbered by; after a
change, the windows of the TTL before are read too, for as long as their buckets live (two of its
TTLs), so a retry that straddles the change is still a repeat.

Why buckets: a key of its own (``P:idem:{key}``, as before) costs about 220 bytes for a day,
the string and its dictionary and expiry entries; in a bucket a remembered key is its 8-byte
field, the id's 16 bytes and a few bytes of listpack (step 8 of the benchmarks measures it: 38
bytes with the field in hex, 63 with the id in hex too). 16**5 buckets a window hold about 80
keys each at a sustained 1,000 requests/s with the default TTL of a day, under
``hash-max-listpack-entries`` (128), so Redis keeps them as small listpacks. Collisions: a field is 64 bits of the digest inside a 20-bit
bucket, so at 1,000 requests/s two different keys share both about once in five billion days;
the keys are scoped per caller, so no caller can aim at another's.

Fields written before raw ones (an upgrade: the digest's hex characters) are read too for two
windows (the longest one may live) after raw fields first ran on the shard (``raw`` in
``P:i:meta``).

Before buckets (an upgrade): ``P:idem:{key}`` strings written by the previous version are still
read for one IDEMPOTENCY_TTL after this layout first ran on the shard (``since`` in ``P:i:meta``,
set once by ``accept.lua``), then no more; they expire on their own.
"""

from __future__ import annotations

import hashlib
from typing import Final

from worker.store import ids
from worker.store.ids import ID_BYTES

#: Hex characters of the digest that pick the bucket within a window (16**5 buckets).
SUFFIX: Final = 5
#: Hex characters of the digest after the suffix that name the key in its bucket (64 bits),
#: stored as FIELD / 2 raw bytes.
FIELD: Final = 16


def scoped(caller: str, page_id: str, key: str) -> str:
    """A request's Idempotency-Key scoped to its caller (the sending token's public id) and page
    ("" when the request has none)."""
    return f"{caller}:{page_id}:{key}" if key else ""


def digest(scoped: str) -> str:
    """What accept.lua gets for a scoped key: the bucket suffix and the field, one string."""
    return hashlib.blake2b(scoped.encode(), digest_size=16).hexdigest()[: SUFFIX + FIELD]


def field(digest_: str) -> bytes:
    """A digest's field in its bucket: the FIELD hex characters after the suffix, as raw bytes."""
    return bytes.fromhex(digest_[SUFFIX:])


def hex_field(digest_: str) -> str:
    """A digest's field as written before raw fields (read for two windows after ``raw``)."""
    return digest_[SUFFIX:]


def entry(scoped: str, delivery_id: str) -> bytes:
    """What accept.lua gets for a request with a key: the digest's bucket suffix (hex) and field
    (:func:`field`, raw), then the value it stores, the delivery id's raw bytes (an id that is
    not 32 lowercase hex characters, as tests may give, as it is: :func:`worker.store.ids.raw`)."""
    digest_ = digest(scoped)
    return digest_[:SUFFIX].encode() + field(digest_) + ids.raw(delivery_id)


def delivery_id(value: bytes) -> str:
    """A remembered key's value -> the delivery id: raw bytes (:func:`entry`), or a hex id as an
    earlier version (or a key of its own, ``P:idem:``) stored it."""
    return value.hex() if len(value) == ID_BYTES else value.decode()


def window(now: float, ttl: int) -> int:
    """The window a key written at ``now`` (Redis time) belongs to."""
    return int(now // ttl)


def bucket(prefix: str, window_: int, digest_: str) -> str:
    """The bucket of a digest in a window (``prefix`` is ``Keys.idem_bucket_prefix``)."""
    return f"{prefix}{window_}:{digest_[:SUFFIX]}"

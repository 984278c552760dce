"""A recipient's sent, unread deliveries: the index Messenger's receipts are applied through.

A delivery receipt names message ids and a watermark, a read receipt a watermark: "everything
sent to this PSID before then". So the receipts need, per recipient, the deliveries sent to it
that are not read yet. They are a field of a bucket (``store/lua/_unread.lua`` reads and writes
them)::

    P:u:{window}:{suffix}   hash    {field} -> its entries, oldest first, one after the other;
                                    window = ⌊sent time / RECORD_RETENTION⌋; suffix: the first
                                    SUFFIX hex characters of the SHA-1 of "{page}:{psid}"; field:
                                    the next FIELD of them as FIELD / 2 raw bytes; expires at the
                                    end of the next window (given by the seal pass once its
                                    window is over: worker/store/seals.py)

An entry (:func:`entry`) is a delivery's id and the hour bucket of its outcome
(:mod:`worker.store.outcomes`), in ENTRY (20) bytes: a byte 0x10, the id's 16 raw bytes, the hour
in 3 bytes, big-endian. (An id that is not 32 lowercase hex characters, as tests give, is kept as
text: a byte 0x80 + its length, then the id.) A receipt reads the outcome in that hour's bucket,
without looking through the hours, and compares the outcome's ``sent_at`` with its watermark.
Binary, without separators, an entry is 20 bytes where its text ``{id},{hour}`` was 39 (plus a
space between two), and the field 8 where its hex was 16: 63 → 38 bytes per unread delivery at
a sustained 1,000 msg/s (step 8 of the benchmarks, buckets of 82; 36 in buckets of Poisson sizes).

Written before (an upgrade), and still read while they may live: a value of text entries,
``{id},{hour}`` or, older, ``{id},{sent_at},{hour}`` (its send time in it), space-separated,
in the field named by the FIELD hex characters themselves (``raw`` in ``P:u:meta`` says when
raw fields first ran on the shard) or, older still, by "{page}:{psid}" (``fields``). A value's
first byte tells its kind: a text entry starts with a printable character, a binary one with
0x10 or 0x80 and above. The receipts look in the
current window's bucket and the previous one's, so an unread delivery is found for at least
RECORD_RETENTION (its outcome's own lifetime) and at most twice that; a read receipt removes what
it marked. The windows are numbered by RECORD_RETENTION: ``P:u:meta`` keeps the one they are
numbered by, and after a change the receipts read the windows of the one before too, while their
buckets live (two of it).

Why buckets: a sorted set of its own per recipient (``P:unread:{page}:{psid}``, as before) costs
about 210 bytes with its expiry entry for a recipient sent one message, and a key created and
expired per send. 16**5 buckets a window hold about 80 recipients each at a sustained 1,000
messages/s to distinct recipients with the default retention of a day, so they stay listpacks.

The field is 64 bits of a digest inside a 20-bit bucket of about 80 recipients, so two
recipients share one about once in 10**14 buckets. For two windows (the longest a field written
before can live) after ``fields`` (digest fields) and ``raw`` (raw ones) first ran on a shard, the
receipts also read the field as it was written before.

Before buckets (an upgrade): the receipts still read and trim the previous version's
``P:unread:`` sets, which expire RECORD_RETENTION after their last send.
"""

from __future__ import annotations

import hashlib
from typing import Final

from worker.store import ids
from worker.store.ids import ID_BYTES

#: Hex characters of the recipient's SHA-1 that pick the bucket within a window (16**5 buckets).
SUFFIX: Final = 5
#: Hex characters of the recipient's SHA-1, after SUFFIX, that name its field (64 bits; stored
#: as FIELD / 2 raw bytes).
FIELD: Final = 16
#: An entry's bytes: the tag, the id's 16 raw bytes, the outcome hour's 3.
ENTRY: Final = 20
#: The first byte of an entry with a raw id (0x10, its length), and the tag a text id's length
#: is added to.
RAW_ID: Final = 0x10
TEXT_ID: Final = 0x80


def _digest(page_id: str, psid: str) -> str:
    return hashlib.sha1(f"{page_id}:{psid}".encode(), usedforsecurity=False).hexdigest()


def bucket(prefix: str, window: int, page_id: str, psid: str) -> str:
    """The bucket of a recipient's field in a window (``prefix`` is ``Keys.unread_bucket_prefix``)."""
    return f"{prefix}{window}:{_digest(page_id, psid)[:SUFFIX]}"


def hex_field(page_id: str, psid: str) -> str:
    """A recipient's field as written before raw fields (before digest fields: "{page}:{psid}")."""
    return _digest(page_id, psid)[SUFFIX : SUFFIX + FIELD]


def field(page_id: str, psid: str) -> bytes:
    """A recipient's field in its bucket: :func:`hex_field`'s 16 characters as 8 raw bytes (what
    :func:`locator` has after the suffix)."""
    return locator(page_id, psid)[SUFFIX:]


def locator(page_id: str, psid: str) -> bytes:
    """Where record.lua files a recipient's entry: its bucket suffix (SUFFIX hex characters) and
    its field (:func:`field`'s raw bytes), one string; built by the worker, where a SHA-1 costs
    no Redis CPU."""
    digest = _digest(page_id, psid)
    return digest[:SUFFIX].encode() + bytes.fromhex(digest[SUFFIX : SUFFIX + FIELD])


def entry(delivery_id: str, hour: int) -> bytes:
    """A delivery's entry (the worker builds it for record.lua, :func:`locator`; the Lua reader
    is _unread.lua's unread_parse): the id as :func:`worker.store.ids.raw` keeps it, after a tag
    that says which it is, then its outcome's hour in 3 bytes."""
    raw = ids.raw(delivery_id)
    if raw != delivery_id.encode():
        tag = RAW_ID
    elif raw and len(raw) < TEXT_ID:
        tag = TEXT_ID + len(raw)
    else:
        raise ValueError("a delivery id of 1 to 127 bytes")
    return bytes([tag]) + raw + hour.to_bytes(3, "big")


def _binary(data: bytes) -> list[tuple[str, int]]:
    out, at = [], 0
    while at < len(data):
        tag = data[at]
        size = ID_BYTES if tag == RAW_ID else tag - TEXT_ID
        if size < 0 or at + 4 + size > len(data):
            break  # not an entry (as the Lua reader, which stops there)
        ident = data[at + 1 : at + 1 + size]
        hour = int.from_bytes(data[at + 1 + size : at + 4 + size], "big")
        out.append((ident.hex() if tag == RAW_ID else ident.decode(), hour))
        at += 4 + size
    return out


def entries(raw: bytes | str | None) -> list[tuple[str, int]]:
    """A field's value -> [(delivery id, outcome hour)], oldest first: binary entries, or text
    ones written before (``{id},{hour}``, or ``{id},{sent_at},{hour}``)."""
    data = raw.encode() if isinstance(raw, str) else (raw or b"")
    if data and (data[0] == RAW_ID or data[0] >= TEXT_ID):
        return _binary(data)
    out = []
    for text in data.decode().split():
        parts = text.split(",")
        out.append((parts[0], int(parts[-1])))
    return out

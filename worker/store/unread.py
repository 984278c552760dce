"""A recipient's sent, unread deliveries: the index Messenger's receipts are applied through.

A delivery receipt names message ids and a watermark, a read receipt a watermark: "everything
sent to this PSID before then". So the receipts need, per recipient, the deliveries sent to it
that are not read yet. They are a field of a bucket (``store/lua/_unread.lua`` reads and writes
them)::

    P:u:{window}:{suffix}   hash    {field} -> "{id},{hour} ..." (space-separated, oldest first);
                                    window = ⌊sent time / RECORD_RETENTION⌋; suffix and field:
                                    the first SUFFIX and the next FIELD hex characters of the
                                    SHA-1 of "{page}:{psid}"; expires at the end of the next window

``hour`` is the hour bucket of the delivery's outcome (:mod:`worker.store.outcomes`): a receipt
reads the outcome there, without looking through the hours, and compares the outcome's
``sent_at`` with its watermark. (Entries written before this, ``{id},{sent_at},{hour}``, carry
their send time themselves, 19 bytes more each; they are still read.) The receipts look in the
current window's bucket and the previous one's, so an unread delivery is found for at least
RECORD_RETENTION (its outcome's own lifetime) and at most twice that; a read receipt removes what
it marked. The windows are numbered by RECORD_RETENTION: ``P:u:meta`` keeps the one they are
numbered by, and after a change the receipts read the windows of the one before too, while their
buckets live (two of it).

Why buckets: a sorted set of its own per recipient (``P:unread:{page}:{psid}``, as before) costs
about 210 bytes with its expiry entry for a recipient sent one message, and a key created and
expired per send. 16**5 buckets a window hold about 80 recipients each at a sustained 1,000
messages/s to distinct recipients with the default retention of a day, so they stay listpacks.

The field is a digest, 16 characters where "{page}:{psid}" is about 32 (a PSID is 16 digits, a
page id 15): 64 bits inside a 20-bit bucket of about 80 recipients, so two recipients share one
about once in 10**14 buckets. Before it (an upgrade) the field was "{page}:{psid}" itself:
``P:u:meta`` keeps when digest fields first ran on the shard (``fields``), and for two windows
after that (the longest a field written before can live) the receipts read both fields.

Before buckets (an upgrade): the receipts still read and trim the previous version's
``P:unread:`` sets, which expire RECORD_RETENTION after their last send.
"""

from __future__ import annotations

import hashlib
from typing import Final

#: Hex characters of the recipient's SHA-1 that pick the bucket within a window (16**5 buckets).
SUFFIX: Final = 5
#: Hex characters of the recipient's SHA-1, after SUFFIX, that name its field (64 bits).
FIELD: Final = 16


def _digest(page_id: str, psid: str) -> str:
    return hashlib.sha1(f"{page_id}:{psid}".encode(), usedforsecurity=False).hexdigest()


def bucket(prefix: str, window: int, page_id: str, psid: str) -> str:
    """The bucket of a recipient's field in a window (``prefix`` is ``Keys.unread_bucket_prefix``)."""
    return f"{prefix}{window}:{_digest(page_id, psid)[:SUFFIX]}"


def field(page_id: str, psid: str) -> str:
    """A recipient's field in its bucket (before digest fields: "{page}:{psid}")."""
    return _digest(page_id, psid)[SUFFIX : SUFFIX + FIELD]


def entries(raw: bytes | str | None) -> list[tuple[str, int]]:
    """A field's value -> [(delivery id, outcome hour)], oldest first (an entry from before this
    layout, with its send time between the two, too)."""
    text = raw.decode() if isinstance(raw, bytes) else (raw or "")
    out = []
    for entry in text.split():
        parts = entry.split(",")
        out.append((parts[0], int(parts[-1])))
    return out

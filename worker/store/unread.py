"""A recipient's sent, unread deliveries: the index Messenger's receipts are applied through.

A delivery receipt names message ids and a watermark, a read receipt a watermark: "everything
sent to this PSID before then". So the receipts need, per recipient, the deliveries sent to it
that are not read yet. They are a field of a bucket (``store/lua/_unread.lua`` reads and writes
them)::

    P:u:{window}:{suffix}   hash    "{page}:{psid}" -> "{id},{hour} ..." (space-separated, oldest
                                    first); window = ⌊sent time / RECORD_RETENTION⌋;
                                    suffix = the first SUFFIX hex characters of the SHA-1 of the
                                    field; expires at the end of the next window

``hour`` is the hour bucket of the delivery's outcome (:mod:`worker.store.outcomes`): a receipt
reads the outcome there, without looking through the hours, and compares the outcome's
``sent_at`` with its watermark. (Entries written before this, ``{id},{sent_at},{hour}``, carry
their send time themselves, 19 bytes more each; they are still read.) The receipts look in the current
window's bucket and the previous one's, so an unread delivery is found for at least
RECORD_RETENTION (its outcome's own lifetime) and at most twice that; a read receipt removes what
it marked. The windows are numbered by RECORD_RETENTION: ``P:u:meta`` keeps the one they are
numbered by, and after a change the receipts read the windows of the one before too, while their
buckets live (two of it).

Why buckets: a sorted set of its own per recipient (``P:unread:{page}:{psid}``, as before) costs
about 210 bytes with its expiry entry for a recipient sent one message, and a key created and
expired per send. 16**5 buckets a window hold about 80 recipients each at a sustained 1,000
messages/s to distinct recipients with the default retention of a day, so they stay listpacks.

Before buckets (an upgrade): the receipts still read and trim the previous version's
``P:unread:`` sets, which expire RECORD_RETENTION after their last send.
"""

from __future__ import annotations

import hashlib
from typing import Final

#: Hex characters of the field's SHA-1 that pick the bucket within a window (16**5 buckets).
SUFFIX: Final = 5


def bucket(prefix: str, window: int, page_id: str, psid: str) -> str:
    """The bucket of a recipient's field in a window (``prefix`` is ``Keys.unread_bucket_prefix``)."""
    field = f"{page_id}:{psid}"
    return f"{prefix}{window}:{hashlib.sha1(field.encode(), usedforsecurity=False).hexdigest()[:SUFFIX]}"


def entries(raw: bytes | str | None) -> list[tuple[str, int]]:
    """A field's value -> [(delivery id, outcome hour)], oldest first (an entry from before this
    layout, with its send time between the two, too)."""
    text = raw.decode() if isinstance(raw, bytes) else (raw or "")
    out = []
    for entry in text.split():
        parts = entry.split(",")
        out.append((parts[0], int(parts[-1])))
    return out

"""Delivery, batch, request and worker ids: 128 random bits as 32 hex characters.

A delivery id is what a caller holds to read its delivery, so it must not be guessable: each id
is 16 bytes of the operating system's CSPRNG (``os.urandom``: ``getrandom(2)`` on Linux, so it is
fork-safe by construction). Measured here: 0.55 µs per id, less than a buffered reader needs for
its lock (0.76 µs); a process-prefix-plus-counter id, as before, was guessable.
"""

from __future__ import annotations

import os
import re
from typing import Final

ID_BYTES = 16
#: A delivery id as made here (tests may give others): stored as its 16 raw bytes where Redis
#: keeps it as a name (an outcome's field, an unread entry).
HEX_ID: Final = re.compile(f"[0-9a-f]{{{2 * ID_BYTES}}}")


def new_delivery_id() -> str:
    """A new delivery id (also batch, worker and request ids): 32 hex characters, 128 random bits."""
    return os.urandom(ID_BYTES).hex()


def raw(delivery_id: str) -> bytes:
    """An id's 16 raw bytes; an id not made here (not 32 lowercase hex characters) as its text."""
    return bytes.fromhex(delivery_id) if HEX_ID.fullmatch(delivery_id) else delivery_id.encode()

"""Delivery, batch and worker ids."""

from __future__ import annotations

import itertools
import os


class _IdSource:
    """32 hex characters, unique without a system call per id: a random 64-bit prefix per
    process, drawn again in a forked child, then a counter. (uuid4 reads os.urandom each time:
    two getrandom calls per request on the intake's hot path.)"""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


#: A new delivery id (also the intake's request id when the caller sends no X-Request-Id).
new_delivery_id = _IdSource()

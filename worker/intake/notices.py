"""Warnings that could repeat on every request, logged at most once per interval with a count.

The send route warns when a request has no ``Idempotency-Key`` (``intake.no_idempotency_key``)
and the committer when it sheds load (``intake.overloaded``). One line per request would flood
the log exactly when the condition is widespread, so :class:`Throttled` logs the first
occurrence at once and then at most one line per ``every`` seconds, each with ``count``: the
occurrences since the previous line, this one included. Per occurrence it costs a counter and
a clock read. :class:`ThrottledRecords` does the same to a stdlib record: uvicorn's warning for
each request it refuses beyond its concurrency limit.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from worker.logging import get_logger

log = get_logger("worker.intake")


class Throttled:
    """One warning line ``event`` per ``every`` seconds at most (per process), with a count."""

    def __init__(self, event: str, every: float) -> None:
        self.event = event
        self.every = every
        self.count = 0
        self._last = -float("inf")

    def note(self, **fields: Any) -> bool:
        """Counts one occurrence; logs (and returns True) when ``every`` seconds have passed
        since the last line."""
        self.count += 1
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        log.warning(self.event, count=self.count, every_s=self.every, **fields)
        self.count = 0
        self._last = now
        return True


class ThrottledRecords(logging.Filter):
    """A filter that lets records whose message is ``message`` through at most once per ``every``
    seconds, the count of those it stood for appended; other records pass untouched."""

    def __init__(self, message: str, every: float) -> None:
        super().__init__()
        self.message = message
        self.every = every
        self.count = 0
        self._last = -float("inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.message:
            return True
        self.count += 1
        now = time.monotonic()
        if now - self._last < self.every:
            return False
        record.msg = f"{self.message} ({self.count} since the last such line)"
        self.count = 0
        self._last = now
        return True

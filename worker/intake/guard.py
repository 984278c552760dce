"""Admission by Redis memory: the send route refuses new messages while Redis is nearly full.

Redis with ``maxmemory`` and the default ``noeviction`` policy refuses writes once it is full,
and any other policy would evict the queue or delivery records, i.e. lose messages. So the intake
stops accepting before that: at ``REDIS_MEMORY_HEADROOM`` (default 0.9) of ``maxmemory`` the send
route answers ``503 redis_full`` with ``Retry-After`` and enqueues nothing; Braze retries 5xx.
What is already queued keeps being delivered, which is what frees the memory.

:class:`worker.status.MemoryGuard` reads ``INFO memory`` at most once a second. The send route
must not pay even a clock read per request, so :class:`MemoryGate` keeps one flag, ``open``: True
for one second after the guard said there is room. Per request the route checks that attribute;
once a second (and on every request while Redis is full, with no Redis call) it asks the guard.
``REDIS_MEMORY_HEADROOM=1`` turns the refusal off: the gate stays open and never reads INFO on
the send path (``/readyz`` still reports the ratio).
"""

from __future__ import annotations

import asyncio
from typing import Any

from worker.logging import get_logger
from worker.status import MemoryGuard

log = get_logger("worker.intake")
#: How long a "there is room" answer holds (the guard reads INFO at most this often anyway).
OPEN_FOR_SECONDS = 1.0


class MemoryGate:
    def __init__(self, guard: MemoryGuard, client: Any) -> None:
        self.guard = guard
        self._client = client
        self._disabled = guard.headroom >= 1
        #: The send route's only question: True = accept without asking the guard.
        self.open = self._disabled
        self.accepting = True
        self._timer: asyncio.TimerHandle | None = None

    async def admit(self) -> bool:
        """The slow path, taken when the gate is shut: ask the guard (a Redis round trip at most
        once a second, however many requests ask meanwhile). Room: open the gate for
        OPEN_FOR_SECONDS. Raises what the Redis client raises."""
        accepting = await self.check()
        if accepting and self._timer is None:
            self.open = True
            self._timer = asyncio.get_running_loop().call_later(OPEN_FOR_SECONDS, self._shut)
        return accepting

    async def check(self) -> bool:
        """Whether Redis has room now (INFO memory at most once a second); logs each change. A
        reading of "full" shuts the gate at once: requests that arrived while INFO was in flight
        got the guard's previous answer and may have opened it."""
        accepting = await self.guard.check(self._client)
        if not accepting:
            self.close()
            self.open = False
        if accepting != self.accepting:
            self.accepting = accepting
            if accepting:
                log.info("intake.redis_room", memory_ratio=round(self.guard.ratio, 4))
            else:
                log.warning(
                    "intake.redis_full",
                    memory_ratio=round(self.guard.ratio, 4),
                    headroom=self.guard.headroom,
                )
        return accepting

    def _shut(self) -> None:
        self._timer = None
        self.open = self._disabled

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

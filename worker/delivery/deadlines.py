"""GRAPH_DEADLINE_SECONDS for every Send API call in flight, kept by one timer per process.

``asyncio.timeout()`` around each call costs a timer handle, a context manager and the task's
cancellation bookkeeping per send: about 5% of the engine thread's CPU in a py-spy profile of a
10,000-message drain. Here a call registers its task and its end in a dict (:meth:`Deadlines.enter`)
and one periodic check, running only while calls are in flight, cancels the tasks whose time is
up. A call therefore ends within ``seconds + RESOLUTION``; the engine treats it as ambiguous (the
request may have reached Graph).
"""

from __future__ import annotations

import asyncio
from typing import Any

#: How often the calls in flight are checked (the deadline's precision).
RESOLUTION = 0.25


class Deadlines:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def enter(self) -> asyncio.Task[Any]:
        """The current task starts a call now; returns the task (give it to :meth:`leave`)."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - the engine only calls Graph from tasks
            raise RuntimeError("a deadline needs a task")
        loop = task.get_loop()
        self._ends[task] = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_later(RESOLUTION, self._check, loop)
        return task

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """The call ended (any way). True when its deadline cancelled it: the caller then owns
        that cancellation (``task.uncancel()``) and treats the call as unanswered."""
        self._ends.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, end in list(self._ends.items()):
            if end <= now:
                del self._ends[task]
                self._expired.add(task)
                task.cancel("GRAPH_DEADLINE_SECONDS")
        self._timer = loop.call_later(RESOLUTION, self._check, loop) if self._ends else None

    @property
    def in_flight(self) -> int:
        return len(self._ends)

"""What an idle worker asks of Redis, against a real redis-server.

Its scheduler (worker/delivery/scheduler.py) waits SCHEDULER_IDLE_SECONDS between rounds when
there is nothing to do, but a wait in ``P:sched`` is still released at its due time when a round
has seen it, or when this process's recorder wrote it (``Recorder.on_due`` ->
``Scheduler.expect``); one written behind its back waits for the idle wait at most. Its engine
reads the stopped campaigns only while it holds deliveries (worker/delivery/engine.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from tests.conftest import RedisServer, wait_until
from tests.integration.test_fence import accept, claim, make_settings, run
from worker.config import PageTokens, Settings
from worker.delivery.model import Outcome
from worker.delivery.observers import Observer
from worker.delivery.recorder import Recorder
from worker.delivery.scheduler import Scheduler
from worker.states import Event
from worker.store import Keys

pytestmark = pytest.mark.integration


class Counted(Scheduler):
    """The scheduler, counting its rounds."""

    def __init__(self, client: aioredis.Redis, s: Settings) -> None:
        super().__init__(client, s, PageTokens(s, source=""))
        self.rounds = 0

    async def tick(self) -> int:
        self.rounds += 1
        return await super().tick()


@contextlib.asynccontextmanager
async def _running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    """The scheduler's loop, running until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:
        yield scheduler
    finally:
        stop.set()
        await task


async def _released(client: aioredis.Redis, keys: Keys, member: str, since: float, limit: float) -> float:
    """Seconds from ``since`` until a round took ``member`` out of P:sched (fails after ``limit``)."""
    while await client.zscore(keys.sched, member) is not None:
        assert time.time() < since + limit, f"{member} was not released within {limit} s"
        await asyncio.sleep(0.02)
    return time.time() - since


async def _rounds_in(client: aioredis.Redis, s: Settings, seconds: float) -> int:
    async with _running(Counted(client, s)) as scheduler:
        await asyncio.sleep(seconds)
    assert isinstance(scheduler, Counted)
    return scheduler.rounds


def test_an_idle_scheduler_runs_a_round_per_idle_wait_not_per_interval(redis_server: RedisServer) -> None:
    # a lease of 60 s: a renewal every 20 s, so the idle wait may be up to 5 s
    idle = make_settings(redis_server, delivery_lease_seconds=60, scheduler_idle_seconds=1.0)
    eager = make_settings(redis_server, delivery_lease_seconds=60, scheduler_idle_seconds=0.1)

    async def go(client: aioredis.Redis) -> tuple[int, int]:
        return await _rounds_in(client, idle, 2.5), await _rounds_in(client, eager, 2.5)

    idle_rounds, eager_rounds = run(idle, go)
    assert 2 <= idle_rounds <= 4, idle_rounds  # at 0, 1 and 2 s
    assert eager_rounds >= 15, eager_rounds  # every 0.1 s, as every round was before


def test_the_idle_wait_stays_under_a_quarter_of_a_lease_renewal(redis_server: RedisServer) -> None:
    """A short lease (renewed every 1 s) keeps rounds 0.25 s apart at most, whatever
    SCHEDULER_IDLE_SECONDS says: an outage that could let a live holder's lease run out is
    noticed before the sweeper acts (the stall rule)."""
    s = make_settings(
        redis_server, delivery_lease_seconds=3, graph_deadline_seconds=1, scheduler_idle_seconds=5
    )
    assert run(s, lambda client: _rounds_in(client, s, 2.0)) >= 7


def test_a_wait_a_round_has_seen_is_released_at_its_due_time(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, delivery_lease_seconds=60, scheduler_idle_seconds=5.0)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> float:
        due = time.time() + 0.6
        await client.zadd(keys.sched, {"soon": due})
        async with _running(Scheduler(client, s, PageTokens(s, source=""))):
            return await _released(client, keys, "soon", due, 3)

    late = run(s, go)
    assert -0.05 <= late < 1.0, late  # not 5 s, the idle wait


def test_a_wait_this_process_writes_wakes_the_idle_scheduler(redis_server: RedisServer) -> None:
    """A retry written by the recorder while the scheduler sleeps its idle wait is released at
    its due time (the recorder tells the scheduler), and with it what else fell due meanwhile."""
    s = make_settings(redis_server, delivery_lease_seconds=60, scheduler_idle_seconds=5.0)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> dict[str, Any]:
        recorder = Recorder(client, s, PageTokens(s, source=""), Observer())
        async with _running(Scheduler(client, s, PageTokens(s, source=""))) as scheduler:
            recorder.on_due = scheduler.expect
            await asyncio.sleep(0.3)  # its first round has run: it sleeps 5 s now
            await client.zadd(keys.sched, {"behind-its-back": time.time() + 0.2})
            await accept(client, s, ["mine"])
            (d,) = await claim(client, s, "w1", ["mine"])
            await recorder.record(Outcome(d, Event.RETRY, reason="transient", delay=0.5))
            due = time.time() + 0.5
            assert await client.zscore(keys.sched, "mine") is not None
            return {
                "late": await _released(client, keys, "mine", due, 3),
                # released in the same round: the one the recorder's wait woke
                "other_waiting": await client.zscore(keys.sched, "behind-its-back") is not None,
            }

    seen = run(s, go)
    assert seen["late"] < 1.0, seen
    assert seen["other_waiting"] is False, seen


def test_an_unexpected_wait_is_released_within_the_idle_wait(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, delivery_lease_seconds=60, scheduler_idle_seconds=1.0)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> float:
        async with _running(Scheduler(client, s, PageTokens(s, source=""))):
            await asyncio.sleep(0.2)
            written = time.time()
            await client.zadd(keys.sched, {"another-process": written})
            return await _released(client, keys, "another-process", written, 5)

    assert run(s, go) <= 1.3


def _monitor(server: RedisServer, seconds: float) -> list[str]:
    """Every command the server runs for ``seconds`` (MONITOR), as text."""
    client = server.client()
    seen: list[str] = []
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    with client.monitor() as monitor:
        monitor.connection.socket_timeout = 0.5
        while not done.is_set():
            try:
                seen.append(monitor.next_command()["command"])
            except (TimeoutError, redis.exceptions.TimeoutError):
                continue
    return seen


def test_an_idle_worker_reads_no_stops_and_rounds_once_a_second(
    make_stack: Any, own_redis: RedisServer
) -> None:
    stack = make_stack(own_redis.url, DELIVERY_LEASE_SECONDS="60", GRAPH_DEADLINE_SECONDS="20")
    stack.start_worker()
    assert wait_until(lambda: any(e.get("event") == "worker.ready" for e in stack.logs()), 30), stack.logs()
    time.sleep(1.5)  # its first rounds are over
    commands = _monitor(own_redis, 4.0)
    assert not [c for c in commands if ":campstop" in c], "an idle engine read the stopped campaigns"
    rounds = [c for c in commands if c.startswith("SET") and ":sched:tick" in c]
    assert 2 <= len(rounds) <= 6, rounds  # about 4 (one a second), 40 at SCHEDULER_INTERVAL_SECONDS
    assert len(commands) < 60, commands  # 4 s of an idle worker: its rounds, Celery's polls, heartbeats

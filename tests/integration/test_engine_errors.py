"""The engine's last line of defence, against a real redis-server: an unexpected error in a
delivery's round hands the rest of its recipient group back to the queue. When the error came
after the delivery's Graph call started, Graph may have it: handed back, it is counted and
logged as a possible duplicate (``bmw_possible_duplicates_total{cause="ambiguous"}``,
``delivery.answer_lost``), never sent again silently."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from tests.conftest import RedisServer, wait_until
from tests.integration.test_fence import accept, fields, make_settings, run
from worker.config import PageTokens
from worker.delivery.attempt import BatchContext, Released
from worker.delivery.engine import Engine
from worker.delivery.model import Delivery, Outcome
from worker.delivery.scheduler import Scheduler
from worker.graph import GraphClient
from worker.states import State
from worker.store import records, scripts

pytestmark = pytest.mark.integration


def ambiguous() -> float:
    return REGISTRY.get_sample_value("bmw_possible_duplicates_total", {"cause": "ambiguous"}) or 0.0


def round_failing(engine: Engine, *, after_the_call: bool) -> list[MutableMapping[str, Any]]:
    """One delivery through ``engine`` whose round raises, after its Graph call or before any;
    returns the log lines of the round."""
    sender, original = engine.sender, engine.sender.deliver

    async def deliver(d: Delivery, ctx: BatchContext) -> Outcome:
        if after_the_call:
            await original(d, ctx)  # Graph accepts it (the transport below), then:
        raise RuntimeError("a bug in the bookkeeping")

    sender.deliver = deliver  # type: ignore[method-assign]  # the fault injected
    delivery_id = uuid.uuid4().hex
    s = engine.settings
    with capture_logs() as lines:
        run(s, lambda c: accept(c, s, [delivery_id]))
        assert engine.run_batch([delivery_id]) == {"claimed": 1}
        handed_back = wait_until(
            lambda: run(s, lambda c: fields(c, s, delivery_id)).get("status") == State.QUEUED.value, 10, 0.05
        )
    assert handed_back, run(s, lambda c: fields(c, s, delivery_id))
    record = run(s, lambda c: fields(c, s, delivery_id))
    assert '"engine_error"' in record.get("error", "")
    return lines


def test_an_error_after_the_graph_call_hands_the_delivery_back_as_a_possible_duplicate(
    redis_server: RedisServer,
) -> None:
    calls: list[httpx.Request] = []

    def graph(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"message_id": f"m_{len(calls)}"})

    s = make_settings(redis_server)
    engine = Engine(s, graph=GraphClient("https://graph.test/v25.0", transport=httpx.MockTransport(graph)))
    engine.start(scheduler=False)
    try:
        before = ambiguous()
        lines = round_failing(engine, after_the_call=True)
        assert len(calls) == 1
        assert ambiguous() == before + 1
        lost = [line for line in lines if line["event"] == "delivery.answer_lost"]
        assert len(lost) == 1
        assert lost[0]["possible_duplicate"] is True
        # an error before any call: handed back as before, and nothing counted
        lines = round_failing(engine, after_the_call=False)
        assert len(calls) == 1
        assert ambiguous() == before + 1
        assert not [line for line in lines if line["event"] == "delivery.answer_lost"]
    finally:
        engine.stop()


def test_a_claim_asked_again_counts_its_lease_from_the_first_try(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first try's claim landed but its read failed: the retry with the same token takes
    the deliveries back with the lease the first try set (claim.lua keeps it). The worker must
    count that lease from the first try, not believe it fresh from the retry."""
    s = make_settings(redis_server)
    engine = Engine(
        s,
        graph=GraphClient(
            "https://graph.test/v25.0", transport=httpx.MockTransport(lambda _r: httpx.Response(500))
        ),
    )
    engine.start(scheduler=False)
    original, tries = records.read_claimed, []

    async def read_claimed(*args: Any) -> Any:
        tries.append(time.time())
        if len(tries) == 1:
            await asyncio.sleep(1.0)  # a slow answer, then lost
            raise redis.exceptions.ConnectionError("lost")
        return await original(*args)

    left: list[float] = []

    async def deliver(d: Delivery, ctx: BatchContext) -> Outcome:
        left.append(engine.leases.remaining(d))
        raise Released("test")

    monkeypatch.setattr(records, "read_claimed", read_claimed)
    engine.sender.deliver = deliver  # type: ignore[method-assign]  # only the lease is looked at
    try:
        delivery_id = uuid.uuid4().hex
        run(s, lambda c: accept(c, s, [delivery_id]))
        assert engine.run_batch([delivery_id]) == {"claimed": 1}
        assert wait_until(lambda: bool(left), 10, 0.05)
    finally:
        engine.stop()
    assert len(tries) == 2
    assert left[0] <= s.delivery_lease_seconds - (tries[1] - tries[0]) + 0.1, (left, tries)


def test_a_scheduler_round_that_raises_is_followed_by_the_next(redis_server: RedisServer) -> None:
    """Any error of a round (before, anything but a Redis or OS error, e.g. a Braze answer
    httpx could not decode, while the outbox drained inside the round) ended the scheduler
    task for good: no more releases, sweeps or pause housekeeping in that process."""
    s = make_settings(redis_server, scheduler_interval_seconds=0.05)

    async def main() -> int:
        client = aioredis.Redis.from_url(s.redis_url)
        scheduler = Scheduler(client, s, PageTokens(s, source=""))
        rounds: list[int] = []

        async def tick() -> int:
            rounds.append(1)
            if len(rounds) == 1:
                raise ValueError("a bad answer")
            return 0

        scheduler.tick = tick  # type: ignore[method-assign]  # the fault injected
        stop = asyncio.Event()
        running = asyncio.create_task(scheduler.run(stop))
        for _ in range(100):  # bounded: 5 s
            if len(rounds) >= 3:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await running
        await client.aclose()
        return len(rounds)

    with capture_logs() as lines:
        assert asyncio.run(main()) >= 3
    assert [line["error"] for line in lines if line["event"] == "scheduler.round_failed"] == ["ValueError"]


def test_a_pipeline_whose_script_was_flushed_applies_its_other_commands_once(
    redis_server: RedisServer,
) -> None:
    """After a Redis restart (its scripts gone), the first pipeline with a script fails NOSCRIPT
    for the script alone: the other commands ran. Before, the whole pipeline was sent again, so
    an outcome batch pushed its Braze items twice (duplicate events in Braze) and counted its
    counters twice. Now only the script is sent again."""
    key = "ne" + uuid.uuid4().hex[:8]

    async def main() -> tuple[list[Any], int, bytes | None]:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await client.script_flush()

            def build(pipe: Any) -> None:
                pipe.lpush(f"{key}:outbox", "item")
                scripts.queue(pipe, "braze_lock", keys=[f"{key}:lock"], args=["me", "renew", 1000])
                pipe.incr(f"{key}:count")

            results = await scripts.execute(client, build)
            return results, await client.llen(f"{key}:outbox"), await client.get(f"{key}:count")
        finally:
            await client.aclose()

    results, pushed, counted = asyncio.run(main())
    assert results == [1, 0, 1]  # the script's answer in its place
    assert (pushed, counted) == (1, b"1")

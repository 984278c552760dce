"""When the Braze drainer sends, waits and stops: real redis-server, the Braze double served by
uvicorn on loopback (slowed where a test needs a slow Braze).

* A 5xx's ``Retry-After: 0`` (a proxy's, a load balancer's) was believed as the whole wait: every
  retry came a second after the last, for as long as Braze failed. It is a floor under the
  backoff now; a 429's stays Braze's own window.
* One request had no deadline of its own: httpx's timeouts are per phase (connect, write, read:
  10 s each), so a slow Braze could hold a request past the drainer's 30 s lock, and the next
  drainer took the batch back and sent it again (its events twice).
* A round sent up to 20 requests after the worker was told to stop, and the shutdown's deadline
  cut the one in flight: sent again by the next drainer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from tests.conftest import RedisServer, Stack
from tests.doubles.braze import BrazeDoubleConfig
from tests.integration.test_braze_outbox import (
    API_KEY,
    DoubleServer,
    harness,
    mixed_items,
    successful,
)
from worker.braze import OutboxDrainer
from worker.braze import client as braze_client
from worker.braze import outbox as braze_outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class _Slow:
    """An ASGI app that answers /users/track ``seconds`` late."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/users/track":
            await asyncio.sleep(self.seconds)
        await self.app(scope, receive, send)


def _double(seconds: float = 0.0) -> DoubleServer:
    server = DoubleServer(BrazeDoubleConfig(api_key=API_KEY))
    if seconds:
        server.app = _Slow(server.app, seconds)  # type: ignore[assignment]  # any ASGI app: uvicorn serves it alike
    server.start()
    return server


def _waits(logs: Sequence[Mapping[str, Any]]) -> list[float]:
    return [e["wait_seconds"] for e in logs if e["event"] == "braze.retry_scheduled"]


def test_a_5xx_retry_after_of_zero_does_not_skip_the_backoff(redis_server: RedisServer) -> None:
    """Three 503s, each with ``Retry-After: 0``: the waits follow the backoff (base 1 s, doubling,
    equal jitter: at least 0.5, 1 and 2 s), where they were 0, 0, 0."""
    double = _double()
    double.fault(503, count=3, retry_after=0)

    async def scenario() -> None:
        async with harness(redis_server, double.url, retry_cap_seconds=30) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            for _ in range(3):
                assert (await h.drain()).retried == 4
                await h.redis.delete(h.outbox.keys.braze_retry_at)  # the next attempt now
            assert (await h.drain()).sent == 4

    try:
        with capture_logs() as logs:
            asyncio.run(scenario())
    finally:
        double.stop()
    waits = _waits(logs)
    assert len(waits) == 3
    assert [w >= floor for w, floor in zip(waits, (0.5, 1.0, 2.0), strict=True)] == [True] * 3, waits


def test_a_429s_retry_after_is_still_the_wait(redis_server: RedisServer) -> None:
    """A 429's Retry-After is Braze's own rate-limit window: waited as it says, however many
    failures came before (the backoff would have grown past it)."""
    double = _double()
    double.fault(503, count=3)
    double.fault(429, count=1, retry_after=0.2)

    async def scenario() -> None:
        async with harness(redis_server, double.url, retry_cap_seconds=30) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 1))
            for _ in range(4):
                assert (await h.drain()).retried == 2
                await h.redis.delete(h.outbox.keys.braze_retry_at)

    try:
        with capture_logs() as logs:
            asyncio.run(scenario())
    finally:
        double.stop()
    waits = _waits(logs)
    assert len(waits) == 4
    assert waits[2] >= 2.0  # the third 503: backoff
    assert waits[3] == pytest.approx(0.2, abs=0.01)  # the 429: its own window, not 4 s or more


def test_a_request_has_one_deadline_inside_the_drainers_lock(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Braze answering later than the request's deadline (shortened here from 15 s) is given
    up at the deadline and held for a retry, though each of httpx's phases is within its own
    timeout; and the deadline with the pacer's wait stays well inside the lock, so no other
    drainer takes the batch back while it is in flight."""
    monkeypatch.setattr(braze_client, "REQUEST_DEADLINE_SECONDS", 0.5, raising=False)
    double = _double(seconds=3.0)

    async def scenario() -> float:
        async with harness(redis_server, double.url, retry_cap_seconds=30) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 1))
            started = time.monotonic()
            result = await h.drain()
            assert result.retried == 2
            assert (await h.depth())["outbox"] == 2  # held in the outbox, in order
            return time.monotonic() - started

    try:
        with capture_logs() as logs:
            took = asyncio.run(scenario())
    finally:
        double.stop()
    assert took < 2.0
    (line,) = [e for e in logs if e["event"] == "braze.retry_scheduled"]
    assert line["reason"] == "Braze did not answer within 0.5 s"


def test_the_request_deadline_and_the_pacers_wait_stay_inside_the_lock() -> None:
    deadline = braze_client.REQUEST_DEADLINE_SECONDS + braze_client.PACER_WINDOW_SECONDS
    assert deadline < braze_outbox.LOCK_MS / 1000 / 1.5


def test_a_round_stops_between_requests_once_told_to(redis_server: RedisServer) -> None:
    """Told to stop while its first request is in flight, a round sends no other: the rest
    stays in the outbox (not in flight), for whichever drainer runs next."""
    double = _double(seconds=1.0)

    async def scenario() -> tuple[int, dict[str, int]]:
        async with harness(redis_server, double.url, batch_size=10) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 15))  # 30 items: 3 batches
            drainer = OutboxDrainer(h.redis, h.outbox.keys, h.config, "test-drainer")
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.3, stop.set)
            try:
                await asyncio.wait_for(drainer.run(stop, interval=0.01, idle=0.01), 20)
            finally:
                await drainer.close()
            return len(successful(double)), await h.depth()

    try:
        sent, depth = asyncio.run(scenario())
        requests = double.requests()
    finally:
        double.stop()
    assert sent == 1  # one batch of 10
    assert len(requests) == 1
    assert (depth["outbox"], depth["inflight"]) == (20, 0)


def test_the_intake_reports_the_outbox_at_scrape_time(make_stack: Any) -> None:
    """What waits for Braze, what a drainer holds, what is set aside, and until when the drainer
    waits: read from Redis when /metrics is scraped (no worker runs here: nothing drains)."""
    stack: Stack = make_stack()
    stack.start_intake()
    keys, client = stack.keys, stack.redis()
    client.lpush(keys.braze_outbox, *[f'{{"n": {i}}}' for i in range(3)])
    client.lpush(keys.braze_inflight, '{"n": 9}')
    client.set(keys.braze_retry_at, "1900000000.5")
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(httpx.get(stack.intake_metrics_url, timeout=10).text):
        for sample in family.samples:
            if sample.name.startswith("bmw_braze_outbox"):
                found[(sample.name, *sample.labels.values())] = sample.value
    assert found == {
        ("bmw_braze_outbox_items", "waiting"): 3.0,
        ("bmw_braze_outbox_items", "taken"): 1.0,
        ("bmw_braze_outbox_items", "set_aside"): 0.0,
        ("bmw_braze_outbox_retry_at_timestamp_seconds",): 1900000000.5,
    }

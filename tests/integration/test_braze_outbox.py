"""BrazeOutbox + BrazeClient against a real redis-server and the Braze double served by uvicorn.

Batching, rate limits, Braze errors and outages, a crash between the move and the acknowledgement,
fatal refusals: every item ends up sent exactly once or dropped (fatal only), never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
import uvicorn
from structlog.testing import capture_logs

from tests.conftest import RedisServer, free_port
from tests.doubles.braze import BrazeDoubleConfig, create_app
from worker.braze import (
    BrazeClient,
    BrazeConfig,
    BrazeOutbox,
    DrainResult,
    InvalidItemError,
    OutboxDrainer,
    outcome_event_item,
    psid_attribute_item,
    unreachable_item,
)
from worker.store import Keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

API_KEY = "braze-double-test-key-0123456789"


class DoubleServer:
    """The Braze double under uvicorn in a thread; stop() and start() again on the same port."""

    def __init__(self, config: BrazeDoubleConfig) -> None:
        self.app = create_app(config)
        self.port = free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"braze-double-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "the Braze double stopped during start-up"
            assert time.monotonic() < deadline, "the Braze double did not start"
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the Braze double did not stop"
        self._server = self._thread = None

    def _control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}{path}", timeout=5, **kwargs)
        response.raise_for_status()
        return response.json()

    def requests(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self._control("GET", "/__braze/requests")["requests"]
        return records

    def fault(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        self._control(
            "POST", "/__braze/faults", json={"status": status, "count": count, "retry_after": retry_after}
        )


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    server = DoubleServer(BrazeDoubleConfig(api_key=API_KEY))
    server.start()
    yield server
    server.stop()


@dataclass
class Harness:
    redis: aioredis.Redis
    sync: Any  # redis.Redis for inspection (see RedisServer.client)
    client: BrazeClient
    config: BrazeConfig
    outbox: BrazeOutbox

    async def depth(self) -> dict[str, int]:
        return await self.outbox.depth(self.redis)

    async def drain(self) -> DrainResult:
        return await self.outbox.drain_once(self.redis, self.client, self.config)

    async def drain_all(self, limit_seconds: float = 15.0) -> list[DrainResult]:
        """Drain until outbox and inflight are empty, waiting out retry_at; bounded in time."""
        results: list[DrainResult] = []
        deadline = time.monotonic() + limit_seconds
        while True:
            depth = await self.depth()
            if depth["outbox"] == 0 and depth["inflight"] == 0:
                return results
            assert time.monotonic() < deadline, f"outbox not drained in {limit_seconds}s: {depth}, {results}"
            result = await self.drain()
            if result == DrainResult(0, 0, 0):
                await asyncio.sleep(0.02)
            else:
                results.append(result)

    def retry_at(self) -> float | None:
        raw = self.sync.get(self.outbox.keys.braze_retry_at)
        return None if raw is None else float(raw)


@contextlib.asynccontextmanager
async def harness(redis_server: RedisServer, url: str, **overrides: Any) -> AsyncIterator[Harness]:
    config = BrazeConfig(rest_url=url, api_key=API_KEY, **overrides)
    prefix = "bz" + uuid.uuid4().hex[:10]
    client = aioredis.Redis.from_url(redis_server.url)
    braze = BrazeClient(config)
    try:
        yield Harness(client, redis_server.client(), braze, config, BrazeOutbox(Keys(prefix, "q")))
    finally:
        await braze.aclose()
        await client.aclose()


def successful(double: DoubleServer) -> list[dict[str, Any]]:
    return [r["body"] for r in double.requests() if r["status"] == 201]


def sent_external_ids(bodies: list[dict[str, Any]]) -> list[str]:
    return [obj["external_id"] for body in bodies for obj in body.get("attributes", [])]


def sent_delivery_ids(bodies: list[dict[str, Any]]) -> list[str]:
    return [obj["properties"]["delivery_id"] for body in bodies for obj in body.get("events", [])]


def mixed_items(config: BrazeConfig, n: int, tag: str = "") -> list[dict[str, Any]]:
    """n users: one PSID attribute and one outcome event each (2n items)."""
    items: list[dict[str, Any]] = []
    for i in range(n):
        items.append(psid_attribute_item(config.psid_attribute, f"u{tag}{i}", "100", f"psid-{i}"))
        items.append(outcome_event_item(f"u{tag}{i}", "sent", f"d{tag}{i}", None))
    return items


def assert_exactly_once(double: DoubleServer, users: list[str], deliveries: list[str]) -> None:
    bodies = successful(double)
    assert sorted(sent_external_ids(bodies)) == sorted(users)
    assert sorted(sent_delivery_ids(bodies)) == sorted(deliveries)


# ------------------------------------------------------------------------------------------------
# Batching


def test_120_attribute_items_make_3_requests_merged_per_user(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    async def scenario() -> list[DrainResult]:
        async with harness(redis_server, double.url) as h:
            items: list[dict[str, Any]] = []
            for i in range(60):  # two attribute items per user, adjacent: merged into one object
                items.append(psid_attribute_item(h.config.psid_attribute, f"user-{i}", "100", f"psid-{i}"))
                items.append(unreachable_item(f"user-{i}", "flag", h.config.psid_attribute))
            await h.outbox.enqueue(h.redis, items)
            assert await h.depth() == {"outbox": 120, "inflight": 0, "invalid": 0}
            results = await h.drain_all()
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}
            return results

    results = asyncio.run(scenario())
    assert results == [DrainResult(50, 0, 0), DrainResult(50, 0, 0), DrainResult(20, 0, 0)]
    requests = double.requests()
    assert [r["status"] for r in requests] == [201, 201, 201]
    bodies = [r["body"] for r in requests]
    assert [len(b["attributes"]) for b in bodies] == [25, 25, 10]
    assert all("events" not in b for b in bodies)
    assert sent_external_ids(bodies) == [f"user-{i}" for i in range(60)]  # order kept
    for obj in bodies[0]["attributes"]:
        assert obj["messenger_reachable"] is False  # the later item won
        assert obj["messenger_id"] == "psid-" + obj["external_id"].removeprefix("user-")


def test_a_request_combines_attributes_and_events_up_to_batch_size(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    async def scenario() -> list[DrainResult]:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 40))  # 80 items, 80 objects
            return await h.drain_all()

    results = asyncio.run(scenario())
    assert [r.sent for r in results] == [50, 30]
    bodies = successful(double)
    assert [len(b["attributes"]) + len(b["events"]) for b in bodies] == [50, 30]
    assert_exactly_once(double, [f"u{i}" for i in range(40)], [f"d{i}" for i in range(40)])


# ------------------------------------------------------------------------------------------------
# Retryable answers


def test_429_with_retry_after_then_success(redis_server: RedisServer, double: DoubleServer) -> None:
    double.fault(429, count=1, retry_after=1)

    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 5))
            before = time.time()
            assert await h.drain() == DrainResult(0, 10, 0)
            retry_at = h.retry_at()
            assert retry_at is not None
            assert before + 0.9 <= retry_at <= time.time() + 1.1
            assert await h.depth() == {"outbox": 10, "inflight": 0, "invalid": 0}

            # Before retry_at: nothing moves, nothing is sent.
            assert await h.drain() == DrainResult(0, 0, 0)
            assert len(double.requests()) == 1
            assert await h.depth() == {"outbox": 10, "inflight": 0, "invalid": 0}

            deadline = time.monotonic() + 5
            while time.time() < retry_at:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert await h.drain() == DrainResult(10, 0, 0)
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}
            assert h.sync.get(h.outbox.keys.braze_failures) is None

    asyncio.run(scenario())
    assert [r["status"] for r in double.requests()] == [429, 201]
    requests = double.requests()
    assert requests[0]["body"] == requests[1]["body"]  # the same batch, in the same order
    assert_exactly_once(double, [f"u{i}" for i in range(5)], [f"d{i}" for i in range(5)])


def test_503_three_times_then_success(redis_server: RedisServer, double: DoubleServer) -> None:
    double.fault(503, count=3)

    async def scenario() -> list[DrainResult]:
        async with harness(redis_server, double.url, retry_cap_seconds=0.2) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 30))  # 60 items: 2 batches
            return await h.drain_all()

    with capture_logs() as logs:
        results = asyncio.run(scenario())
    assert [r["status"] for r in double.requests()] == [503, 503, 503, 201, 201]
    assert results == [DrainResult(0, 50, 0)] * 3 + [DrainResult(50, 0, 0), DrainResult(10, 0, 0)]
    retries = [e for e in logs if e["event"] == "braze.retry_scheduled"]
    assert [e["failures"] for e in retries] == [1, 2, 3]
    assert all(e["http_status"] == 503 and 0 <= e["wait_seconds"] <= 0.2 for e in retries)
    assert [e["count"] for e in logs if e["event"] == "braze.sent"] == [50, 10]
    assert_exactly_once(double, [f"u{i}" for i in range(30)], [f"d{i}" for i in range(30)])


def test_braze_down_then_back(redis_server: RedisServer, double: DoubleServer) -> None:
    double.stop()

    async def scenario() -> None:
        async with harness(redis_server, double.url, retry_cap_seconds=0.1) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 10))
            retried = 0
            deadline = time.monotonic() + 3
            while retried < 3:  # several failed attempts while Braze is unreachable
                assert time.monotonic() < deadline
                result = await h.drain()
                assert result.sent == result.dropped == 0
                if result.retried:
                    assert result.retried == 20
                    retried += 1
                else:
                    await asyncio.sleep(0.02)
                assert await h.depth() == {"outbox": 20, "inflight": 0, "invalid": 0}
            assert int(h.sync.get(h.outbox.keys.braze_failures)) == 3

            double.start()
            results = await h.drain_all()
            assert sum(r.sent for r in results) == 20
            assert h.sync.get(h.outbox.keys.braze_failures) is None

    with capture_logs() as logs:
        asyncio.run(scenario())
    retries = [e for e in logs if e["event"] == "braze.retry_scheduled"]
    assert len(retries) == 3
    assert all(e["http_status"] is None and "ConnectError" in e["reason"] for e in retries)
    assert_exactly_once(double, [f"u{i}" for i in range(10)], [f"d{i}" for i in range(10)])


def test_retries_past_max_attempts_are_never_dropped(redis_server: RedisServer, double: DoubleServer) -> None:
    double.fault(500, count=4)

    async def scenario() -> None:
        async with harness(redis_server, double.url, retry_cap_seconds=0.05, max_attempts=2) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            await h.drain_all()

    with capture_logs() as logs:
        asyncio.run(scenario())
    retries = [e for e in logs if e["event"] == "braze.retry_scheduled"]
    assert [(e["failures"], e["attempts_exhausted"], e["log_level"]) for e in retries] == [
        (1, False, "warning"),
        (2, True, "error"),
        (3, True, "error"),
        (4, True, "error"),
    ]
    assert_exactly_once(double, ["u0", "u1"], ["d0", "d1"])


# ------------------------------------------------------------------------------------------------
# Crash between move and acknowledgement


def test_crash_between_move_and_ack_is_recovered(redis_server: RedisServer, double: DoubleServer) -> None:
    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 5, "a"))
            moved = await h.outbox.move(h.redis, h.config.batch_size)  # ... and the process dies here
            assert len(moved) == 10
            assert await h.depth() == {"outbox": 0, "inflight": 10, "invalid": 0}
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 3, "b"))

            # A new process starts: recover first, then drain.
            with capture_logs() as logs:
                assert await h.outbox.recover(h.redis) == 10
            assert logs == [
                {"logger": "worker.braze", "event": "braze.recovered", "count": 10, "log_level": "warning"}
            ]
            assert await h.depth() == {"outbox": 16, "inflight": 0, "invalid": 0}
            assert await h.outbox.recover(h.redis) == 0
            results = await h.drain_all()
            assert results == [DrainResult(16, 0, 0)]

    asyncio.run(scenario())
    (body,) = successful(double)
    # The recovered items go first, in their original order, then the newer ones.
    assert sent_external_ids([body]) == ["ua0", "ua1", "ua2", "ua3", "ua4", "ub0", "ub1", "ub2"]
    assert sent_delivery_ids([body]) == ["da0", "da1", "da2", "da3", "da4", "db0", "db1", "db2"]


def test_inflight_items_are_not_sent_again_without_recover(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            await h.outbox.move(h.redis, 50)
            assert await h.drain() == DrainResult(0, 0, 0)
            assert await h.depth() == {"outbox": 0, "inflight": 4, "invalid": 0}

    asyncio.run(scenario())
    assert double.requests() == []


def test_a_drainer_whose_lock_ran_out_stops_and_leaves_the_lock_to_its_new_holder(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    """A round of slow requests outlived the drainer's lock and another worker took it (and
    recovered what was in flight, to send it). Before, the first drainer went on sending the
    rest of its round without the lock, and its close() deleted the new holder's lock."""

    async def scenario() -> None:
        async with harness(redis_server, double.url, batch_size=2) as h:
            keys = h.outbox.keys
            drainer = OutboxDrainer(h.redis, keys, h.config, "worker-A")
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 3))  # 3 requests of 2 items
            original = drainer._outbox.drain_once

            async def first_then_taken(*args: Any) -> DrainResult:
                result = await original(*args)
                await h.redis.set(keys.braze_lock, "worker-B")  # A's lock ran out; B took it
                return result

            drainer._outbox.drain_once = first_then_taken  # type: ignore[method-assign,assignment]  # the slow request
            assert await drainer.tick() == 2
            assert not drainer.holding
            assert await h.depth() == {"outbox": 4, "inflight": 0, "invalid": 0}  # left to B
            await drainer.close()
            assert await h.redis.get(keys.braze_lock) == b"worker-B"

    asyncio.run(scenario())
    assert len(successful(double)) == 1


def test_a_round_that_failed_half_way_is_recovered_by_the_next(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    """Redis failed between a batch's move and its acknowledgement while the drainer kept its
    lock. Before, the batch stayed in flight until the process restarted (only a drainer taking
    the lock afresh recovered it); the next round now puts it back, and it is sent once."""

    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            drainer = OutboxDrainer(h.redis, h.outbox.keys, h.config, "worker-A")
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            original, calls = drainer._outbox.drain_once, []

            async def fails_once(*args: Any) -> DrainResult:
                calls.append(1)
                if len(calls) == 1:
                    await h.outbox.move(h.redis, 50)
                    raise redis.exceptions.ConnectionError("Redis went away before the ack")
                return await original(*args)

            drainer._outbox.drain_once = fails_once  # type: ignore[method-assign,assignment]  # the fault injected
            stop = asyncio.Event()
            running = asyncio.create_task(drainer.run(stop, 0.05, 0.05))
            for _ in range(200):  # bounded: 10 s
                if len(successful(double)) == 1:
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await running
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}
            await drainer.close()

    asyncio.run(scenario())
    assert_exactly_once(double, ["u0", "u1"], ["d0", "d1"])


# ------------------------------------------------------------------------------------------------
# Fatal answers and bad items


def test_fatal_400_drops_the_batch_and_logs_it(redis_server: RedisServer, double: DoubleServer) -> None:
    double.fault(400, count=1)

    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 3, "x"))
            with capture_logs() as logs:
                assert await h.drain() == DrainResult(0, 0, 6)
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}
            (dropped,) = [e for e in logs if e["event"] == "braze.dropped"]
            assert dropped["count"] == 6
            assert dropped["http_status"] == 400
            assert dropped["log_level"] == "warning"
            text = orjson.dumps(logs).decode()
            assert "ux0" not in text
            assert "psid-0" not in text  # counts and status only, never the payload

            # The outbox keeps working after a fatal answer.
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 1, "y"))
            assert await h.drain() == DrainResult(2, 0, 0)

    asyncio.run(scenario())
    assert [r["status"] for r in double.requests()] == [400, 201]
    assert_exactly_once(double, ["uy0"], ["dy0"])


def test_bad_api_key_holds_the_outbox_until_the_key_is_fixed(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            bad = BrazeConfig(rest_url=double.url, api_key="wrong-key-0123456789")
            async with BrazeClient(bad) as wrong:
                await h.outbox.enqueue(h.redis, mixed_items(h.config, 1))
                with capture_logs() as logs:
                    assert await h.outbox.drain_once(h.redis, wrong, bad) == DrainResult(0, 2, 0)
                (held,) = logs
                assert (held["event"], held["http_status"], held["log_level"]) == (
                    "braze.retry_scheduled",
                    401,
                    "error",
                )
                assert "REST API key" in held["reason"]
                assert "wrong-key-0123456789" not in orjson.dumps(logs).decode()
            assert (await h.depth())["outbox"] == 2  # held, not dropped
            await h.redis.delete(h.outbox.keys.braze_retry_at)  # the operator fixed the key: go now
            assert await h.drain() == DrainResult(2, 0, 0)

    asyncio.run(scenario())
    assert [(r["status"], r["authorized"]) for r in double.requests()] == [(401, False), (201, True)]
    assert_exactly_once(double, ["u0"], ["d0"])


def test_enqueue_refuses_malformed_items_and_writes_nothing(
    redis_server: RedisServer, double: DoubleServer
) -> None:
    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            good = psid_attribute_item(h.config.psid_attribute, "u1", "100", "p1")
            for bad in (
                {"type": "attribute", "external_id": "", "attributes": {"a": 1}},
                {"type": "attribute", "external_id": "u1", "attributes": {}},
                {"type": "event", "external_id": "u1", "name": "x"},
                {"type": "purchase", "external_id": "u1"},
            ):
                with pytest.raises(InvalidItemError):
                    await h.outbox.enqueue(h.redis, [good, bad])
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}
            await h.outbox.enqueue(h.redis, [])
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}

    asyncio.run(scenario())


def test_undecodable_items_are_set_aside_not_dropped(redis_server: RedisServer, double: DoubleServer) -> None:
    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 1))
            h.sync.lpush(h.outbox.keys.braze_outbox, b"{not json", b'{"type":"attribute"}')  # written by hand
            with capture_logs() as logs:
                assert await h.drain() == DrainResult(2, 0, 0, invalid=2)
            assert [e["event"] for e in logs] == ["braze.invalid_items", "braze.sent"]
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 2}
            assert sorted(h.sync.lrange(h.outbox.keys.braze_invalid, 0, -1)) == [
                b'{"type":"attribute"}',
                b"{not json",
            ]

    asyncio.run(scenario())
    assert_exactly_once(double, ["u0"], ["d0"])


# ------------------------------------------------------------------------------------------------
# The double's own contract


def test_double_contract(double: DoubleServer) -> None:
    url = f"{double.url}/users/track"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    attr = {"external_id": "u1", "a": 1}
    event = {"external_id": "u1", "name": "e", "time": "2026-01-01T00:00:00Z"}

    ok = httpx.post(url, json={"attributes": [attr], "events": [event]}, headers=auth, timeout=5)
    assert ok.status_code == 201
    assert ok.json() == {"message": "success", "attributes_processed": 1, "events_processed": 1}
    assert ok.headers["X-RateLimit-Limit"] == "3000"
    assert int(ok.headers["X-RateLimit-Remaining"]) < 3000
    assert int(ok.headers["X-RateLimit-Reset"]) >= int(time.time())

    assert httpx.post(url, json={"attributes": [attr]}, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(url, json={"attributes": [attr]}, headers=wrong, timeout=5).status_code == 401

    too_many = httpx.post(
        url, json={"attributes": [attr] * 40, "events": [event] * 36}, headers=auth, timeout=5
    )
    assert too_many.status_code == 400
    assert too_many.json()["message"]
    assert any("76 objects" in e for e in too_many.json()["errors"])
    assert (
        httpx.post(
            url, json={"attributes": [attr] * 40, "events": [event] * 35}, headers=auth, timeout=5
        ).status_code
        == 201
    )

    bodies: list[Any] = [
        {"attributes": [{"a": 1}]},
        {"attributes": {"external_id": "u1"}},
        {"events": [{"external_id": "u1"}]},
        {},
        [],
    ]
    for bad in bodies:
        response = httpx.post(url, json=bad, headers=auth, timeout=5)
        assert response.status_code == 400, bad
        assert response.json()["errors"]
    assert httpx.post(url, content=b"{", headers=auth, timeout=5).status_code == 400

    double.fault(429, count=2, retry_after=3)
    for _ in range(2):
        limited = httpx.post(url, json={"attributes": [attr]}, headers=auth, timeout=5)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert httpx.post(url, json={"attributes": [attr]}, headers=auth, timeout=5).status_code == 201
    double.fault(503)
    unavailable = httpx.post(url, json={"attributes": [attr]}, headers=auth, timeout=5)
    assert unavailable.status_code == 503
    assert "Retry-After" not in unavailable.headers

    bad_faults: list[Any] = [
        {"status": 200},
        {"status": 429, "count": 0},
        {"status": 503, "retry_after": -1},
        [],
    ]
    for bad_fault in bad_faults:
        assert httpx.post(f"{double.url}/__braze/faults", json=bad_fault, timeout=5).status_code == 400

    records = double.requests()
    assert all(set(r) == {"seq", "at", "status", "authorized", "body"} for r in records)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert API_KEY not in orjson.dumps(records).decode()
    assert httpx.delete(f"{double.url}/__braze/requests", timeout=5).status_code == 200
    assert double.requests() == []
    assert httpx.get(f"{double.url}/healthz", timeout=5).json() == {"ok": True}

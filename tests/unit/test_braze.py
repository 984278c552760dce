"""worker.braze without Redis: BrazeClient (httpx.MockTransport), error mapping, pacer, builders."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from worker.braze import (
    BrazeAuthError,
    BrazeClient,
    BrazeConfig,
    BrazeError,
    BrazeFatal,
    BrazeRetryable,
    SlidingWindowPacer,
    TrackResult,
    build_request,
    error_from_response,
    outcome_event_item,
    psid_attribute_item,
    unreachable_item,
)
from worker.braze.client import SERVER_WAIT_CAP_SECONDS

API_KEY = "braze-rest-key-0123456789abcdef"
URL = "https://rest.iad-01.braze.test"
CONFIG = BrazeConfig(rest_url=URL, api_key=API_KEY)
ATTR = [{"external_id": "u1", "messenger_id": "psid-1"}]
EVENT = [{"external_id": "u1", "name": "messenger_delivery", "time": "2026-01-01T00:00:00.000Z"}]

Handler = Callable[[httpx.Request], httpx.Response]


def track(
    handler: Handler, attributes: list[dict[str, Any]] = ATTR, events: list[dict[str, Any]] = EVENT
) -> Any:
    async def run() -> TrackResult:
        async with BrazeClient(CONFIG, transport=httpx.MockTransport(handler)) as client:
            return await client.track(attributes, events)

    return asyncio.run(run())


def failing(handler: Handler) -> BrazeError:
    with pytest.raises(BrazeError) as info:
        track(handler)
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    return info.value


def ok(
    payload: dict[str, Any] | None = None, status: int = 201, headers: dict[str, str] | None = None
) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = payload if payload is not None else {"message": "success", "attributes_processed": 1}
        return httpx.Response(status, json=body, headers=headers)

    return handler


def answer(status: int, headers: dict[str, str] | None = None, body: bytes = b'{"message":"x"}') -> Handler:
    return lambda request: httpx.Response(status, content=body, headers=headers)


# ------------------------------------------------------------------------------------------------
# Requests


def test_request_auth_path_and_body() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201, json={"message": "success", "attributes_processed": 1, "events_processed": 1}
        )

    result = track(handler)
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/users/track"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == {"attributes": ATTR, "events": EVENT}
    assert result.status == 201
    assert (result.message, result.attributes_processed, result.events_processed) == ("success", 1, 1)
    assert result.errors == []


def test_empty_arrays_are_left_out() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return httpx.Response(201, json={"message": "success"})

    track(handler, attributes=ATTR, events=[])
    track(handler, attributes=[], events=EVENT)
    assert bodies == [{"attributes": ATTR}, {"events": EVENT}]


def test_nothing_to_send_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="at least one"):
        track(ok(), attributes=[], events=[])


def test_trailing_slash_in_rest_url() -> None:
    urls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        urls.append(str(request.url))
        return httpx.Response(201, json={"message": "success"})

    async def run() -> None:
        config = BrazeConfig(rest_url=URL + "/", api_key=API_KEY)
        async with BrazeClient(config, transport=httpx.MockTransport(handler)) as client:
            await client.track(ATTR, [])

    asyncio.run(run())
    assert urls == [f"{URL}/users/track"]


def test_success_with_object_errors_is_a_success() -> None:
    errors = [
        {
            "type": "'external_id' or 'braze_id' or 'user_alias' is required",
            "input_array": "events",
            "index": 0,
        }
    ]
    headers = {"X-RateLimit-Remaining": "2999"}
    result = track(ok({"message": "success", "attributes_processed": 1, "errors": errors}, headers=headers))
    assert result.errors == errors
    assert result.rate_limit_remaining == 2999


def test_success_without_json_body() -> None:
    result = track(lambda request: httpx.Response(201, content=b"<html>ok</html>"))
    assert (result.status, result.message, result.errors) == (201, None, [])


# ------------------------------------------------------------------------------------------------
# Errors


def test_429_with_retry_after() -> None:
    exc = failing(answer(429, {"Retry-After": "7"}))
    assert isinstance(exc, BrazeRetryable)
    assert (exc.status, exc.retry_after) == (429, 7.0)


def test_429_with_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    exc = error_from_response(httpx.Response(429, headers={"Retry-After": date}), now=now)
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after == pytest.approx(30)


def test_429_with_rate_limit_reset() -> None:
    now = 1_800_000_000.0
    exc = error_from_response(httpx.Response(429, headers={"X-RateLimit-Reset": str(int(now) + 12)}), now=now)
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after == pytest.approx(12)


def test_429_with_rate_limit_reset_through_the_client() -> None:
    import time

    exc = failing(answer(429, {"X-RateLimit-Reset": str(int(time.time()) + 20)}))
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after is not None
    assert 18 <= exc.retry_after <= 21


def test_429_retry_after_wins_over_reset() -> None:
    now = 1_800_000_000.0
    headers = {"Retry-After": "3", "X-RateLimit-Reset": str(int(now) + 60)}
    exc = error_from_response(httpx.Response(429, headers=headers), now=now)
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after == 3.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Retry-After": "soon"},
        {"Retry-After": "nan"},
        {"Retry-After": "inf"},
        {"X-RateLimit-Reset": "1000000000"},
    ],
)
def test_429_without_a_usable_wait(headers: dict[str, str]) -> None:
    exc = error_from_response(httpx.Response(429, headers=headers), now=1_800_000_000.0)
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after is None


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (429, {"Retry-After": "99999999"}),
        (503, {"Retry-After": "1e12"}),
        (429, {"Retry-After": email.utils.formatdate(1_800_000_000.0 + 10 * 365 * 86400, usegmt=True)}),
        (429, {"X-RateLimit-Reset": str(1_800_000_000 + 10 * 365 * 86400)}),
        (429, {"X-RateLimit-Reset": "999999999"}),  # read as a delta: 31 years
    ],
)
def test_a_servers_wait_is_believed_for_an_hour_at_most(status: int, headers: dict[str, str]) -> None:
    """A Retry-After or reset years ahead (a proxy's, a misparsed date) held every Braze write for
    as long, across restarts: the outbox's retry_at only moves forward."""
    exc = error_from_response(httpx.Response(status, headers=headers), now=1_800_000_000.0)
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after == SERVER_WAIT_CAP_SECONDS == 3600.0


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable(status: int) -> None:
    exc = failing(answer(status, body=b"<html>down</html>"))
    assert isinstance(exc, BrazeRetryable)
    assert (exc.status, exc.retry_after) == (status, None)


def test_503_with_retry_after() -> None:
    exc = failing(answer(503, {"Retry-After": "2"}))
    assert isinstance(exc, BrazeRetryable)
    assert exc.retry_after == 2.0


@pytest.mark.parametrize("status", [400, 409, 413, 422])  # 404/405: BrazeEndpointError (held)
def test_other_4xx_are_fatal(status: int) -> None:
    exc = failing(answer(status, body=b'{"message":"Bad request","errors":["x"]}'))
    assert type(exc) is BrazeFatal
    assert exc.status == status


@pytest.mark.parametrize("status", [401, 403])
def test_bad_key_is_fatal(status: int) -> None:
    exc = failing(answer(status))
    assert isinstance(exc, BrazeAuthError)
    assert isinstance(exc, BrazeFatal)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
)
def test_transport_errors_are_retryable(error: httpx.TransportError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    exc = failing(handler)
    assert isinstance(exc, BrazeRetryable)
    assert (exc.status, exc.retry_after) == (None, None)
    assert type(error).__name__ in str(exc)
    assert exc.__cause__ is None


def test_api_key_never_in_repr_or_str() -> None:
    client = BrazeClient(CONFIG)
    for text in (repr(CONFIG), str(CONFIG), repr(client), str(client), f"{CONFIG}", f"{client!r}"):
        assert API_KEY not in text
    assert "***" in repr(CONFIG)
    assert URL in repr(CONFIG)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="rest_url"):
        BrazeConfig(rest_url="rest.iad-01.braze.com", api_key=API_KEY)
    with pytest.raises(ValueError, match="api_key"):
        BrazeConfig(rest_url=URL, api_key="")
    for size in (0, 76):
        with pytest.raises(ValueError, match="batch_size"):
            BrazeConfig(rest_url=URL, api_key=API_KEY, batch_size=size)
    with pytest.raises(ValueError, match="retry_cap"):
        BrazeConfig(rest_url=URL, api_key=API_KEY, retry_cap_seconds=0)
    with pytest.raises(ValueError, match="max_requests"):
        BrazeConfig(rest_url=URL, api_key=API_KEY, max_requests_per_3s=0)


def test_config_validation_messages_do_not_show_the_key() -> None:
    with pytest.raises(ValueError, match="batch_size") as info:
        BrazeConfig(rest_url=URL, api_key=API_KEY, batch_size=100)
    assert API_KEY not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Pacer


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_sliding_window() -> None:
    fake = FakeTime()
    pacer = SlidingWindowPacer(3, 3.0, clock=fake.clock, sleep=fake.sleep)

    async def run() -> list[float]:
        waits = []
        for _ in range(3):
            waits.append(await pacer.acquire())
        fake.now += 1.0
        waits.append(await pacer.acquire())  # 4th in 3 s: waits until the 1st leaves the window
        waits.append(await pacer.acquire())
        fake.now += 10
        waits.append(await pacer.acquire())
        return waits

    waits = asyncio.run(run())
    assert waits == [0.0, 0.0, 0.0, pytest.approx(2.0), 0.0, 0.0]
    assert fake.sleeps == [pytest.approx(2.0)]


def test_pacer_concurrent_callers_never_exceed_the_limit() -> None:
    fake = FakeTime()
    pacer = SlidingWindowPacer(5, 3.0, clock=fake.clock, sleep=fake.sleep)
    stamps: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        stamps.append(fake.now)

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(23)))

    asyncio.run(run())
    assert len(stamps) == 23
    for start in stamps:
        assert sum(1 for s in stamps if start <= s < start + 3.0) <= 5


def test_client_goes_through_the_pacer() -> None:
    fake = FakeTime()
    pacer = SlidingWindowPacer(2, 3.0, clock=fake.clock, sleep=fake.sleep)

    async def run() -> None:
        transport = httpx.MockTransport(ok())
        async with BrazeClient(CONFIG, transport=transport, pacer=pacer) as client:
            for _ in range(3):
                await client.track(ATTR, [])

    asyncio.run(run())
    assert fake.sleeps == [pytest.approx(3.0)]


def test_pacer_arguments() -> None:
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowPacer(0)


# ------------------------------------------------------------------------------------------------
# Builders


def test_psid_attribute_item() -> None:
    config = BrazeConfig(rest_url=URL, api_key=API_KEY, psid_attribute="fb_psid")
    assert psid_attribute_item(config.psid_attribute, "user-1", "100", "psid-9") == {
        "type": "attribute",
        "external_id": "user-1",
        "attributes": {"fb_psid": "psid-9", "messenger_page_id": "100", "messenger_reachable": True},
    }


def test_unreachable_items() -> None:
    assert unreachable_item("u1", "flag", CONFIG.psid_attribute) == {
        "type": "attribute",
        "external_id": "u1",
        "attributes": {"messenger_reachable": False},
    }
    assert unreachable_item("u1", "clear", CONFIG.psid_attribute)["attributes"] == {"messenger_id": None}
    with pytest.raises(ValueError, match="mode"):
        unreachable_item("u1", "erase", CONFIG.psid_attribute)  # type: ignore[arg-type]  # the runtime guard under test


def test_outcome_event_item() -> None:
    item = outcome_event_item("u1", "failed", "d-1", "unreachable", at=1_700_000_000.5)
    assert item == {
        "type": "event",
        "external_id": "u1",
        "name": "messenger_delivery",
        "time": "2023-11-14T22:13:20.500Z",
        "properties": {"status": "failed", "delivery_id": "d-1", "reason": "unreachable"},
    }
    assert "reason" not in outcome_event_item("u1", "sent", "d-2", None)["properties"]
    assert outcome_event_item("u1", "sent", "d-2", None)["time"].endswith("Z")


def test_build_request_merges_attributes_per_user() -> None:
    items = [
        psid_attribute_item(CONFIG.psid_attribute, "u1", "100", "p1"),
        psid_attribute_item(CONFIG.psid_attribute, "u2", "100", "p2"),
        outcome_event_item("u1", "sent", "d1", None, at=0),
        unreachable_item("u1", "flag", CONFIG.psid_attribute),
        {"type": "event", "external_id": "u2", "name": "x", "time": "2026-01-01T00:00:00Z", "properties": {}},
    ]
    attributes, events = build_request(items)
    assert attributes == [
        {"messenger_id": "p1", "messenger_page_id": "100", "messenger_reachable": False, "external_id": "u1"},
        {"messenger_id": "p2", "messenger_page_id": "100", "messenger_reachable": True, "external_id": "u2"},
    ]
    assert events == [
        {
            "external_id": "u1",
            "name": "messenger_delivery",
            "time": "1970-01-01T00:00:00.000Z",
            "properties": {"status": "sent", "delivery_id": "d1"},
        },
        {"external_id": "u2", "name": "x", "time": "2026-01-01T00:00:00Z"},
    ]


def test_build_request_external_id_cannot_be_overridden_by_an_attribute() -> None:
    item = {"type": "attribute", "external_id": "u1", "attributes": {"external_id": "other", "a": 1}}
    attributes, _ = build_request([item])
    assert attributes == [{"external_id": "u1", "a": 1}]

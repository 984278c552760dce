"""Review of the Braze write-back as an on-call engineer meets it: real redis-server, Braze (the
project's double, or a small app of the test's own) served by uvicorn on loopback.

* a BRAZE_REST_URL that does not lead to ``/users/track`` (404: the endpoint copied with its path)
  holds the outbox like a refused key, instead of dropping every write;
* a BRAZE_API_KEY read with a trailing newline (a Secret made from a file) is used trimmed,
  instead of failing every request as "Braze unreachable" for ever;
* objects Braze refuses one by one in a 2xx answer are counted (``rejected``), not only logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from tests.conftest import RedisServer
from tests.integration.test_braze_outbox import (
    API_KEY,
    DoubleServer,
    assert_exactly_once,
    double,  # noqa: F401  # the fixture
    harness,
    mixed_items,
)
from worker.braze import BrazeClient, BrazeConfig, DrainResult, OutboxDrainer, braze_config
from worker.braze import client as braze_client
from worker.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def _objects(result: str) -> float:
    return REGISTRY.get_sample_value("bmw_braze_objects_total", {"result": result}) or 0.0


def test_a_rest_url_with_a_path_holds_the_outbox_instead_of_dropping_every_write(
    redis_server: RedisServer,
    double: DoubleServer,  # noqa: F811
) -> None:
    """BRAZE_REST_URL set to the endpoint Braze's docs show with its path
    (``https://rest.iad-01.braze.com/users/track``): every request is a 404. Before, each batch
    was dropped for good (``braze.dropped`` at warning level, no alert): every PSID link, every
    unreachable flag and outcome event lost until someone read the logs."""

    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            wrong = BrazeConfig(rest_url=f"{double.url}/users/track", api_key=API_KEY)
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            async with BrazeClient(wrong) as client:
                with capture_logs() as logs:
                    result = await h.outbox.drain_once(h.redis, client, wrong)
            assert result == DrainResult(0, 4, 0)
            (held,) = logs
            assert (held["event"], held["http_status"], held["log_level"]) == (
                "braze.retry_scheduled",
                404,
                "error",
            )
            assert "BRAZE_REST_URL" in held["reason"]
            assert (await h.depth())["outbox"] == 4  # held, not dropped
            await h.redis.delete(h.outbox.keys.braze_retry_at)  # the operator fixed the URL
            assert await h.drain() == DrainResult(4, 0, 0)

    asyncio.run(scenario())
    assert_exactly_once(double, ["u0", "u1"], ["d0", "d1"])


def test_404_and_405_name_the_url_not_the_request() -> None:
    import httpx

    for status in (404, 405):
        exc = braze_client.error_from_response(httpx.Response(status, content=b"<html>Not Found</html>"))
        assert isinstance(exc, braze_client.BrazeEndpointError)
        assert exc.status == status


def test_a_key_read_with_a_trailing_newline_is_used_trimmed(
    redis_server: RedisServer,
    double: DoubleServer,  # noqa: F811
) -> None:
    """``kubectl create secret --from-file`` (or ``echo key > file``) keeps the file's newline.
    Before, httpx refused the header on every request: ``braze.retry_scheduled`` "Braze
    unreachable: LocalProtocolError" for ever, while Braze was up and the key was right (and the
    exception chained to that error carried the key in its message)."""
    settings = Settings(braze_rest_url=double.url, braze_api_key=f"  {API_KEY}\n", redis_url=redis_server.url)
    config = braze_config(settings)
    assert config is not None
    assert config.api_key == API_KEY

    async def scenario() -> None:
        async with harness(redis_server, double.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 1))
            async with BrazeClient(config) as client:
                assert await h.outbox.drain_once(h.redis, client, config) == DrainResult(2, 0, 0)

    asyncio.run(scenario())
    assert_exactly_once(double, ["u0"], ["d0"])


@pytest.mark.parametrize("key", ["abc\ndef-0123456789", "abc def-0123456789", "clé-0123456789"])
def test_a_key_that_cannot_be_a_header_is_refused_at_start_without_showing_it(key: str) -> None:
    with pytest.raises(ValueError, match="api_key") as info:
        BrazeConfig(rest_url="https://rest.iad-01.braze.com", api_key=key)
    assert key not in str(info.value)


# ------------------------------------------------------------------------------------------------
# A partial success: 201 with objects refused one by one


class PartialBraze(DoubleServer):
    """Answers every request 201, refusing the first event object (as Braze does for an object
    it cannot take: ``errors`` with ``type``, ``input_array`` and ``index``)."""

    def __init__(self) -> None:
        super().__init__(self_config())
        self.bodies: list[Any] = []

        async def track(request: Request) -> Response:
            body = orjson.loads(await request.body())
            self.bodies.append(body)
            answer = {
                "message": "success",
                "attributes_processed": len(body.get("attributes", [])),
                "events_processed": len(body.get("events", [])) - 1,
                "errors": [{"type": "'time' is in the future", "input_array": "events", "index": 0}],
            }
            return Response(orjson.dumps(answer), status_code=201, media_type="application/json")

        self.app = Starlette(routes=[Route("/users/track", track, methods=["POST"])])


def self_config() -> Any:
    from tests.doubles.braze import BrazeDoubleConfig

    return BrazeDoubleConfig(api_key=API_KEY)


@pytest.fixture
def partial() -> Iterator[PartialBraze]:
    server = PartialBraze()
    server.start()
    yield server
    server.stop()


def test_objects_refused_in_a_2xx_answer_are_counted_rejected(
    redis_server: RedisServer, partial: PartialBraze
) -> None:
    """Before, the whole batch was counted ``sent`` and the refusal was only a log line: the
    dashboards said every outcome reached Braze, and no alert could see it."""

    async def scenario() -> None:
        async with harness(redis_server, partial.url) as h:
            await h.outbox.enqueue(h.redis, mixed_items(h.config, 2))
            drainer = OutboxDrainer(h.redis, h.outbox.keys, h.config, "worker-A")
            before = _objects("rejected")
            with capture_logs() as logs:
                await drainer.tick()
            await drainer.close()
            assert _objects("rejected") - before == 1
            assert await h.depth() == {"outbox": 0, "inflight": 0, "invalid": 0}  # not retried
            (errors,) = [e for e in logs if e["event"] == "braze.object_errors"]
            assert errors["errors"] == [
                {"type": "'time' is in the future", "input_array": "events", "index": 0}
            ]

    asyncio.run(scenario())
    assert len(partial.bodies) == 1

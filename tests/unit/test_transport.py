"""worker.graph.transport.SendTransport against a loopback aiohttp server, alone and under GraphClient.

What is checked: the bytes that go out (method, encoded query, headers, body), the answer that
comes back (status, headers, body, reason), timeouts and dropped connections mapped to the httpx
errors GraphClient classifies, compressed answers decoded, caches bounded, nothing secret in reprs.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

import worker.graph.transport as transport_module
from worker.graph import AmbiguousError, GraphClient, GraphError, TransientError, WindowClosedError
from worker.graph.transport import SendTransport

TOKEN = "EAAG+page/token=0123"  # characters that must stay percent-encoded in the query
Seen = list[dict[str, Any]]


@asynccontextmanager
async def serve(answer: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def recorder(seen: Seen, **reply: Any) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        seen.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        return web.json_response(reply.get("json", {"message_id": "m_1"}), status=reply.get("status", 200))

    return answer


def test_request_goes_out_as_built_and_answer_comes_back() -> None:
    seen: Seen = []

    async def go() -> httpx.Response:
        async with serve(recorder(seen, json={"recipient_id": "p1", "message_id": "m_1"})) as base:
            url = httpx.URL(f"{base}/v25.0/100/messages", params={"access_token": TOKEN})
            transport = SendTransport(max_connections=4)
            try:
                request = httpx.Request(
                    "POST", url, content=b'{"a":1}', headers={"Content-Type": "application/json"}
                )
                return await transport.handle_async_request(request)
            finally:
                await transport.aclose()

    response = asyncio.run(go())
    (call,) = seen
    assert call["method"] == "POST"
    assert call["query"] == {"access_token": TOKEN}
    assert "%2B" in call["raw_path"]
    assert "%2F" in call["raw_path"]
    assert call["body"] == b'{"a":1}'
    assert call["headers"]["Content-Type"] == "application/json"
    assert call["headers"]["Content-Length"] == "7"
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.stream, httpx.ByteStream)  # the body is already in memory
    assert orjson.loads(b"".join(response.stream)) == {"recipient_id": "p1", "message_id": "m_1"}
    assert response.reason_phrase == "OK"
    assert response.http_version == "HTTP/1.1"


def run_client(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    read_timeout: float = 5.0,
    calls: int = 1,
) -> list[Any]:
    """``calls`` sends through a GraphClient on the default transport; each result or error."""

    async def go() -> list[Any]:
        async with serve(answer) as base:
            client = GraphClient(f"{base}/v25.0", connect_timeout=2.0, read_timeout=read_timeout)
            out: list[Any] = []
            try:
                for i in range(calls):
                    try:
                        out.append(await client.send("100", TOKEN, {"recipient": {"id": f"p{i}"}}))
                    except GraphError as exc:
                        out.append(exc)
            finally:
                await client.aclose()
            return out

    return asyncio.run(go())


def test_graph_client_sends_what_httpx_would() -> None:
    seen: Seen = []
    (result,) = run_client(recorder(seen))
    assert result.message_id == "m_1"
    assert result.http_status == 200
    (call,) = seen
    assert call["raw_path"].startswith("/v25.0/100/messages?access_token=")
    assert orjson.loads(call["body"]) == {"recipient": {"id": "p0"}}
    headers = call["headers"]
    assert headers["Host"].startswith("127.0.0.1:")
    assert (headers["Content-Type"], headers["Accept"]) == ("application/json", "application/json")
    assert headers["Accept-Encoding"] == "identity"  # small JSON answers: no compression asked for
    assert headers["Content-Length"] == str(len(call["body"]))


def test_graph_error_body_is_classified() -> None:
    body = {"error": {"code": 10, "error_subcode": 2018278, "message": "outside window", "fbtrace_id": "T1"}}
    (error,) = run_client(recorder([], json=body, status=400))
    assert type(error) is WindowClosedError
    assert (error.info.code, error.info.subcode, error.info.fbtrace_id) == (10, 2018278, "T1")


def test_compressed_answer_is_decoded() -> None:
    async def answer(_request: web.Request) -> web.StreamResponse:
        payload = gzip.compress(orjson.dumps({"message_id": "m_gz"}))
        return web.Response(
            body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    (result,) = run_client(answer)
    assert result.message_id == "m_gz"


def test_read_timeout_is_ambiguous_and_connection_is_not_reused_broken() -> None:
    calls = 0

    async def answer(_request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(1.0)
        return web.json_response({"message_id": f"m_{calls}"})

    first, second = run_client(answer, read_timeout=0.2, calls=2)
    assert type(first) is AmbiguousError  # the request was sent: it may have been delivered
    assert second.message_id == "m_2"


def test_dropped_connection_is_ambiguous() -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.close()  # gone before any answer
        return web.Response()

    (error,) = run_client(answer)
    assert type(error) is AmbiguousError


def test_refused_connection_is_transient() -> None:
    async def go() -> Exception:
        async with serve(recorder([])) as base:
            pass  # the server is gone: its port refuses connections
        client = GraphClient(f"{base}/v25.0", connect_timeout=2.0)
        try:
            with pytest.raises(TransientError) as caught:
                await client.send("100", TOKEN, {"recipient": {"id": "p"}})
            return caught.value
        finally:
            await client.aclose()

    error = asyncio.run(go())
    assert type(error) is TransientError
    assert TOKEN not in str(error)
    assert TOKEN not in repr(error)


def test_caches_are_bounded_and_repr_has_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "CACHE_SIZE", 2)
    seen: Seen = []

    async def go() -> SendTransport:
        async with serve(recorder(seen)) as base:
            transport = SendTransport()
            try:
                for i in range(5):
                    url = httpx.URL(f"{base}/v25.0/100/messages", params={"access_token": f"{TOKEN}{i}"})
                    timeout = {"connect": 1.0, "read": 1.0 + i, "pool": 1.0}
                    request = httpx.Request("POST", url, content=b"{}", extensions={"timeout": timeout})
                    assert (await transport.handle_async_request(request)).status_code == 200
                assert len(transport._urls) <= 2
                assert len(transport._timeouts) <= 2
                return transport
            finally:
                await transport.aclose()
                await transport.aclose()  # idempotent

    transport = asyncio.run(go())
    assert [c["query"]["access_token"] for c in seen] == [f"{TOKEN}{i}" for i in range(5)]
    assert TOKEN not in repr(transport)

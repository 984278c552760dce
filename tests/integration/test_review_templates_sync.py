"""Review of the catalogue's sync from Graph, against a real redis-server with Graph faked at the
transport: a paging cursor that points back, and a template object of the wrong shape."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker.config import Settings
from worker.store import Keys
from worker.templates import (
    TemplateInfo,
    apply_status_events,
    catalogue_known,
    lookup,
    page_templates,
    replace_page,
)
from worker.templates.events import TEMPLATE_STATUS
from worker.templates.sync import SyncError, sync_all, sync_page

pytestmark = pytest.mark.integration
T = TypeVar("T")
PAGE_A, PAGE_B = "910000001", "910000002"


def settings_for(redis_server: RedisServer) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        graph_api_url="https://graph.test",
        key_prefix="rt" + uuid.uuid4().hex[:8],
        page_access_tokens={PAGE_A: "token-a", PAGE_B: "token-b"},
        app_secret="review-templates-app-secret-0123",
        _env_file=None,
    )


def template(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": str(abs(hash(name)) % 10**9),
        "name": name,
        "language": "en_US",
        "status": "APPROVED",
        "components": [{"type": "BODY", "text": "Hi {{1}}"}],
        **fields,
    }


Graph = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def run(settings: Settings, graph: Graph, go: Callable[..., Awaitable[T]]) -> T:
    async def main() -> T:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            async with httpx.AsyncClient(transport=httpx.MockTransport(graph)) as http:
                return await go(client, http)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_cursor_that_points_back_fails_the_sync_at_once_and_keeps_the_catalogue(
    redis_server: RedisServer,
) -> None:
    """Graph answering page 2 with page 1's cursor again: before, 50 calls per page per sync and
    the error 'more than 5000 templates' (for a catalogue of 2); now the second repeat stops it."""
    settings = settings_for(redis_server)
    keys = Keys.of(settings)
    calls: list[str | None] = []

    def graph(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        calls.append(after)
        name = "first_page" if after is None else "looping_page"
        return httpx.Response(
            200,
            json={
                "data": [template(name)],
                "paging": {"cursors": {"before": "QQ", "after": "QUZURVI"}, "next": "https://graph.test/n"},
            },
        )

    old = TemplateInfo("kept_template", "en_US", "APPROVED", 1, updated_at=1.0)

    async def go(client: aioredis.Redis, http: httpx.AsyncClient) -> SyncError:
        await replace_page(client, keys, PAGE_A, [old], 1.0)
        with pytest.raises(SyncError) as failed:
            await sync_page(client, settings, http, PAGE_A, "token-a")
        assert [t.name for t in await page_templates(client, keys, PAGE_A)] == ["kept_template"]
        return failed.value

    error = run(settings, graph, go)
    assert calls == [None, "QUZURVI"]
    assert "repeats" in str(error)


def test_a_template_object_of_the_wrong_shape_does_not_stop_the_sync(redis_server: RedisServer) -> None:
    """One object with ``components`` that is not a list: before, a TypeError out of sync_page
    (not a SyncError: no templates.sync_failed, and sync_all stopped, so the pages after it were
    not synced either); now that template is kept with its parameters unchecked."""
    settings = settings_for(redis_server)
    keys = Keys.of(settings)

    def graph(request: httpx.Request) -> httpx.Response:
        if f"/{PAGE_A}/" in request.url.path:
            data = [template("odd_one", components=5), template("fine_one")]
        else:
            data = [template("on_page_b", components=[{"type": "BUTTONS", "buttons": 7}])]
        return httpx.Response(200, json={"data": data})

    async def go(client: aioredis.Redis, http: httpx.AsyncClient) -> dict[str, Any]:
        synced = await sync_all(client, settings, http)
        odd = await lookup(client, keys, PAGE_A, "odd_one", "en_US")
        fine = await lookup(client, keys, PAGE_A, "fine_one", "en_US")
        other = await lookup(client, keys, PAGE_B, "on_page_b", "en_US")
        known = await catalogue_known(client, keys, PAGE_B)
        return {"synced": synced, "odd": odd, "fine": fine, "other": other, "known": known}

    out = run(settings, graph, go)
    assert out["synced"] == {PAGE_A: 2, PAGE_B: 1}
    assert out["odd"] is not None
    assert (out["odd"].status, out["odd"].parameter_count) == ("APPROVED", None)
    assert out["fine"] is not None
    assert out["fine"].parameter_count == 1
    assert out["other"] is not None
    assert out["other"].buttons == ()
    assert out["known"] is True


def test_a_status_event_applied_while_the_sync_reads_graph_is_not_undone(redis_server: RedisServer) -> None:
    """Graph's listing read before Meta's change, the change's webhook event applied before the
    sync writes: before, the write put the listing's older word back (a template approved
    meanwhile held as PENDING, its messages waiting, until the next sync an hour later)."""
    settings = settings_for(redis_server)
    keys = Keys.of(settings)
    client_box: list[aioredis.Redis] = []

    def event(name: str, status: str) -> dict[str, Any]:
        return {
            "kind": TEMPLATE_STATUS,
            "page_id": PAGE_A,
            "event": status,
            "name": name,
            "language": "en_US",
            "reason": None,
            "timestamp": time.time(),
        }

    async def graph(request: httpx.Request) -> httpx.Response:
        listing = [
            template("new_template", status="PENDING"),
            template("order_update"),
            template("untouched", status="PAUSED"),
        ]
        # Meta changes them right after answering; the webhook's events land during the sync
        events = [
            event("new_template", "APPROVED"),
            event("order_update", "PAUSED"),
            event("created_meanwhile", "APPROVED"),
        ]
        await apply_status_events(client_box[0], keys, events)
        return httpx.Response(200, json={"data": listing})

    async def go(client: aioredis.Redis, http: httpx.AsyncClient) -> dict[str, TemplateInfo]:
        client_box.append(client)
        await sync_page(client, settings, http, PAGE_A, "token-a")
        return {t.name: t for t in await page_templates(client, keys, PAGE_A)}

    held = run(settings, graph, go)
    assert {name: t.status for name, t in held.items()} == {
        "new_template": "APPROVED",
        "order_update": "PAUSED",
        "untouched": "PAUSED",
        "created_meanwhile": "APPROVED",
    }
    assert held["order_update"].parameter_count == 1  # the listing's parameters are kept
    assert held["new_template"].template_id is not None

"""The utility-template catalogue against a real redis-server and the real sandbox: sync (with
paging), the CLI, the intake's check, status events (directly, and signed through the intake's
webhook to a real Celery worker, whose periodic sync fills the catalogue first), and the
sandbox's refusals over HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from tests.conftest import PAGE, RedisServer, Sandbox, wait_until
from worker import metrics
from worker.config import PageTokens, Settings
from worker.messenger.errors import InputError
from worker.messenger.utility import UtilityTemplate, utility_body
from worker.sandbox import sandbox_token
from worker.store import Keys
from worker.templates import (
    TemplateCache,
    apply_status_events,
    catalogue_known,
    check_request,
    lookup,
    page_templates,
    template_state,
)
from worker.templates.events import TEMPLATE_STATUS
from worker.templates.sync import PAGE_LIMIT, SyncError, TemplateRefresher, sync_all, sync_page

pytestmark = pytest.mark.integration
T = TypeVar("T")
APP_SECRET = "templates-app-secret-0123456789"


def run(make: Callable[[aioredis.Redis], Awaitable[T]], settings: Settings) -> T:
    """``make(client)`` on a fresh event loop with its own Redis client."""

    async def main() -> T:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await make(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def page(sandbox: Sandbox) -> Iterator[str]:
    """A page of its own in the shared sandbox, reset to the default catalogue afterwards."""
    page_id = str(700_000_000 + uuid.uuid4().int % 100_000_000)
    yield page_id
    httpx.delete(f"{sandbox.url}/__sandbox/templates", params={"page_id": page_id}, timeout=10)


def settings_for(redis_server: RedisServer, sandbox: Sandbox, page_id: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "graph_api_url": sandbox.url,
        "key_prefix": "tt" + uuid.uuid4().hex[:8],
        "page_access_tokens": {page_id: sandbox_token(page_id)},
        "app_secret": APP_SECRET,
        "_env_file": None,
    }
    values.update(extra)
    return Settings(**values)


def sync(settings: Settings, page_id: str, token: str | None = None) -> int:
    async def go(client: aioredis.Redis) -> int:
        async with httpx.AsyncClient() as http:
            return await sync_page(client, settings, http, page_id, token or sandbox_token(page_id))

    return run(go, settings)


def set_templates(sandbox: Sandbox, page_id: str, rows: list[dict[str, Any]]) -> None:
    httpx.post(
        f"{sandbox.url}/__sandbox/templates", json={"page_id": page_id, "templates": rows}, timeout=10
    ).raise_for_status()


def test_sync_reads_every_page_of_the_listing(redis_server: RedisServer, sandbox: Sandbox, page: str) -> None:
    count = PAGE_LIMIT + 30  # two pages of Graph's answer
    rows = [{"name": f"tpl_{i:04d}", "parameters": i % 3} for i in range(count)]
    rows.append({"name": "tpl_0001", "language": "fr_FR", "status": "PAUSED", "parameters": ["who"]})
    set_templates(sandbox, page, rows)
    settings = settings_for(redis_server, sandbox, page)
    keys = Keys.of(settings)
    assert run(lambda c: catalogue_known(c, keys, page), settings) is False

    assert sync(settings, page) == count + 1
    stored = run(lambda c: page_templates(c, keys, page), settings)
    assert len(stored) == count + 1
    english = run(lambda c: lookup(c, keys, page, "tpl_0005", "en_US"), settings)
    assert english is not None
    assert (english.status, english.parameter_count, english.parameter_names) == ("APPROVED", 2, ())
    french = run(lambda c: lookup(c, keys, page, "tpl_0001", "fr_FR"), settings)
    assert french is not None
    assert (french.status, french.parameter_names, template_state(french)) == ("PAUSED", ("who",), "paused")
    assert run(lambda c: catalogue_known(c, keys, page), settings) is True

    set_templates(sandbox, page, [{"name": "only_one"}])  # a sync replaces the whole catalogue
    assert sync(settings, page) == 1
    assert [t.name for t in run(lambda c: page_templates(c, keys, page), settings)] == ["only_one"]


def test_a_graph_error_keeps_the_old_catalogue(
    redis_server: RedisServer, sandbox: Sandbox, page: str
) -> None:
    settings = settings_for(redis_server, sandbox, page)
    keys = Keys.of(settings)
    assert sync(settings, page) == 5  # the sandbox's default catalogue
    errors = metrics.TEMPLATE_SYNCS.labels("error")._value.get()
    with capture_logs() as logs, pytest.raises(SyncError) as failed:
        sync(settings, page, token="sandbox-token-expired-abc")
    assert (failed.value.code, failed.value.subcode) == (190, 463)
    assert metrics.TEMPLATE_SYNCS.labels("error")._value.get() == errors + 1
    (line,) = [entry for entry in logs if entry["event"] == "templates.sync_failed"]
    assert line["page_id"] == page
    assert line["code"] == 190
    assert "sandbox-token" not in json.dumps(line)
    assert len(run(lambda c: page_templates(c, keys, page), settings)) == 5

    async def all_pages(client: aioredis.Redis) -> dict[str, int | None]:
        async with httpx.AsyncClient() as http:
            return await sync_all(client, settings, http, pages=[page, "not-configured"])

    assert run(all_pages, settings) == {page: 5, "not-configured": None}


def test_the_intake_check(redis_server: RedisServer, sandbox: Sandbox, page: str) -> None:
    settings = settings_for(redis_server, sandbox, page)
    keys = Keys.of(settings)
    now = [0.0]
    cache = TemplateCache(ttl=5.0, clock=lambda: now[0])

    def refused(t: UtilityTemplate) -> str | None:
        now[0] += 10  # past the TTL: read Redis again
        error: InputError | None = None
        try:
            run(lambda c: check_request(c, keys, page, t, cache), settings)
        except InputError as exc:
            error = exc
        if error is None:
            return None
        assert error.status == 422
        assert repr(t.name) in error.message  # every message names the template
        return error.code

    unknown = UtilityTemplate("no_such_template", "en_US", ("a",))
    assert refused(unknown) is None  # the catalogue is not known yet: everything passes
    sync(settings, page)
    assert refused(unknown) == "unknown_utility_template"
    assert refused(UtilityTemplate("order_update", "pt_BR", ("a", "b"))) == "unknown_utility_template"
    # pending approval or paused by Meta: accepted (the worker waits or moves on), not a lost 422
    assert refused(UtilityTemplate("pending_template", "en_US", ("a",))) is None
    assert refused(UtilityTemplate("paused_template", "en_US", ("a",))) is None
    assert refused(UtilityTemplate("paused_template", "en_US", ("a", "b"))) == "utility_template_parameters"
    assert refused(UtilityTemplate("order_update", "en_US", ("a",))) == "utility_template_parameters"
    named = UtilityTemplate("appointment_reminder", "en_US", named=(("name", "A"),))
    assert refused(named) == "utility_template_parameters"
    assert refused(UtilityTemplate("order_update", "en_US", ("a", "b"))) is None
    assert (
        refused(UtilityTemplate("appointment_reminder", "en_US", named=(("time", "9"), ("name", "A"))))
        is None
    )

    ok = UtilityTemplate("order_update", "en_US", ("a", "b"))
    run(lambda c: check_request(c, keys, page, ok, cache), settings)
    reads = cache.reads
    for _ in range(20):  # within the TTL: no Redis round trip
        run(lambda c: check_request(c, keys, page, ok, cache), settings)
    assert cache.reads == reads


def status_event(
    page_id: str, event: str, name: str = "order_update", at: float | None = None
) -> dict[str, Any]:
    return {
        "kind": TEMPLATE_STATUS,
        "page_id": page_id,
        "event": event,
        "name": name,
        "language": "en_US",
        "template_id": "55",
        "reason": None if event == "APPROVED" else "low quality",
        "timestamp": time.time() if at is None else at,
    }


def test_status_events_change_insert_and_are_idempotent(
    redis_server: RedisServer, sandbox: Sandbox, page: str
) -> None:
    settings = settings_for(redis_server, sandbox, page)
    keys = Keys.of(settings)

    def apply(*events: dict[str, Any]) -> int:
        return run(lambda c: apply_status_events(c, keys, list(events)), settings)

    def state(name: str = "order_update") -> str:
        return template_state(run(lambda c: lookup(c, keys, page, name, "en_US"), settings))

    assert apply(status_event(page, "APPROVED", "brand_new")) == 1  # before any sync: inserted
    assert state("brand_new") == "approved"
    sync(settings, page)  # the sync is the truth from now on
    assert state("brand_new") == "unknown"
    paused = status_event(page, "PAUSED")
    assert apply(paused) == 1
    before = run(lambda c: lookup(c, keys, page, "order_update", "en_US"), settings)
    assert apply(paused) == 1  # the same event again: the same entry
    after = run(lambda c: lookup(c, keys, page, "order_update", "en_US"), settings)
    assert before is not None
    assert after is not None
    assert (after, after.updated_at, after.reason) == (before, before.updated_at, "low quality")
    assert after.parameter_count == 2  # what the sync learned is kept
    assert apply(status_event(page, "APPROVED", at=time.time() - 3600)) == 0  # older than the sync
    assert state() == "paused"
    assert apply(status_event(page, "REINSTATED"), status_event(page, "FLAGGED")) == 1
    assert state() == "approved"
    assert apply({"kind": TEMPLATE_STATUS, "page_id": page}, status_event(page, "DISABLED")) == 1
    assert state() == "disabled"


def test_a_signed_webhook_event_pauses_a_template_through_the_worker(make_stack: Any) -> None:
    stack = make_stack(APP_SECRET=APP_SECRET, TEMPLATE_SYNC_SECONDS="600")
    stack.start_intake()
    stack.start_worker()
    client, keys = stack.redis(), stack.keys
    # the worker's periodic sync (one turn for the fleet: the lock) fills every page's catalogue
    assert wait_until(lambda: client.zscore(keys.templates_synced, PAGE) is not None, 30), stack.logs()[-5:]
    assert 0 < client.ttl(keys.templates_lock) <= 600
    stored = orjson.loads(client.hget(keys.templates(PAGE), "order_update|en_US"))
    assert stored["status"] == "APPROVED"

    change = {
        "field": "message_template_status_update",
        "value": {
            "event": "PAUSED",
            "message_template_id": stored["id"],
            "message_template_name": "order_update",
            "message_template_language": "en_US",
            "reason": "Low quality",
        },
    }
    body = orjson.dumps(
        {"object": "page", "entry": [{"id": PAGE, "time": int(time.time()), "changes": [change]}]}
    )
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json"}
    forged = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=body,
        headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        timeout=10,
    )
    assert forged.status_code == 403
    resp = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=body,
        headers={**headers, "X-Hub-Signature-256": signature},
        timeout=10,
    )
    assert resp.json() == {"status": "EVENT_RECEIVED", "events": 1}

    def paused() -> bool:
        raw = client.hget(keys.templates(PAGE), "order_update|en_US")
        return raw is not None and orjson.loads(raw)["status"] == "PAUSED"

    assert wait_until(paused, 20), stack.logs()[-5:]
    assert orjson.loads(client.hget(keys.templates(PAGE), "order_update|en_US"))["reason"] == "Low quality"
    assert any(line.get("event") == "templates.status_changed" for line in stack.logs())

    listed = json.loads(stack.cli("templates", "list", "--page", PAGE, "--json").stdout)
    rows = {t["name"]: t for t in listed[PAGE]["templates"]}
    assert rows["order_update"]["state"] == "paused"
    assert rows["appointment_reminder"]["parameter_names"] == ["name", "time"]
    assert json.loads(stack.cli("templates", "sync", "--page", PAGE).stdout) == {"synced": {PAGE: 5}}
    text = stack.cli("templates", "list", "--page", PAGE).stdout.decode()
    assert "order_update" in text
    assert "APPROVED" in text  # the sync read the sandbox's truth again


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (UtilityTemplate("order_update", "en_US", ("a", "b")), None),
        (UtilityTemplate("no_such", "en_US"), 132001),
        (UtilityTemplate("pending_template", "en_US", ("a",)), 132001),
        (UtilityTemplate("paused_template", "en_US", ("a",)), 132015),
        (UtilityTemplate("order_update", "en_US", ("a",)), 132000),
        (UtilityTemplate("quick_reply_template", "en_US", ("a",)), 100),
        (UtilityTemplate("disabled_template", "en_US"), 132016),
        (UtilityTemplate("rejected_template", "en_US"), 132001),
    ],
)
def test_the_sandbox_refuses_each_state_over_http(
    sandbox: Sandbox, page: str, template: UtilityTemplate, expected: int | None
) -> None:
    for name, status in (("disabled_template", "DISABLED"), ("rejected_template", "REJECTED")):
        httpx.post(
            f"{sandbox.url}/__sandbox/templates",
            json={"page_id": page, "name": name, "status": status},
            timeout=10,
        ).raise_for_status()
    body = utility_body({"recipient": {"id": "outside-t1"}}, template)  # the window does not apply
    resp = httpx.post(
        f"{sandbox.url}/v25.0/{page}/messages",
        params={"access_token": sandbox_token(page)},
        json=body,
        timeout=10,
    )
    assert resp.json().get("error", {}).get("code") == expected
    assert resp.status_code == (200 if expected is None else 400)


def test_one_refresher_takes_the_turn_and_concurrent_checks_share_a_read(
    redis_server: RedisServer, sandbox: Sandbox, page: str
) -> None:
    settings = settings_for(redis_server, sandbox, page, template_sync_seconds=120)
    keys = Keys.of(settings)
    tokens = PageTokens(settings)

    async def turns(client: aioredis.Redis) -> list[bool]:
        return [await TemplateRefresher(client, settings, tokens).due() for _ in range(3)]

    assert run(turns, settings) == [True, False, False]  # the lock lasts the interval
    assert 110 < redis_server.client().ttl(keys.templates_lock) <= 120
    sync(settings, page)
    cache = TemplateCache()
    wanted = UtilityTemplate("order_update", "en_US", ("a", "b"))

    async def many(client: aioredis.Redis) -> None:
        await asyncio.gather(*(check_request(client, keys, page, wanted, cache) for _ in range(50)))

    run(many, settings)
    assert cache.reads == 1

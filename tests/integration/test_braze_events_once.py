"""Braze's custom events are not idempotent (two ``messenger_delivery`` events are two in every
Braze report), so each is written by the script that decides it, against a real redis-server:
an outcome's by record.lua with a fresh write only, a cancel's by the script that cancels, a
receipt's by receipts.lua with its mark. A write sent again after its answer was lost, or a
webhook applied again, adds none; a receipt's event cannot be lost between its mark and its
enqueue."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import datetime
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import PAGE, RedisServer
from tests.integration.test_fence import accept, claim, make_settings, run, sent
from worker import campaigns
from worker.braze import BrazeOutbox
from worker.braze.items import (
    DELIVERED_EVENT,
    OUTCOME_EVENT,
    READ_EVENT,
    build_request,
    check_item,
    outcome_event_item,
    receipt_event_item,
)
from worker.config import PageTokens, Settings
from worker.delivery.model import Outcome
from worker.delivery.observers import default_observers
from worker.delivery.receipts import apply_receipts
from worker.delivery.recorder import Recorder
from worker.graph import SendResult
from worker.states import Event, State
from worker.store import Keys, campaign_ctx, outcomes

pytestmark = pytest.mark.integration

#: Never called: the drainer is not started here; the outbox is what is looked at.
BRAZE = {"braze_rest_url": "http://127.0.0.1:9", "braze_api_key": "test-braze-key-0000"}


def braze_settings(redis: RedisServer, **kw: Any) -> Settings:
    return make_settings(redis, braze_outcome_events=True, braze_receipt_events=True, **BRAZE, **kw)


async def write(client: aioredis.Redis, s: Settings, *decided: Outcome) -> list[int]:
    """As the engine writes: with its observers (Braze feedback included)."""
    recorder = Recorder(client, s, PageTokens(s, source=""), default_observers(s, s.braze_psid_attribute))
    await asyncio.gather(*(recorder.record(o) for o in decided))
    return [o.written for o in decided]


async def events(client: aioredis.Redis, s: Settings) -> list[dict[str, Any]]:
    """The outbox's events, oldest first, each as the drainer will read it."""
    raws = await client.lrange(Keys.of(s).braze_outbox, 0, -1)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    items = [check_item(orjson.loads(raw)) for raw in reversed(raws)]
    build_request(items)  # what the drainer makes of them: a malformed item raises
    return [i for i in items if i["type"] == "event"]


def shape(item: dict[str, Any]) -> dict[str, Any]:
    """An event without its time (compared on its own)."""
    return {k: v for k, v in item.items() if k != "time"}


def test_an_outcome_event_is_written_once_whatever_retries_the_write(redis_server: RedisServer) -> None:
    """Before, the observer's LPUSH rode in the pipeline beside record.lua: a write sent again
    after its answer was lost (the recorder's retry) pushed the events again, and a write the
    fence refused (another claim decides) pushed one for an outcome that was never recorded."""
    s = braze_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b", "c"], external_id="user-1", campaign_id="camp-9")
        a, b, c = await claim(client, s, "w1.1", ["a", "b", "c"])
        failed = Outcome(b, Event.FAIL, reason="permanent")
        assert await write(client, s, sent(a), failed) == [1, 1]
        assert await write(client, s, sent(a), Outcome(b, Event.FAIL, reason="permanent")) == [2, 2]
        late = Outcome(dataclasses.replace(c, claim="w9.9"), Event.FAIL, reason="permanent")
        assert await write(client, s, late) == [0]
        written = await events(client, s)
        attribution = {"campaign_id": "camp-9"}
        assert [shape(e) for e in written] == [
            shape(outcome_event_item("user-1", State.SENT.value, "a", None, attribution=attribution)),
            shape(
                outcome_event_item("user-1", State.FAILED.value, "b", "permanent", attribution=attribution)
            ),
        ]
        assert all(e["name"] == OUTCOME_EVENT for e in written)

    run(s, go)


def test_every_cancel_writes_its_outcome_event(redis_server: RedisServer) -> None:
    """The README says every final outcome becomes a ``messenger_delivery`` event; cancels were
    written by scripts that pushed none: an operator's cancel (cancel.lua), a held delivery's
    next outcome written CANCELLED instead (record.lua) and a stopped campaign's delivery ended
    at its claim (claim.lua). Each now writes one, with its reason, and only once."""
    s = braze_settings(redis_server)

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b"], external_id="user-2", campaign_id="camp-1")
        await accept(client, s, ["c"], external_id="user-3", campaign_id="camp-2")
        assert await campaigns.cancel_delivery(client, s, "a") is True  # not held: ended here
        assert await campaigns.cancel_delivery(client, s, "a") is False  # already ended: nothing
        (held,) = await claim(client, s, "w1.1", ["b"])
        assert await campaigns.cancel_delivery(client, s, "b") is False  # held: marked
        retry = Outcome(held, Event.RETRY, reason="throttled", delay=30)
        assert await write(client, s, retry) == [1]
        assert retry.status is State.CANCELLED
        await campaigns.stop(client, s, "camp-2", by="test")
        assert await claim(client, s, "w1.2", ["c"]) == []  # ended at its claim, no call
        written = await events(client, s)
        assert [(e["external_id"], e["properties"]) for e in written] == [
            (
                "user-2",
                {"status": "cancelled", "delivery_id": "a", "reason": "operator", "campaign_id": "camp-1"},
            ),
            (
                "user-2",
                {"status": "cancelled", "delivery_id": "b", "reason": "operator", "campaign_id": "camp-1"},
            ),
            (
                "user-3",
                {
                    "status": "cancelled",
                    "delivery_id": "c",
                    "reason": "campaign_stopped",
                    "campaign_id": "camp-2",
                },
            ),
        ]
        assert {e["name"] for e in written} == {OUTCOME_EVENT}
        for e in written:  # now, as a Braze time
            assert abs(_epoch(e["time"]) - time.time()) < 30

    run(s, go)


def test_without_outcome_events_no_script_writes_one(redis_server: RedisServer) -> None:
    s = make_settings(redis_server, braze_outcome_events=False, **BRAZE)
    assert campaign_ctx.of_settings(Keys.of(s), s, time.time())[-2:] == ["", ""]
    no_braze = make_settings(redis_server, braze_outcome_events=True)  # no Braze configured
    assert campaign_ctx.of_settings(Keys.of(no_braze), no_braze, time.time())[-2:] == ["", ""]

    async def go(client: aioredis.Redis) -> None:
        await accept(client, s, ["a", "b"], external_id="user-4")
        assert await campaigns.cancel_delivery(client, s, "a") is True
        (b,) = await claim(client, s, "w1.1", ["b"])
        assert await write(client, s, sent(b)) == [1]
        assert await client.exists(Keys.of(s).braze_outbox) == 0

    run(s, go)


def _canonical(item: dict[str, Any]) -> bytes:
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _sent_outcomes(client: aioredis.Redis, s: Settings, users: dict[str, str], at: float) -> None:
    """Sent deliveries as outcomes, each its recipient's unread delivery (as record.lua leaves them)."""
    await accept(client, s, list(users), campaign_id="camp-r")
    for delivery_id, user in users.items():
        await client.hset(Keys.of(s).delivery(delivery_id), "external_id", user)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    claimed = await claim(client, s, "w1.1", list(users))
    # one recipient for all of them: their read receipt is one event
    one = [dataclasses.replace(d, psid="psid-r") for d in claimed]
    done = [
        Outcome(d, Event.SEND_OK, result=SendResult(f"m_{d.id}", d.psid, 200, 50.0, started_at=at))
        for d in one
    ]
    assert await write(client, s, *done) == [1] * len(done)
    await client.delete(Keys.of(s).braze_outbox)  # the outcome events: not what is looked at here


def test_a_receipts_events_are_written_with_its_marks_at_the_receipts_time(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, apply_receipts enqueued the events after receipts.lua had marked the deliveries:
    a failure in between (Redis, the process) lost them for good, since the webhook applied again
    marks nothing new; and each event had the time it was processed, not the receipt's."""
    s = braze_settings(redis_server)
    now = time.time()

    async def refuse(*_: Any, **__: Any) -> None:
        raise ConnectionError("the outbox's own call fails")

    monkeypatch.setattr(BrazeOutbox, "enqueue", refuse)

    async def go(client: aioredis.Redis) -> None:
        await _sent_outcomes(client, s, {"r1": "user-5", "r2": "user-6"}, now - 300)
        read_at = now - 100
        read = {
            "kind": "read",
            "page_id": PAGE,
            "psid": "psid-r",
            "watermark": now - 200,
            "timestamp": read_at,
        }
        assert await apply_receipts(client, s, [read]) == 4  # delivered and read, each
        assert await apply_receipts(client, s, [read]) == 0  # Meta's retry: nothing new
        written = await events(client, s)
        attribution = {"campaign_id": "camp-r"}
        expected = [
            receipt_event_item(user, name, delivery_id, read_at, attribution)
            for delivery_id, user in (("r1", "user-5"), ("r2", "user-6"))
            for name in (DELIVERED_EVENT, READ_EVENT)
        ]
        assert sorted(written, key=_canonical) == sorted(expected, key=_canonical)
        for delivery_id in ("r1", "r2"):
            rec = await outcomes.read(client, Keys.of(s), delivery_id, s.record_retention)
            assert "external_id" not in rec  # the Braze user goes with the read receipt

    run(s, go)

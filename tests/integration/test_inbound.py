"""worker.delivery.inbound against a real redis-server: who a PSID gets linked to, and that late,
retried or replayed webhook events cannot move a user's last interaction back.

Each test here fails on the code before signed refs: it linked any ``braze_<id>``, moved a
linked PSID to whoever came last, wrote the window with a plain SET and had no idea of mids.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker import metrics
from worker.config import Settings
from worker.delivery.inbound import MID_MEMORY_SECONDS, record_events
from worker.messenger.refs import sign_ref
from worker.messenger.webhook import AD_WINDOW_SECONDS, WINDOW_SECONDS, event_to_dict, parse_events
from worker.store import Keys
from worker.store.windows import window_closed
from worker.templates import TEMPLATE_STATUS

pytestmark = pytest.mark.integration

LINK_SECRET = "link-secret-for-tests-0123456789abcdef"
PAGE = "100"


def make_settings(redis_server: RedisServer, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_server.url,
        "key_prefix": "ti" + uuid.uuid4().hex[:8],
        "queue_name": "qi" + uuid.uuid4().hex[:8],
        "link_secret": LINK_SECRET,
        "braze_rest_url": "http://127.0.0.1:9",
        "braze_api_key": "braze-key-for-tests-5555",
        "_env_file": None,
    }
    values.update(extra)
    return Settings(**values)


def event(
    psid: str, *, ref: str | None = None, mid: str | None = None, at: float | None = None
) -> dict[str, Any]:
    return {
        "page_id": PAGE,
        "psid": psid,
        "timestamp": time.time() if at is None else at,
        "kind": "referral" if ref else "message",
        "ref": ref,
        "opens_window": True,
        "mid": mid,
    }


def signed(external_id: str, page: str = PAGE) -> str:
    return sign_ref(LINK_SECRET, page, external_id, int(time.time()) + 3600)


def record(settings: Settings, *events: dict[str, Any]) -> dict[str, int]:
    async def main() -> dict[str, int]:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await record_events(client, settings, list(events))
        finally:
            await client.aclose()

    return asyncio.run(main())


def linked(redis_server: RedisServer, settings: Settings, psid: str) -> str | None:
    value = redis_server.client().get(Keys.of(settings).external(PAGE, psid))
    return value.decode() if value is not None else None


def braze_writes(redis_server: RedisServer, settings: Settings) -> list[dict[str, Any]]:
    raw = redis_server.client().lrange(Keys.of(settings).braze_outbox, 0, -1)
    return [orjson.loads(r) for r in reversed(raw)]


def counter(metric: Any, *labels: str) -> float:
    value: float = (metric.labels(*labels) if labels else metric)._value.get()
    return value


# ------------------------------------------------------------------------------------------------
# Linking


def test_a_signed_ref_links_and_writes_braze(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    record(settings, event("psid-1", ref=signed("user-42")))
    assert linked(redis_server, settings, "psid-1") == "user-42"
    (write,) = braze_writes(redis_server, settings)
    assert write["external_id"] == "user-42"
    assert write["attributes"]["messenger_id"] == "psid-1"


def test_a_moved_pages_copy_for_its_old_shard_opens_the_window_but_links_nothing(
    redis_server: RedisServer,
) -> None:
    """The intake copies a moved page's events to the shard it came from, marked local, while
    that shard still sends for it (worker/intake/routes/webhook.py): the window and receipts
    there, but the Braze link is the page's own shard's to make, once."""
    settings = make_settings(redis_server)
    record(settings, {**event("psid-9", ref=signed("user-9")), "local": True})
    assert linked(redis_server, settings, "psid-9") is None
    assert braze_writes(redis_server, settings) == []
    assert redis_server.client().exists(Keys.of(settings).window(PAGE, "psid-9"))


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("braze_victim-1", "unsigned"),
        (sign_ref("some-other-secret-0123456789abcdef", PAGE, "victim-1", 2**32), "bad_signature"),
        (sign_ref(LINK_SECRET, "999", "victim-1", 2**32), "bad_signature"),  # made for another page
        (sign_ref(LINK_SECRET, PAGE, "victim-1", 1_000_000), "link_expired"),
        ("braze_victim 1", "malformed"),
    ],
)
def test_a_ref_that_proves_nothing_links_nothing_but_opens_the_window(
    redis_server: RedisServer, ref: str, reason: str
) -> None:
    settings = make_settings(redis_server)
    before = counter(metrics.LINK_REFUSALS, reason)
    record(settings, event("attacker-psid", ref=ref))
    assert linked(redis_server, settings, "attacker-psid") is None
    assert braze_writes(redis_server, settings) == []
    assert counter(metrics.LINK_REFUSALS, reason) == before + 1
    assert redis_server.client().get(Keys.of(settings).window(PAGE, "attacker-psid")) is not None


def test_without_link_secret_no_ref_links(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server, link_secret=None)
    before = counter(metrics.LINK_REFUSALS, "disabled")
    record(settings, event("psid-1", ref=signed("user-42")), event("psid-2", ref="braze_user-43"))
    assert linked(redis_server, settings, "psid-1") is None
    assert linked(redis_server, settings, "psid-2") is None
    assert braze_writes(redis_server, settings) == []
    assert counter(metrics.LINK_REFUSALS, "disabled") == before + 2


def test_keep_a_linked_psid_stays_with_its_first_user(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)  # LINK_CONFLICT_POLICY=keep is the default
    before = counter(metrics.LINK_CONFLICTS, "kept")
    record(settings, event("psid-1", ref=signed("user-a")))
    record(settings, event("psid-1", ref=signed("user-b")))
    assert linked(redis_server, settings, "psid-1") == "user-a"
    assert [w["external_id"] for w in braze_writes(redis_server, settings)] == ["user-a"]
    assert counter(metrics.LINK_CONFLICTS, "kept") == before + 1


def test_replace_moves_the_psid_explicitly(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server, link_conflict_policy="replace")
    before = counter(metrics.LINK_CONFLICTS, "replaced")
    record(settings, event("psid-1", ref=signed("user-a")))
    record(settings, event("psid-1", ref=signed("user-b")))
    assert linked(redis_server, settings, "psid-1") == "user-b"
    assert [w["external_id"] for w in braze_writes(redis_server, settings)] == ["user-a", "user-b"]
    assert counter(metrics.LINK_CONFLICTS, "replaced") == before + 1


def test_the_same_link_again_and_a_second_psid_for_one_user(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    before = counter(metrics.LINK_CONFLICTS, "kept")
    record(settings, event("psid-1", ref=signed("user-a")))
    record(settings, event("psid-1", ref=signed("user-a")))  # the user opened the link again
    record(settings, event("psid-2", ref=signed("user-a")))  # another Messenger account
    assert linked(redis_server, settings, "psid-1") == "user-a"
    assert linked(redis_server, settings, "psid-2") == "user-a"
    writes = braze_writes(redis_server, settings)
    assert [w["attributes"]["messenger_id"] for w in writes] == ["psid-1", "psid-1", "psid-2"]
    assert counter(metrics.LINK_CONFLICTS, "kept") == before  # none of these is a conflict


# ------------------------------------------------------------------------------------------------
# Window: set only if newer; duplicate mids ignored


def window(redis_server: RedisServer, settings: Settings, psid: str) -> float:
    """When the PSID's window closes, minus the standard window: its last interaction."""
    value = redis_server.client().get(Keys.of(settings).window(PAGE, psid))
    assert value is not None
    return float(value) - WINDOW_SECONDS


def test_a_late_event_never_moves_the_last_interaction_back(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    now = time.time()
    record(settings, event("psid-1", at=now - 10))
    record(settings, event("psid-1", at=now - 3600))  # late, no mid: a retried or replayed referral
    assert window(redis_server, settings, "psid-1") == pytest.approx(now - 10)
    record(settings, event("psid-1", at=now - 5))
    assert window(redis_server, settings, "psid-1") == pytest.approx(now - 5)


def test_a_learned_closed_window_is_opened_by_a_new_interaction(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    client, keys = redis_server.client(), Keys.of(settings)
    now = time.time()
    client.set(keys.window_closed(PAGE, "psid-1"), repr(now - 60), ex=settings.window_recheck_seconds)

    def state() -> bool | None:
        until, closed = (
            client.get(keys.window(PAGE, "psid-1")),
            client.get(keys.window_closed(PAGE, "psid-1")),
        )
        return window_closed(
            None if until is None else until.decode(),
            None if closed is None else closed.decode(),
            time.time(),
            settings.window_recheck_seconds,
        )

    assert state() is True  # Graph said closed a minute ago
    record(settings, event("psid-1", at=now - 1))
    assert window(redis_server, settings, "psid-1") == pytest.approx(now - 1)
    assert state() is False  # the user wrote since


def test_standby_and_ad_referral_events_open_the_window(redis_server: RedisServer) -> None:
    """A user who writes while another app holds the thread (standby) reopens the window; one
    from a Click-to-Messenger ad opens the 7-day window."""
    settings = make_settings(redis_server)
    now = time.time()
    payload = {
        "object": "page",
        "entry": [
            {
                "id": PAGE,
                "time": int(now * 1000),
                "standby": [
                    {
                        "sender": {"id": "psid-s"},
                        "recipient": {"id": PAGE},
                        "timestamp": int(now * 1000),
                        "message": {"mid": "m_s", "text": "hi"},
                    }
                ],
                "messaging": [
                    {
                        "sender": {"id": "psid-ad"},
                        "recipient": {"id": PAGE},
                        "timestamp": int(now * 1000),
                        "message": {"mid": "m_ad", "text": "hi"},
                        "referral": {"source": "ADS", "type": "OPEN_THREAD", "ad_id": "1"},
                    }
                ],
            }
        ],
    }
    events = [event_to_dict(e) for e in parse_events(payload)]
    assert [(e["psid"], e["standby"], e["window_seconds"]) for e in events] == [
        ("psid-ad", False, AD_WINDOW_SECONDS),
        ("psid-s", True, WINDOW_SECONDS),
    ]
    assert record(settings, *events)["engaged"] == 2
    assert window(redis_server, settings, "psid-s") == pytest.approx(now, abs=1)
    assert window(redis_server, settings, "psid-ad") == pytest.approx(
        now + AD_WINDOW_SECONDS - WINDOW_SECONDS, abs=1
    )
    record(settings, event("psid-ad", at=now + 0.5))  # a plain message does not shorten it
    assert window(redis_server, settings, "psid-ad") == pytest.approx(
        now + AD_WINDOW_SECONDS - WINDOW_SECONDS, abs=1
    )


def test_a_future_timestamp_is_taken_as_now(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    record(settings, event("psid-1", at=time.time() + 10 * 86_400))
    assert window(redis_server, settings, "psid-1") <= time.time()


def test_a_duplicate_mid_is_ignored(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    client = redis_server.client()
    keys = Keys.of(settings)
    now = time.time()
    before = counter(metrics.INBOUND_DUPLICATES)
    first = record(settings, event("psid-1", mid="m_1", at=now - 60), event("psid-1", mid="m_1", at=now - 60))
    assert (first["events"], first["duplicates"]) == (2, 1)
    assert 0 < client.ttl(keys.inbound_mid(PAGE, "m_1")) <= MID_MEMORY_SECONDS
    # Meta sends it again later, with another timestamp: ignored (and not a second release)
    client.delete(keys.window(PAGE, "psid-1"))
    again = record(settings, event("psid-1", mid="m_1", at=now - 30))
    assert (again["duplicates"], again["engaged"]) == (1, 0)
    assert client.get(keys.window(PAGE, "psid-1")) is None
    assert counter(metrics.INBOUND_DUPLICATES) == before + 2
    # another page's message with the same id is another message
    other = record(settings, {**event("psid-1", mid="m_1"), "page_id": "200"})
    assert other["duplicates"] == 0


def test_a_duplicate_postback_does_not_link_again(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server, link_conflict_policy="replace")
    record(settings, event("psid-1", ref=signed("user-a"), mid="m_pb_1"))
    record(settings, event("psid-1", ref=signed("user-b"), mid="m_pb_2"))
    record(settings, event("psid-1", ref=signed("user-a"), mid="m_pb_1"))  # a replay of the first
    assert linked(redis_server, settings, "psid-1") == "user-b"


def test_only_a_forward_move_releases_parked_deliveries(redis_server: RedisServer) -> None:
    settings = make_settings(redis_server)
    client = redis_server.client()
    keys = Keys.of(settings)
    now = time.time()
    record(settings, event("psid-1", at=now - 10))
    client.zadd(keys.park(PAGE, "psid-1"), {"d-parked": now})
    client.hset(keys.delivery("d-parked"), mapping={"status": "parked"})
    assert record(settings, event("psid-1", at=now - 100))["released"] == 0  # late: not a re-engagement
    assert record(settings, event("psid-1", at=now - 1))["released"] == 1


def test_template_status_events_of_pages_not_served_are_ignored(redis_server: RedisServer) -> None:
    """Meta sends message_template_status_update for every page subscribed to the app: another
    page's event made a catalogue hash that nothing reads and nothing expires."""
    settings = make_settings(redis_server, page_access_tokens={PAGE: "page-token-100-abcdef"})
    keys = Keys.of(settings)
    status = {"kind": TEMPLATE_STATUS, "event": "APPROVED", "name": "order_update", "language": "en_US"}
    counts = record(settings, {**status, "page_id": PAGE}, {**status, "page_id": "999"})
    assert counts["templates"] == 1
    client = redis_server.client()
    assert client.exists(keys.templates(PAGE)) == 1
    assert client.exists(keys.templates("999")) == 0

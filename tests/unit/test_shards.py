"""Shard routing (worker/store/shards.py), the settings that configure it, and the merges that
read across shards (worker/fleet.py, worker/status.py). The behaviour with two real
redis-servers is tests/integration/test_shards.py."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from worker import status
from worker.config import Settings
from worker.fleet import merge_campaign
from worker.status import PausedPage, Status
from worker.store import shards

URLS = "redis://127.0.0.1:7000/0,redis://127.0.0.1:7001/0,redis://127.0.0.1:7002/0"


def three(**extra: object) -> Settings:
    return Settings(redis_shards=URLS, **extra)  # type: ignore[arg-type]  # pydantic parses the CSV


def test_one_redis_is_one_shard_and_ids_stay_random() -> None:
    s = Settings()
    assert shards.count(s) == 1
    assert shards.of_page(s, "any") == 0
    assert shards.every(s) == [s]
    ids = {shards.new_delivery_id(s) for _ in range(200)}
    assert len({i[:2] for i in ids}) > 50  # the first byte is random, not a shard index
    assert all(shards.holders(s, i) == [0] for i in ids)


def test_pages_spread_over_shards_and_pins_win() -> None:
    s = three(shard_pages='{"p7": 2}')
    spread = Counter(shards.of_page(s, f"page-{i}") for i in range(3000))
    assert set(spread) == {0, 1, 2}
    assert min(spread.values()) > 800  # about a third each
    assert shards.of_page(s, "p7") == 2
    assert shards.of_page(s, "page-1") == shards.of_page(three(), "page-1")  # stable across processes


def test_adding_a_shard_moves_only_pages_the_new_shard_wins() -> None:
    two = Settings(redis_shards=URLS.rsplit(",", 1)[0])
    s3 = three()
    moved = [p for p in (f"page-{i}" for i in range(3000)) if shards.of_page(two, p) != shards.of_page(s3, p)]
    assert all(shards.of_page(s3, p) == 2 for p in moved)
    assert 700 < len(moved) < 1300


def test_a_delivery_id_names_its_shard() -> None:
    s = three()
    for index in range(3):
        shard = shards.settings_for(s, index)
        assert shard.redis_url == s.redis_shards[index]
        delivery_id = shards.new_delivery_id(shard)
        assert len(delivery_id) == 32
        # its shard first; then shard 0, which holds the ids issued before shards
        assert shards.holders(s, delivery_id) == ([0] if index == 0 else [index, 0])
    assert shards.holders(s, "ff" + "0" * 30) == [0]  # names no shard: an id of before shards
    assert shards.holders(s, "zz-not-hex") == []  # not an id we issued


def test_shard_index_selects_the_redis_and_the_pages() -> None:
    s = three(shard_index=1)
    assert s.redis_url == "redis://127.0.0.1:7001/0"
    mine = [p for p in (f"page-{i}" for i in range(300)) if shards.owns_page(s, p)]
    assert mine
    assert all(shards.of_page(s, p) == 1 for p in mine)
    assert shards.owns_page(three(), "page-1")  # the intake (no index) owns every page


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"redis_shards": "redis://a:1/0,redis://a:1/0"}, "each named once"),
        ({"redis_shards": "redis://a:1/0,http://b/0"}, "REDIS_SHARDS must be a redis://"),
        ({"redis_shards": URLS, "shard_index": 3}, "SHARD_INDEX must name one of"),
        ({"shard_index": 0}, "SHARD_INDEX must name one of"),
        ({"redis_shards": URLS, "shard_pages": '{"p": 5}'}, "SHARD_PAGES"),
        # one Redis spelt two ways: one keyspace and one queue, no capacity added
        (
            {"redis_shards": "redis://127.0.0.1:16390/0,redis://localhost:16390"},
            "shards 0 and 1 name the same Redis",
        ),
        ({"redis_shards": "redis://h:6379/2,rediss://:pw@H/2"}, "shards 0 and 1 name the same Redis"),
        (
            {"redis_shards": "redis://h/0,redis://x/0,redis://h:6379?db=0"},
            "shards 0 and 2 name the same Redis",
        ),
        # one REDIS_SENTINEL_MASTER: a sentinel node in both asks for the same master
        (
            {
                "redis_shards": "sentinel://s1:26379;sentinel://s2:26379/0,sentinel://s2:26379;sentinel://s3:26379/0"
            },
            "shards 0 and 1 name the same Redis",
        ),
        ({"redis_shards": URLS, "shard_pages": '{" 900": 1}'}, "has spaces"),
    ],
)
def test_bad_shard_settings_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**extra)  # type: ignore[arg-type]  # pydantic parses the strings


def test_distinct_redis_servers_and_databases_are_distinct_shards() -> None:
    urls = "redis://h:6379/0,redis://h:6379/1,redis://h:6380/0,unix:///run/r.sock,sentinel://s1:26379/0,sentinel://s9:26379/0"
    s = Settings(redis_shards=urls, _env_file=None)  # pydantic parses the string
    assert len(s.redis_shards) == 6


def test_a_campaign_over_two_shards_adds_up() -> None:
    a = {
        "campaign_id": "c",
        "accepted": 5,
        "sent": 3,
        "open": 2,
        "failed_reasons": {"x": 1},
        "stopped": False,
        "first_at": 10.0,
        "last_at": 20.0,
    }
    b = {
        "campaign_id": "c",
        "accepted": 4,
        "sent": 4,
        "open": 0,
        "failed_reasons": {"x": 2, "y": 1},
        "stopped": True,
        "stopped_at": 15.0,
        "stopped_by": "api:me",
        "first_at": 5.0,
        "last_at": 30.0,
    }
    merged = merge_campaign([a, b])
    assert merged["accepted"] == 9
    assert merged["sent"] == 7
    assert merged["open"] == 2
    assert merged["failed_reasons"] == {"x": 3, "y": 1}
    assert merged["stopped"] is True
    assert merged["stopped_by"] == "api:me"
    assert (merged["first_at"], merged["last_at"]) == (5.0, 30.0)


def test_statuses_merge() -> None:
    def one(open_: int, oldest: float, sent: float, failed: float, page: str) -> Status:
        return Status(
            queue_depth=1,
            in_flight_batches=0,
            open=open_,
            oldest_open_age_s=oldest,
            scheduled=0,
            parked=0,
            dead_letters=1,
            paused_pages=[PausedPage(page, 1.0, "x", None)],
            rates={"sent_per_s": sent, "failed_per_s": failed, "dead_per_s": 0.0, "expired_per_s": 0.0},
        )

    merged = status.merge([one(3, 1.5, 9.0, 1.0, "a"), one(4, 7.0, 10.0, 0.0, "b")])
    assert merged.open == 7
    assert merged.dead_letters == 2
    assert merged.oldest_open_age_s == 7.0
    assert merged.rates["sent_per_s"] == 19.0
    assert merged.rates["failure_ratio"] == 0.05
    assert [p.page_id for p in merged.paused_pages] == ["a", "b"]


def test_redis_urls_stay_out_of_the_repr() -> None:
    s = Settings(redis_url="redis://:url-secret-1@h:6379/0", redis_shards="redis://:shard-secret-2@h0/0")
    shown = repr(s) + str(s) + repr(shards.settings_for(s, 0))
    assert "url-secret-1" not in shown
    assert "shard-secret-2" not in shown

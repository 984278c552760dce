"""The read model's backlog age leaves parked deliveries out, and it reports Redis's memory: the
two inputs of the backlog and memory alerts (deploy/prometheus/alerts.yml). Real redis-server."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import RedisServer

pytestmark = pytest.mark.integration


def test_parked_deliveries_are_not_an_old_backlog(redis_server: RedisServer) -> None:
    from worker import status
    from worker.config import Settings
    from worker.store import Keys

    settings = Settings(_env_file=None, key_prefix="t" + uuid.uuid4().hex[:8])
    keys = Keys.of(settings)
    client = redis_server.client()
    now = time.time()
    # counted per second (worker/store/ages.py): a parked delivery is not counted there
    second = str(int(now - 30))
    client.hincrby(keys.open_counts, second, 1)
    client.zadd(keys.open_seconds, {second: int(second)})
    client.zadd(keys.parked, {"parked-old": now - 5_000})
    client.zadd(keys.pending, {"parked-old": now + 60, "waiting": now + 60})
    current = status.read(client, settings, now=now)
    assert 29 <= current.oldest_open_age_s <= 31, current.oldest_open_age_s
    assert current.open == 2  # pending's size: parked deliveries are open
    assert current.parked == 1
    assert current.redis_used_memory > 0
    client.delete(keys.open_counts, keys.open_seconds)
    assert status.read(client, settings, now=now).oldest_open_age_s == 0.0  # only parked ones
    # the set before the counts (an upgrade): read while it has members, its parked ones skipped
    client.zadd(keys.open, {"parked-old": now - 5_000, "waiting": now - 30})
    legacy = status.read(client, settings, now=now)
    assert 29 <= legacy.oldest_open_age_s <= 31, legacy.oldest_open_age_s
    client.zrem(keys.open, "waiting")
    only_parked = status.read(client, settings, now=now)
    assert only_parked.oldest_open_age_s >= 4_999, "all scanned are parked: the bound, not zero"
    client.delete(keys.open, keys.parked, keys.pending)


def test_a_paused_page_stays_in_bmw_page_paused_whatever_the_page_rows(redis_server: RedisServer) -> None:
    """bmw_page_paused feeds BmwPageTokenInvalid and BmwPagePaused. It came from the page rows,
    the METRICS_MAX_PAGES most recently used limiter buckets; a paused page uses none, so once
    other pages had used theirs (or a day passed) the gauge and its alerts went away while the
    page was still paused."""
    import asyncio

    import redis.asyncio as aioredis

    from worker import status
    from worker.config import Settings
    from worker.store import Keys
    from worker.store.pages import pause_page

    settings = Settings(_env_file=None, key_prefix="t" + uuid.uuid4().hex[:8], metrics_max_pages=2)
    keys = Keys.of(settings)
    client = redis_server.client()
    for i, page in enumerate(("801", "802", "803")):  # three other pages used their buckets since
        client.zadd(keys.buckets, {f"{page}:text": time.time() - i})

    async def pause() -> None:
        async_client = aioredis.Redis.from_url(redis_server.url)
        try:
            await pause_page(async_client, keys, "1234567890", 600)
        finally:
            await async_client.aclose()

    asyncio.run(pause())
    body = status.render_metrics([(settings, client)]).decode()
    assert 'bmw_page_paused{page_id="1234567890",reason="operator"} 1.0' in body
    assert "bmw_pages_paused 1.0" in body


def test_each_pages_template_sync_time_is_a_gauge_the_latest_over_shards(redis_server: RedisServer) -> None:
    """BmwTemplateCatalogueStale's input: a page whose sync keeps failing keeps its last
    catalogue, and the intake refuses by it; before, only `templates list` showed when it was read."""
    from worker import status
    from worker.config import Settings
    from worker.store import Keys

    one, two = (Settings(_env_file=None, key_prefix="t" + uuid.uuid4().hex[:8]) for _ in range(2))
    client = redis_server.client()
    client.zadd(Keys.of(one).templates_synced, {"111": 1_000.0, "222": 2_000.0})
    client.zadd(Keys.of(two).templates_synced, {"111": 1_500.0})  # a page being moved: two entries
    body = status.render_metrics([(one, client), (two, client)]).decode()
    samples = [line for line in body.splitlines() if line.startswith("bmw_template_catalogue_synced")]
    assert samples == [
        'bmw_template_catalogue_synced_timestamp_seconds{page_id="111"} 1500.0',
        'bmw_template_catalogue_synced_timestamp_seconds{page_id="222"} 2000.0',
    ]

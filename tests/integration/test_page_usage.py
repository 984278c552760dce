"""Graph's usage header per page, remembered for the console's pages view (worker/ratelimit.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from tests.conftest import RedisServer
from worker.config import Settings
from worker.ratelimit import Limiter
from worker.store import Keys

pytestmark = pytest.mark.integration


def test_the_last_usage_is_written_at_most_every_few_seconds_per_page(redis_server: RedisServer) -> None:
    settings = Settings(redis_url=redis_server.url, key_prefix="u" + uuid.uuid4().hex[:8], _env_file=None)
    keys = Keys.of(settings)

    async def main() -> None:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            limiter = Limiter(client, settings)
            await limiter.note_usage("100", 42)
            await limiter.note_usage("100", 97)  # within USAGE_NOTE_SECONDS: not written
            await limiter.note_usage("200", 7)
        finally:
            await client.aclose()

    asyncio.run(main())
    stored = {k.decode(): v.decode() for k, v in redis_server.client().hgetall(keys.page_usage).items()}
    assert set(stored) == {"100", "200"}
    pct, _, at = stored["100"].partition(":")
    assert pct == "42"
    assert abs(int(at) - time.time()) < 5

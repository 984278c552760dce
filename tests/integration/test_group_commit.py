"""The intake's group commit against a real redis-server: batches, and when a second commit starts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from worker import redisconn, store
from worker.config import Settings
from worker.intake import GATHER_TARGET, GroupCommitter
from worker.validation import validate


def _settings(redis: RedisServer) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        redis_url=redis.url,
        key_prefix=f"gc{tag}",
        queue_name=f"q{tag}",
        page_access_tokens={PAGE: PAGE_TOKEN},
        intake_insecure_no_auth=True,
    )


def test_a_second_commit_starts_only_for_a_batch_that_needs_no_company(redis_server: RedisServer) -> None:
    settings = _settings(redis_server)

    async def scenario() -> tuple[list[int], int, list[str], Any]:
        client = redisconn.async_client(settings)
        committer = GroupCommitter(client, settings)
        real = committer._script
        sizes: list[int] = []
        running = 0
        most = 0

        async def held(**kwargs: Any) -> Any:  # the real ACCEPT call, kept in flight for 100 ms
            nonlocal running, most
            sizes.append((len(kwargs["args"]) - 6) // 9)
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.1)
            try:
                return await real(**kwargs)
            finally:
                running -= 1

        committer._script = held  # type: ignore[assignment]  # a spy around the real script

        def submit(i: int) -> asyncio.Task[tuple[str, bool]]:
            body = orjson.dumps({"recipient": {"id": f"gc-{i}"}, "message": {"text": "hi"}})
            request = validate(body, settings, path_page_id=PAGE)
            return asyncio.create_task(committer.submit(request, "", f"r{i}"))

        first = [submit(0)]
        await asyncio.sleep(0.02)  # the first request is committed alone, at once
        few = [submit(i) for i in range(1, 6)]
        await asyncio.sleep(0.02)
        assert sizes == [1]  # five waiting: they ride on the next commit, no second one yet
        many = [submit(i) for i in range(6, 6 + GATHER_TARGET)]
        results = await asyncio.gather(*first, *few, *many)
        queue = await client.lrange(settings.queue_name, 0, -1)  # type: ignore[misc]  # redis-py types it sync-or-async
        await client.aclose()
        return sizes, most, [delivery_id for delivery_id, _ in results], queue

    sizes, most, ids, queue = asyncio.run(scenario())
    assert sizes == [1, 5 + GATHER_TARGET]  # the second commit took every waiting request
    assert most == 2
    assert len(set(ids)) == 6 + GATHER_TARGET
    assert len(queue) == 2  # one Celery message per commit
    rec = redis_server.client().hgetall(
        store.Keys(settings.key_prefix, settings.queue_name).delivery(ids[-1])
    )
    assert rec[b"status"] == b"queued"

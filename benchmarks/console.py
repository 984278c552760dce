"""7. Console: each operator-console page's answer time with 100,000 open deliveries.

An intake (no worker: what is accepted stays open) on a fresh redis-server; 1,000 open deliveries
accepted through the intake's own group commit (``accept.lua``), 2,000 dead letters and a
delivery with a history; each console page is fetched 20 times in a row with a signed session
(p50 and p95, client-side, over loopback). Then 99,000 more open deliveries and the same pages
again. Bar: every page's p95 under 100 ms with 100,000 open deliveries; the ratio to the same
page at 1,000 shows that the pages read bounded data, not the backlog.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import orjson

from tests.conftest import ADMIN_TOKEN, PAGE
from worker.config import load_settings
from worker.intake.committer import GroupCommitter
from worker.intake.console import session
from worker.logging import configure_logging
from worker.messenger.validation import validate
from worker.states import State
from worker.store import Keys, connections

SMALL, LARGE = 1_000, 100_000
DEAD = 2_000
ROUNDS = 20
BAR_MS = 100.0


def accept(env: dict[str, str], n: int, tag: str) -> None:
    """``n`` open deliveries through the intake's group commit, as Braze's requests would make them."""
    settings = load_settings(
        **{k.lower(): v for k, v in env.items() if k in ("REDIS_URL", "KEY_PREFIX", "QUEUE_NAME")},
        _env_file=None,
    )
    body = orjson.dumps({"recipient": {"id": "1"}, "messaging_type": "UPDATE", "message": {"text": "hello"}})

    configure_logging(load_settings(log_level="WARNING", _env_file=None))  # not a line per commit

    async def main() -> None:
        client = connections.async_client(settings)
        committer = GroupCommitter(client, settings)
        request = validate(
            body,
            load_settings(page_access_tokens={PAGE: "bench-page-token-0123"}, _env_file=None),
            path_page_id=PAGE,
        )
        try:
            for start in range(0, n, 2_000):
                await asyncio.gather(
                    *(committer.submit(request, "", f"{tag}{i}") for i in range(start, min(n, start + 2_000)))
                )
        finally:
            committer.close()
            await client.aclose()

    asyncio.run(main())


def make_dead(redis: Any, keys: Keys, n: int) -> str:
    """Turn ``n`` open deliveries into dead letters (as record.lua leaves them); one gets a history."""
    prefix = keys.delivery_prefix
    ids: list[str] = []
    for key in redis.scan_iter(match=f"{prefix}*", count=1_000):  # open ones: no worker runs
        ids.append(key.decode()[len(prefix) :])
        if len(ids) == n:
            break
    pipe = redis.pipeline(transaction=False)
    now = time.time()
    for i, delivery_id in enumerate(ids):
        error = orjson.dumps({"reason": "max_attempts", "code": 2 if i % 2 else 100, "message": "x"})
        pipe.hset(
            keys.delivery(delivery_id), mapping={"status": State.DEAD.value, "error": error, "attempts": 8}
        )
        pipe.zadd(keys.dead, {delivery_id: now - i})
    entry = orjson.dumps({"at": now, "status": "retrying", "reason": "transient", "code": 2, "attempt": 1})
    pipe.rpush(keys.history(ids[0]), *([entry] * 7))
    pipe.execute()
    return ids[0]


def time_pages(base: str, cookie: str, paths: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, cookies={session.COOKIE: cookie}, timeout=10) as client:
        for path in paths:
            samples = []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                resp = client.get(path)
                samples.append((time.perf_counter() - t0) * 1000)
                if resp.status_code != 200:
                    raise RuntimeError(f"{path}: {resp.status_code} {resp.text[:200]}")
            samples.sort()
            out[path] = {
                "p50_ms": statistics.median(samples),
                "p95_ms": samples[int(0.95 * (len(samples) - 1))],
            }
    return out


def console_paths(dead_id: str) -> list[str]:
    return [
        "/console/",
        "/console/pages",
        "/console/campaigns",
        "/console/dead-letters",
        "/console/dead-letters?code=2",
        f"/console/lookup?delivery={dead_id}",
        "/console/lookup?page=100&psid=1",
    ]


def cookie_for() -> str:
    return session.issue(ADMIN_TOKEN)

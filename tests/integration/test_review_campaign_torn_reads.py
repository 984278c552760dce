"""A campaign's report read while it is written is one moment's: ``accepted = sent + failed +
expired + dead + cancelled + open`` in every read. The counters (``P:camp:{id}``), the open index
(``P:campopen:{id}``) and the stop were read by a pipeline without MULTI: Redis may run other
clients' commands between them (a long listing arrives in several reads), so a listing read while
the intake accepted showed a campaign with more deliveries open than it ever accepted. Real
redis-server; accepted by the intake's group commit (accept.lua), read as the admin API, the CLI
and the console read (``campaigns.list_campaigns``, ``campaigns.campaign``)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from tests.conftest import PAGE, PAGE_TOKEN, RedisServer
from tests.integration.test_fence import make_settings
from worker import campaigns
from worker.store import Keys

CAMPAIGNS = 300
SECONDS = 6.0
WRITERS = 2
#: A writer process: the intake's group commit, 50 requests a commit over the campaigns, until
#: the deadline; prints how many it accepted.
WRITER = """
import asyncio, sys, time, orjson
import redis.asyncio as aioredis
from worker.config import Settings
from worker.intake.committer import GroupCommitter
from worker.messenger.validation import validate

async def main():
    s = Settings(_env_file=None)
    camps = orjson.loads(sys.argv[1])
    client = aioredis.Redis.from_url(s.redis_url)
    committer = GroupCommitter(client, s)
    body = validate(orjson.dumps({"recipient": {"id": "t-1"}, "message": {"text": "hi"}}), s, path_page_id="100")
    n, deadline = 0, time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        await asyncio.gather(*(committer.submit_with_status(
            body, "", "", attribution=(camps[(n + j) % len(camps)], "", "", "", "")) for j in range(50)))
        n += 50
    committer.close()
    await client.aclose()
    with open(sys.argv[3], 'w') as out:
        out.write(str(n))

asyncio.run(main())
"""


def test_a_report_read_while_it_is_written_is_never_torn(redis_server: RedisServer, tmp_path: Path) -> None:
    s = make_settings(redis_server, intake_insecure_no_auth=True)
    keys = Keys.of(s)
    # long ids (the intake takes 128 characters): a listing is several of Redis's reads
    camps = [f"torn-{i:03d}-" + "x" * 110 for i in range(CAMPAIGNS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PAGE_", "INTAKE_"))}
    env.update(
        REDIS_URL=s.redis_url,
        KEY_PREFIX=s.key_prefix,
        QUEUE_NAME=s.queue_name,
        PAGE_ACCESS_TOKENS=orjson.dumps({PAGE: PAGE_TOKEN}).decode(),
        INTAKE_INSECURE_NO_AUTH="true",
        LOG_LEVEL="WARNING",
    )
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                orjson.dumps(camps).decode(),
                str(SECONDS),
                str(tmp_path / f"w{i}"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(WRITERS)
    ]
    torn: list[dict[str, Any]] = []
    reads = 0

    def check(view: dict[str, Any] | None) -> None:
        nonlocal reads
        if view is None:
            return
        reads += 1
        ended = sum(view[k] for k in ("sent", "failed", "expired", "dead", "cancelled"))
        if view["accepted"] != ended + view["open"]:
            torn.append(view)

    async def reader() -> None:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            deadline = time.monotonic() + SECONDS + 30
            while any(w.poll() is None for w in writers) and not torn and time.monotonic() < deadline:
                for view in await campaigns.list_campaigns(client, keys, limit=1000):
                    check(view)
                check(await campaigns.campaign(client, keys, camps[reads % CAMPAIGNS]))
        finally:
            await client.aclose()

    try:
        asyncio.run(reader())
    finally:
        for w in writers:
            w.kill()
    assert torn == [], torn[:3]
    accepted = sum(int((tmp_path / f"w{i}").read_text()) for i in range(WRITERS))
    assert accepted > 1000
    assert reads > 1000

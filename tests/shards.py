"""Two shards for the tests (REDIS_SHARDS): two redis-servers, a worker per shard, one intake.

Used by tests/integration/test_shards.py and the console's browser test, each through a fixture
of its own that yields from :func:`two_shards`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import (
    PY,
    Proc,
    RedisServer,
    Sandbox,
    Stack,
    _need_redis,
    base_env,
    free_port,
    start_process,
    wait_until,
)
from worker.states import FINAL
from worker.store import Keys, outcomes

#: Pinned by SHARD_PAGES: page A on shard 0, page B on shard 1.
PAGE_A, PAGE_B = "501", "601"
LIMIT = 50
#: Messenger's app secret in the two-shard stack: the webhook's signatures (:func:`signed`).
APP_SECRET = "shards-app-secret-0123456789"
FINAL_STATES = {s.value for s in FINAL}


def winner(page: str, n: int) -> int:
    """Rendezvous hashing as docs/scaling.md states it, computed here and not with the product's
    function: the shard among ``n`` with the highest blake2b of "index:page"."""
    return max(range(n), key=lambda i: hashlib.blake2b(f"{i}:{page}".encode(), digest_size=8).digest())


class Shards:
    def __init__(self, stack: Stack, servers: list[RedisServer]) -> None:
        self.stack = stack
        self.servers = servers

    def keys(self) -> Keys:
        return self.stack.keys

    def index_of(self, delivery_id: str) -> int:
        return int(delivery_id[:2], 16)

    def record(self, delivery_id: str) -> dict[str, str]:
        client = self.servers[self.index_of(delivery_id)].client()
        try:
            return outcomes.read_sync(client, self.keys(), delivery_id, self.stack.record_retention)
        finally:
            client.close()

    def wait_final(self, ids: list[str], timeout: float = 60) -> dict[str, dict[str, str]]:
        records: dict[str, dict[str, str]] = {}

        def done() -> bool:
            for i in ids:
                if records.get(i, {}).get("status") not in FINAL_STATES:
                    try:
                        records[i] = self.record(i)
                    except OSError:  # a shard restarting
                        return False
            return all(records[i].get("status") in FINAL_STATES for i in ids)

        assert wait_until(done, timeout, 0.2), Counter(r.get("status") for r in records.values())
        return records

    def start_worker(self, index: int) -> Proc:
        env = {**self.stack.env, "SHARD_INDEX": str(index)}
        name = f"shard{index}"
        proc = start_process(
            name,
            ["worker", "--concurrency", "4", "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"],
            env,
            self.stack.log_dir,
        )
        self.stack.procs.append(proc)
        assert wait_until(lambda: "ready" in proc.tail(200), 60), proc.tail()
        return proc

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [PY, "-m", "worker", *args], env=self.stack.env, capture_output=True, timeout=60, check=True
        )
        return json.loads(out.stdout)


def signed(body: bytes) -> dict[str, str]:
    """The headers of a webhook POST Meta would send with ``body`` (signed with APP_SECRET)."""
    digest = hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/json", "X-Hub-Signature-256": f"sha256={digest}"}


def two_shards(sandbox: Sandbox, tmp_path: Path) -> Iterator[Shards]:
    """Two redis-servers (pages 501 and 601 pinned one to each), a worker per shard, an intake."""
    _need_redis()
    servers = [RedisServer(free_port(), tmp_path / f"redis{i}", appendfsync="always") for i in range(2)]
    for server in servers:
        server.start()
    env = base_env(
        servers[0].url,
        sandbox.url,
        REDIS_SHARDS=",".join(s.url for s in servers),
        SHARD_PAGES=json.dumps({PAGE_A: 0, PAGE_B: 1}),
        PAGE_RATE_LIMIT=str(LIMIT),
        SWEEP_AFTER_SECONDS="5",
        DELIVERY_LEASE_SECONDS="10",
        APP_SECRET=APP_SECRET,
    )
    env.pop("REDIS_URL")  # with REDIS_SHARDS it is not used: prove it
    stack = Stack(env, sandbox, servers[0].url, tmp_path / "logs")
    group = Shards(stack, servers)
    stack.start_intake()
    group.start_worker(0)
    group.start_worker(1)
    yield group
    stack.stop()
    for server in servers:
        server.stop()

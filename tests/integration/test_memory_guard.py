"""The Redis memory guard against a real redis-server: at REDIS_MEMORY_HEADROOM of maxmemory the
send route answers 503 ``redis_full`` (Retry-After) and enqueues nothing, /readyz stays 200 and
says ``accepting: false``; with room again, messages are accepted within about a second.

The app runs in-process (TestClient), its lifespan owning real Redis clients."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import INTAKE_TOKEN, PAGE, PAGE_TOKEN, RedisServer, wait_until
from worker.config import Settings
from worker.intake import create_app

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": f"Bearer {INTAKE_TOKEN}"}


def message(n: int) -> dict[str, Any]:
    return {"recipient": {"id": f"psid-{n}"}, "messaging_type": "UPDATE", "message": {"text": "hi"}}


def test_send_refuses_while_redis_is_nearly_full_and_accepts_again(own_redis: RedisServer) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        redis_url=own_redis.url,
        key_prefix=f"mg{tag}",
        queue_name=f"q{tag}",
        intake_tokens=[INTAKE_TOKEN],
        page_access_tokens={PAGE: PAGE_TOKEN},
        _env_file=None,
    )
    assert settings.redis_memory_headroom == 0.9
    redis = own_redis.client()

    def footprint() -> tuple[int, int]:
        return redis.llen(settings.queue_name), len(redis.keys(f"{settings.key_prefix}:*"))

    with TestClient(create_app(settings)) as client:
        used = int(redis.info("memory")["used_memory"])
        redis.config_set("maxmemory", int(used / 0.95))  # just above used_memory: ratio about 0.95
        try:
            before = footprint()
            resp = client.post(f"/v25.0/{PAGE}/messages", json=message(1), headers=HEADERS)
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "redis_full"
            assert resp.headers["retry-after"].isdigit()
            assert footprint() == before == (0, 0)
            bad = client.post(f"/v25.0/{PAGE}/messages", json={"recipient": {}}, headers=HEADERS)
            assert bad.status_code == 422  # a request that can never succeed still gets its 4xx
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["accepting"] is False
            assert ready.json()["memory_ratio"] >= 0.9
        finally:
            redis.config_set("maxmemory", used * 10)
        started = time.monotonic()
        answers: list[tuple[int, str]] = []

        def accepted() -> bool:
            resp = client.post(f"/v25.0/{PAGE}/messages", json=message(2), headers=HEADERS)
            answers.append((resp.status_code, resp.json().get("error", {}).get("code", "")))
            return bool(resp.status_code == 202)

        assert wait_until(accepted, timeout=5, interval=0.1), answers[-3:]
        assert time.monotonic() - started < 2.5  # the guard reads INFO at most once a second
        assert {a for a in answers[:-1]} <= {(503, "redis_full")}
        assert footprint()[0] == 1
        ready = client.get("/readyz").json()
        assert (ready["accepting"], ready["memory_ratio"] < 0.9) == (True, True)

"""The intake sheds load instead of queueing without bound: its Redis stalled (SIGSTOP), a burst
of concurrent requests is answered 503 with Retry-After, every one within the deadline; what
each code says about storage holds once Redis runs again; and it answers 202 again at once.

Real processes: the intake (uvicorn, ``messenger-worker intake``) on a redis-server of the
test's own. The requests are raw HTTP/1.1 on sockets opened before the burst, so the measured
time is the intake's, not a client library's.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import INTAKE_TOKEN, PAGE, RedisServer, Stack, wait_until

pytestmark = pytest.mark.integration
DEADLINE = 3.0
MAX_PENDING = 100
BURST = 300


def body(n: int) -> bytes:
    return orjson.dumps(
        {"recipient": {"id": f"shed-{n}"}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    )


async def burst(port: int, count: int) -> list[dict[str, Any]]:
    """``count`` POSTs on connections opened first, sent together; each answer with its latency."""
    go = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def one(n: int) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        content = body(n)
        head = (
            f"POST /v25.0/{PAGE}/messages HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer {INTAKE_TOKEN}\r\n"
            f"Content-Type: application/json\r\nIdempotency-Key: shed-key-{n}\r\n"
            f"Content-Length: {len(content)}\r\nConnection: close\r\n\r\n"
        )
        await go.wait()
        started = loop.time()
        writer.write(head.encode() + content)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 60)
        elapsed = loop.time() - started
        writer.close()
        header_block, _, payload = raw.partition(b"\r\n\r\n")
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        return {
            "n": n,
            "status": int(status_line.split()[1]),
            "headers": headers,
            "body": payload,
            "elapsed": elapsed,
        }

    tasks = [asyncio.create_task(one(n)) for n in range(count)]
    await asyncio.sleep(0.5)  # every connection open
    go.set()
    return await asyncio.gather(*tasks)


def test_a_stalled_redis_gets_every_request_answered_503_within_the_deadline(
    make_stack: Any, own_redis: RedisServer
) -> None:
    stack: Stack = make_stack(
        own_redis.url, INTAKE_DEADLINE_SECONDS=str(DEADLINE), INTAKE_MAX_PENDING=str(MAX_PENDING)
    )
    intake = stack.start_intake()
    assert stack.post(body(-1), headers={"Idempotency-Key": "shed-warm"}).status_code == 202
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answers = asyncio.run(burst(stack.intake_port, BURST))
        took = time.monotonic() - started
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)

    codes = Counter(
        orjson.loads(a["body"])["error"]["code"] if a["status"] == 503 else a["status"] for a in answers
    )
    slowest = max(a["elapsed"] for a in answers)
    print(
        f"burst of {BURST} against a stalled Redis: {dict(codes)}, slowest {slowest:.2f} s, all in {took:.2f} s"
    )
    assert all(a["status"] == 503 for a in answers), codes
    assert all(a["headers"].get("retry-after", "").isdigit() for a in answers)
    assert all(a["headers"]["content-type"].startswith("application/json") for a in answers)
    assert set(codes) <= {"overloaded", "unavailable", "unavailable_maybe_stored"}, codes
    assert codes["overloaded"] >= BURST - MAX_PENDING  # refused at once: the buffer is bounded
    assert slowest <= DEADLINE + 2, slowest
    overloaded = [a["elapsed"] for a in answers if orjson.loads(a["body"])["error"]["code"] == "overloaded"]
    assert max(overloaded) < DEADLINE  # answered without waiting for Redis

    # Redis runs again: new messages are accepted at once
    assert wait_until(lambda: stack.post(body(-2)).status_code == 202, 10), intake.tail()
    # what each code says holds: "unavailable" and "overloaded" were never stored (their retry is
    # a new message); "maybe stored" ones were sent to Redis, which ran them once it resumed: their
    # retry with the same Idempotency-Key is recognised
    with httpx.Client(
        base_url=stack.intake_url, headers={"Authorization": f"Bearer {INTAKE_TOKEN}"}, timeout=10
    ) as client:
        retried: Counter[tuple[str, int]] = Counter()
        for a in answers:
            code = orjson.loads(a["body"])["error"]["code"]
            resp = client.post(
                f"/v25.0/{PAGE}/messages",
                content=body(a["n"]),
                headers={"Content-Type": "application/json", "Idempotency-Key": f"shed-key-{a['n']}"},
            )
            retried[(code, resp.status_code)] += 1
    print(f"retries after the stall: {dict(retried)}")
    assert all(status == 202 for (code, status) in retried if code != "unavailable_maybe_stored"), retried
    assert all(status in (200, 202) for (_code, status) in retried), retried


def test_beyond_its_concurrency_limit_uvicorn_answers_503_itself(
    make_stack: Any, own_redis: RedisServer
) -> None:
    """INTAKE_LIMIT_CONCURRENCY reaches uvicorn, whose refusal is not the intake's JSON shape:
    plain text, no Retry-After (README, "Intake HTTP API"). Idle keep-alive connections count."""
    import socket

    limit = 4
    stack: Stack = make_stack(own_redis.url, INTAKE_LIMIT_CONCURRENCY=str(limit))
    stack.start_intake()
    idle = [socket.create_connection(("127.0.0.1", stack.intake_port)) for _ in range(limit)]
    try:
        time.sleep(0.3)  # accepted by the server
        refused = stack.post(body(1))
        assert refused.status_code == 503
        assert refused.headers["content-type"].startswith("text/plain")
        assert refused.text == "Service Unavailable"
        assert "retry-after" not in refused.headers
    finally:
        for sock in idle:
            sock.close()
    assert wait_until(lambda: stack.post(body(2)).status_code == 202, 10)

"""Graceful shutdown: SIGTERM to a worker finishes in-flight sends; SIGTERM to the intake drains."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import INTAKE_TOKEN, Stack, wait_until

pytestmark = pytest.mark.integration


def unacked_for(stack: Stack) -> int:
    """kombu keeps one ``unacked`` hash per Redis db; count this stack's queue's entries only."""
    import orjson

    entries = stack.redis().hvals("unacked")
    return sum(1 for raw in entries if orjson.loads(raw)[2] == stack.queue)


def test_sigterm_worker_finishes_in_flight_sends(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    worker = stack.start_worker(concurrency=4)
    ids = [
        stack.post({"recipient": {"id": f"slow1500-term-{i}"}, "message": {"text": "x"}}).json()[
            "delivery_id"
        ]
        for i in range(6)
    ]
    # every send is in flight at the sandbox (1.5 s each) when the worker is told to stop
    assert wait_until(lambda: len([c for c in stack.sandbox.calls() if "term-" in str(c["psid"])]) >= 6, 20)
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=60) == 0
    assert time.monotonic() - started < 30
    records = {i: stack.record(i) for i in ids}
    # finished, recorded, and nothing left claimed or unacknowledged behind
    assert {r["status"] for r in records.values()} == {"sent"}, records
    assert unacked_for(stack) == 0
    assert stack.redis().llen(stack.queue) == 0
    assert "Warm shutdown" in worker.log.read_text()
    assert any(e.get("event") == "engine.stopped" for e in stack.logs())
    (ready,) = [e for e in stack.logs() if e.get("event") == "worker.ready"]
    assert (ready["concurrency"], ready["queue"]) == (4, stack.queue)
    assert ready["gc_gen0_threshold"] == 50_000  # worker/gc_tuning.py applied once it was up
    (started_line,) = [e for e in stack.logs() if e.get("event") == "intake.started"]
    assert started_line["gc_gen0_threshold"] == 50_000
    import orjson

    for line in worker.log.read_text().splitlines():  # Celery's shutdown notice included
        if line.strip():
            assert line.startswith("{"), line
            assert isinstance(orjson.loads(line), dict), line


def test_sigterm_worker_leaves_unstarted_work_for_the_next(make_stack: Any) -> None:
    stack: Stack = make_stack(WORKER_MAX_INFLIGHT="2")
    stack.start_intake()
    worker = stack.start_worker(concurrency=1)
    ids = [
        stack.post({"recipient": {"id": f"slow500-next-{i}"}, "message": {"text": "x"}}).json()["delivery_id"]
        for i in range(8)
    ]
    assert wait_until(lambda: any(stack.record(i).get("status") == "sent" for i in ids), 20)
    assert worker.stop(signal.SIGTERM, timeout=60) == 0
    stack.start_worker(name="next")
    records = stack.wait_final(ids, timeout=60)
    assert {r["status"] for r in records.values()} == {"sent"}
    for i in range(8):  # each exactly once: nothing acknowledged unfinished, nothing sent twice
        assert len([c for c in stack.sandbox.calls(psid=f"slow500-next-{i}") if c["status"] == 200]) == 1


def test_sigterm_intake_drains_in_flight_requests(make_stack: Any) -> None:
    stack: Stack = make_stack()
    intake = stack.start_intake()

    async def flood() -> list[tuple[int, str | None]]:
        headers = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
        async with httpx.AsyncClient(base_url=stack.intake_url, headers=headers, timeout=10) as client:

            async def one(i: int) -> tuple[int, str | None]:
                try:
                    r = await client.post(
                        "/v25.0/100/messages",
                        json={"recipient": {"id": f"drain-{i}"}, "message": {"text": "x"}},
                    )
                except httpx.TransportError:
                    return (0, None)
                return (r.status_code, r.json().get("delivery_id") if r.status_code == 202 else None)

            tasks = []
            for i in range(300):
                tasks.append(asyncio.create_task(one(i)))
                if i == 100:
                    intake.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.002)
            return await asyncio.gather(*tasks)

    results = asyncio.run(flood())
    # uvicorn shuts down gracefully, then re-raises the captured SIGTERM (exit status -15)
    assert intake.proc.wait(timeout=40) in (0, -signal.SIGTERM)
    assert "Finished server process" in intake.log.read_text()
    accepted = [d for status, d in results if status == 202 and d]
    assert len(accepted) >= 100
    # every 202 is durably in Redis; refused requests got no 202 (Braze retries them)
    client = stack.redis()
    assert all(client.exists(stack.keys.delivery(d)) for d in accepted)
    assert {status for status, _ in results} <= {202, 0, 503}

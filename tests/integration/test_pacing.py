"""Per-page pacing across several worker processes, measured from the sandbox's arrival times.

The CI-sized version of the pacing checks (the full-scale run lives in benchmarks/): a page's
sends in any trailing 1 s window stay within 5% of its limit, the mean during a backlog is at
least 95% of it, and a backlogged page does not slow another page's trickle.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest

from benchmarks.common import max_in_window
from tests.conftest import Sandbox, Stack

pytestmark = pytest.mark.integration


def body(psid: str) -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "paced"}}


def page_path(page: str) -> str:
    return f"/v25.0/{page}/messages?access_token=sandbox-token-{page}"


def arrivals(sandbox: Sandbox, page: str) -> list[float]:
    return sorted(c["at"] for c in sandbox.calls(page_id=page) if c["status"] == 200)


def test_four_workers_hold_the_page_limit(make_stack: Any) -> None:
    limit = 100
    stack: Stack = make_stack(
        PAGE_RATE_LIMIT=str(limit), SWEEP_AFTER_SECONDS="60", DELIVERY_LEASE_SECONDS="30"
    )
    stack.start_intake()
    page = "501"
    ids = stack.post_many([(page_path(page), body(f"pace-{i}")) for i in range(2500)])
    stack.start_workers(4)
    stack.wait_final(ids, timeout=150)
    times = arrivals(stack.sandbox, page)
    assert len(times) == 2500
    peak = max_in_window(times)
    mean = (len(times) - 1) / (times[-1] - times[0])
    print(f"pacing: limit {limit}/s, peak 1 s window {peak}, mean {mean:.1f}/s")
    assert peak <= limit * 1.05
    assert mean >= limit * 0.95


def test_backlogged_page_does_not_slow_another(make_stack: Any) -> None:
    stack: Stack = make_stack(PAGE_RATE_LIMIT="100", SWEEP_AFTER_SECONDS="60", DELIVERY_LEASE_SECONDS="30")
    stack.start_intake()
    stack.start_workers(2)
    stack.sandbox.set_latency(50)
    try:
        idle = trickle(stack, "idle", 15)
        backlog = stack.post_many([(page_path("601"), body(f"a-{i}")) for i in range(1000)])
        busy = trickle(stack, "busy", 30)
        stack.wait_final(backlog, timeout=90)
    finally:
        stack.sandbox.set_latency(0)
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(busy)
    print(
        f"page B accept-to-send p50: idle {idle_p50 * 1000:.0f} ms, with page A backlogged {busy_p50 * 1000:.0f} ms"
    )
    assert busy_p50 <= 2 * idle_p50


def trickle(stack: Stack, tag: str, count: int) -> list[float]:
    """Page B: one message every 200 ms; accept-to-send latency from the record and the sandbox."""
    page = "602"
    ids = []
    for i in range(count):
        ids.extend(stack.post_many([(page_path(page), body(f"b-{tag}-{i}"))]))
        time.sleep(0.2)
    records = stack.wait_final(ids, timeout=60)
    sent_at = {c["psid"]: c["at"] for c in stack.sandbox.calls(page_id=page)}
    latencies = []
    for i, delivery_id in enumerate(ids):
        assert records[delivery_id]["status"] == "sent"
        latencies.append(sent_at[f"b-{tag}-{i}"] - float(records[delivery_id]["created_at"]))
    return latencies

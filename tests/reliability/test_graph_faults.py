"""Faults from Graph: drops, read timeouts, HTML 5xx, slow answers and a throttling storm.

Retries stay bounded (no retry storm: Graph calls per message are counted and reported) and
nothing is lost.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import Stack
from tests.reliability.harness import Supervisor, account_stack, run_tag, scale

pytestmark = pytest.mark.reliability
STORM_SECONDS = scale(6, 30)
MAX_ATTEMPTS = 3


def post(stack: Stack, psid: str, page: str = "100") -> str:
    params = None if page == "100" else {"access_token": f"sandbox-token-{page}"}
    resp = stack.post(
        {"recipient": {"id": psid}, "message": {"text": "x"}}, path=f"/v25.0/{page}/messages", params=params
    )
    assert resp.status_code == 202
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def test_faults_are_bounded_and_nothing_is_lost(make_stack: Any) -> None:
    tag = run_tag("f")
    stack: Stack = make_stack(GRAPH_READ_TIMEOUT="1", MAX_ATTEMPTS=str(MAX_ATTEMPTS), RETRY_CAP_SECONDS="0.5")
    stack.start_intake()
    kinds = {
        "drop": "drop-{}",
        "timeout": "slow1500-{}",  # read timeout after the request was sent: ambiguous
        "html5xx": "http5xx-{}",
        "slow_ok": "slow300-{}",  # slow but inside the timeout: sent
        "flaky": "flaky2-2-{}",  # two transient errors, then sent
    }
    psids = {k: [p.format(f"{tag}-{i}") for i in range(5)] for k, p in kinds.items()}
    with Supervisor(stack) as supervisor:
        stack.start_worker()
        accepted = {psid: post(stack, psid) for group in psids.values() for psid in group}
        records = stack.wait_final(list(accepted.values()), timeout=90)
        supervisor.assert_no_unexpected_exits()
    status = {k: Counter(records[accepted[p]]["status"] for p in group) for k, group in psids.items()}
    assert status["drop"] == Counter(dead=5)
    assert status["timeout"] == Counter(dead=5)
    assert status["html5xx"] == Counter(dead=5)
    assert status["slow_ok"] == Counter(sent=5)
    assert status["flaky"] == Counter(sent=5)
    acc = account_stack(stack, accepted, records, supervisor=supervisor, tag=tag, quiet=2.0)
    calls = Counter(str(c["psid"]) for c in stack.sandbox.calls() if str(c["psid"]) in accepted)
    worst = max(calls.values())
    print(
        f"\nGraph calls per message: max {worst}, total {sum(calls.values())} for {len(calls)} messages; "
        f"{acc.summary()}"
    )
    assert worst <= MAX_ATTEMPTS  # bounded: never more calls than attempts
    # Every call of a timed-out message reached Graph, which accepted it: each one beyond the
    # first is a duplicate, and each is explained by its ambiguous attempt.
    acc.assert_exact()
    assert acc.by_cause == Counter(ambiguous=5 * MAX_ATTEMPTS)
    duplicates = [
        e for e in stack.logs() if e.get("event") == "delivery.attempt" and e.get("possible_duplicate")
    ]
    assert len(duplicates) >= 10  # drops and timeouts are reported as possible duplicates


def test_throttling_storm_pauses_the_page_without_a_retry_storm(make_stack: Any) -> None:
    tag = run_tag("storm")
    stack: Stack = make_stack(MAX_ATTEMPTS=str(MAX_ATTEMPTS), RETRY_BASE_SECONDS="0.5", RETRY_CAP_SECONDS="2")
    stack.start_intake()
    page = "777"
    with Supervisor(stack) as supervisor:
        stack.start_worker()
        # every call for the page: "Calls to this API have exceeded the rate limit"
        stack.sandbox.fault(page, 613, None)
        try:
            started = time.monotonic()
            ids = [post(stack, f"{tag}-{i}", page=page) for i in range(40)]
            time.sleep(max(0.0, started + STORM_SECONDS - time.monotonic()))
            during = len([c for c in stack.sandbox.calls(page_id=page) if str(c["psid"]).startswith(tag)])
        finally:
            stack.sandbox.clear_faults(page)
        records = stack.wait_final(ids, timeout=120)
        supervisor.assert_no_unexpected_exits()
    assert {r["status"] for r in records.values()} == {"sent"}  # rate limits never fail a message
    assert all(int(r.get("failures") or 0) == 0 for r in records.values())  # and burn no attempt
    # The page pauses after a 613: calls during the storm are a few probes, not 40 messages x retries.
    print(f"\nthrottling storm: {during} Graph calls in {STORM_SECONDS} s for 40 waiting messages")
    assert during <= 40 + STORM_SECONDS * 2
    assert any(e.get("event") == "page.paused" and e.get("reason") == "rate_limited" for e in stack.logs())

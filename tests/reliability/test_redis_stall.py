"""Redis stalls (SIGSTOP) for longer than any lease while messages are in flight and waiting.

Two workers send a backlog (Graph at 500 ms, 10 calls in flight per worker, a feeder offering more
than they send) when redis-server is frozen: 15 s in short mode, 40 s in long mode, three to eight
leases (5 s). Nothing answers, connections stay open. Calls already started are answered by Graph;
their outcomes wait in the workers and are written once Redis answers again; nothing else may
start a call. After SIGCONT: every accepted message is sent exactly once (no duplicate: no worker
died and no call was ambiguous), no process exited, every outcome is recorded once.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import RedisServer, Stack
from tests.reliability.harness import (
    Feeder,
    Supervisor,
    account_stack,
    assert_indexes_clean,
    assert_one_outcome_line,
    events,
    reasons,
    run_tag,
    scale,
    stalled,
    wait_all_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(scale(200, 420)))]
STALL_SECONDS = scale(15, 40)
MESSAGES = int(scale(600, 2000))
RATE = 60.0  # offered per second; two workers send about 40/s at 500 ms per call


def test_redis_stall_under_load_loses_nothing_and_sends_nothing_twice(
    own_redis: RedisServer, make_stack: Any
) -> None:
    tag = run_tag("stall")
    stack: Stack = make_stack(redis_url=own_redis.url, WORKER_MAX_INFLIGHT="10")
    stack.start_intake()
    stack.start_workers(2)
    stack.sandbox.set_latency(500)
    started = time.monotonic()
    try:
        with Supervisor(stack) as supervisor:
            feeder = Feeder(stack, MESSAGES, rate=RATE, tag=tag)
            feeder.start()
            feeder.wait_progress(0.4, timeout=60)
            backlog = int(stack.redis().get(stack.keys.open_total) or 0)  # open, not parked
            with stalled(own_redis):
                time.sleep(STALL_SECONDS)
            accepted = feeder.finish(timeout=scale(120, 240))
            records = wait_all_final(stack, accepted.values(), timeout=scale(90, 240))
            supervisor.assert_no_unexpected_exits()
    finally:
        stack.sandbox.set_latency(0)
    elapsed = time.monotonic() - started
    logs = stack.logs()
    acc = account_stack(stack, accepted, records, supervisor=supervisor, tag=tag)
    seen_by_workers = {
        name: len(events(logs, name))
        for name in (
            "lease.renew_failed",
            "outcomes.write_retry",
            "engine.claim_retry",
            "scheduler.redis_error",
        )
    }
    print(
        f"\nredis stall {STALL_SECONDS:.0f} s with {backlog} open deliveries: {elapsed:.0f} s; {acc.summary()}; "
        f"intake answers retried {dict(feeder.refused)}; outage seen by the workers {seen_by_workers}; "
        f"released {reasons(logs, 'delivery.released')}"
    )
    assert backlog > 20, "the stall must hit messages in flight and waiting"
    assert any(seen_by_workers.values()), "the workers never noticed the stall"
    assert acc.statuses == {"sent": MESSAGES}
    acc.assert_exact(allow_duplicates=False)
    assert_one_outcome_line(logs, records)
    assert_indexes_clean(stack, accepted.values())

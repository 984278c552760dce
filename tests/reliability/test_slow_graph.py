"""Slow Graph with a backlog: every message is sent exactly once.

Graph answers in 2-3 s, a worker may have WORKER_MAX_INFLIGHT=10 calls in flight, and a backlog
of 8x that (24x in long mode) is claimed by one worker at once: most of it waits for a free call
slot far longer than the lease (8 s). A second worker starts once the backlog is claimed and stays
idle unless a lease ends. The held leases must be renewed while the deliveries wait (the old
engine let them lapse: the idle worker's sweeper took them back and sent them a second time).
No call is ambiguous here (each answer comes well within GRAPH_DEADLINE_SECONDS), so no duplicate
may occur at all.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import Stack, wait_until
from tests.reliability.harness import (
    Feeder,
    Supervisor,
    account_stack,
    assert_indexes_clean,
    assert_one_outcome_line,
    events,
    read_records,
    run_tag,
    scale,
    sent_by,
    wait_all_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(scale(150, 400)))]
INFLIGHT = 10
MESSAGES = int(scale(8, 24)) * INFLIGHT
LATENCY_MS = 2000  # plus 0, 500 or 1000 ms per message (the sandbox's slow<MS>- PSIDs)


def test_slow_graph_backlog_is_sent_exactly_once(make_stack: Any) -> None:
    tag = run_tag("slow")
    stack: Stack = make_stack(
        WORKER_MAX_INFLIGHT=str(INFLIGHT),
        DELIVERY_LEASE_SECONDS="8",
        GRAPH_DEADLINE_SECONDS="4",
        GRAPH_READ_TIMEOUT="6",  # the deadline binds first
    )
    stack.start_intake()
    stack.sandbox.set_latency(LATENCY_MS)
    started = time.monotonic()
    try:
        with Supervisor(stack) as supervisor:
            feeder = Feeder(
                stack, MESSAGES, rate=200, tag=tag, psid=lambda i: f"slow{500 * (i % 3)}-{tag}-{i}"
            )
            feeder.start()
            accepted = feeder.finish(timeout=60)  # the backlog, before any worker runs
            ids = list(accepted.values())
            first = stack.start_worker(name="busy")

            def claimed() -> bool:
                statuses = {r.get("status") for r in read_records(stack, ids).values()}
                return stack.redis().llen(stack.queue) == 0 and statuses <= {"in_flight", "sent"}

            assert wait_until(claimed, 30, 0.2), "the first worker did not claim the backlog"
            idle = stack.start_worker(name="idle")
            records = wait_all_final(stack, ids, timeout=scale(90, 300))
            supervisor.assert_no_unexpected_exits()
    finally:
        stack.sandbox.set_latency(0)
    elapsed = time.monotonic() - started
    logs = stack.logs()
    acc = account_stack(
        stack, accepted, records, supervisor=supervisor, tag=tag, quiet=LATENCY_MS / 1000 + 1.5
    )
    print(
        f"\nslow graph: {MESSAGES} messages, in-flight limit {INFLIGHT}, {elapsed:.0f} s; {acc.summary()}; "
        f"sent by the busy worker {sent_by(first)}, by the idle one {sent_by(idle)}; "
        f"released {len(events(logs, 'delivery.released'))}"
    )
    assert acc.statuses == {"sent": MESSAGES}
    acc.assert_exact(allow_duplicates=False)
    assert_one_outcome_line(logs, records)
    # No lease ended while its holder was alive: nothing was reclaimed or swept back.
    assert not events(logs, "delivery.reclaimed")
    assert not events(logs, "scheduler.swept")
    assert not events(logs, "lease.renew_failed")
    assert_indexes_clean(stack, ids, units_within=10)

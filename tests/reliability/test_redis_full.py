"""Redis reaches maxmemory (noeviction) while workers run and messages flow.

While messages are being accepted and sent, ``maxmemory`` is set just above Redis's
``used_memory`` and a junk key pushes it over: every command that may grow memory is refused with
OOM (the intake's accept, claims, outcome writes, lease renewals, kombu's bookkeeping) for 12 s in
short mode, 40 s in long mode (more than two leases), then the limit is lifted. The old Celery
logged "Unrecoverable error: OutOfMemoryError" and exited (with status 0): here no process may
exit, nothing accepted may be lost, nothing may be sent twice, and every outcome is recorded.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer, Stack
from tests.reliability.harness import (
    Feeder,
    Supervisor,
    account_stack,
    assert_indexes_clean,
    assert_one_outcome_line,
    events,
    log_time,
    reasons,
    run_tag,
    scale,
    used_memory,
    wait_all_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(scale(200, 420)))]
FULL_SECONDS = scale(12, 40)
MESSAGES = int(scale(500, 2000))
RATE = 60.0  # offered per second; two workers send about 40/s at 500 ms per call
JUNK = b"x" * 512 * 1024
LEASE = 5.0
#: After an outage the sweeper waits two renewal intervals (a third of the lease each).
HOLD_OFF = 2 * LEASE / 3


def keep_full(admin: Any, prefix: str, until: float) -> tuple[int, int]:
    """Keep Redis at maxmemory until ``until`` (monotonic): whatever the workers free is taken
    again. Returns (probe writes, probe writes refused with OOM)."""
    probes = refused = 0
    while time.monotonic() < until:
        probes += 1
        try:
            admin.set(f"{prefix}:probe", "1")
        except redis.exceptions.OutOfMemoryError:
            refused += 1
        else:  # the workers freed room (compacted records): take all of it back, bounded
            with contextlib.suppress(redis.exceptions.OutOfMemoryError):
                for _ in range(1024):  # 16 KiB at a time up to the limit, at most 16 MiB
                    admin.append(f"{prefix}:junk", JUNK[: 16 * 1024])
        time.sleep(max(0.0, min(0.1, until - time.monotonic())))
    return probes, refused


def wait_for_the_worst_moment(stack: Stack, admin: Any) -> bool:
    """Keep Redis full until a sweeper's hold-off is about to end (its last refused sweep, logged
    ``scheduler.redis_error``, plus HOLD_OFF): the limit is then lifted when the held leases have
    run out and their holders retry their renewal every half second, and the sweeper's next tick
    (within 0.1 s) is allowed to sweep. A sweeper that waited for Redis to accept writes before
    counting its hold-off finds every lease renewed; one that counts from its last error alone
    takes live workers' deliveries. Bounded; False when no refused sweep was seen (the limit is
    lifted anyway)."""
    deadline = time.monotonic() + HOLD_OFF + 10
    while time.monotonic() < deadline:
        refused_sweeps = [log_time(e) for e in events(stack.logs(), "scheduler.redis_error")]
        if refused_sweeps:
            lift_in = max(refused_sweeps) + HOLD_OFF - 0.02 - time.time()
            if lift_in > 0.3:
                keep_full(admin, stack.prefix, time.monotonic() + lift_in)
                return True
        keep_full(admin, stack.prefix, time.monotonic() + 0.2)
    return False


def test_redis_at_maxmemory_loses_nothing_and_no_process_exits(
    own_redis: RedisServer, make_stack: Any
) -> None:
    tag = run_tag("full")
    stack: Stack = make_stack(
        redis_url=own_redis.url, WORKER_MAX_INFLIGHT="10", DELIVERY_LEASE_SECONDS=str(LEASE)
    )
    stack.start_intake()
    stack.start_workers(2)
    stack.sandbox.set_latency(500)
    admin = own_redis.client()
    admin.config_set("maxmemory-policy", "noeviction")
    started = time.monotonic()
    try:
        with Supervisor(stack) as supervisor:
            feeder = Feeder(stack, MESSAGES, rate=RATE, tag=tag)
            feeder.start()
            feeder.wait_progress(0.3, timeout=60)
            backlog = int(admin.get(stack.keys.open_total) or 0)  # open, not parked
            admin.set(f"{stack.prefix}:junk", JUNK)  # room taken, so the flow reaches the limit at once
            admin.config_set("maxmemory", used_memory(admin) + 16 * 1024)
            try:
                probes, refused_probes = keep_full(admin, stack.prefix, time.monotonic() + FULL_SECONDS)
                lifted_at_hold_off = wait_for_the_worst_moment(stack, admin)
            finally:
                admin.config_set("maxmemory", 0)
                admin.delete(f"{stack.prefix}:junk", f"{stack.prefix}:probe")
            accepted = feeder.finish(timeout=scale(120, 240))
            records = wait_all_final(stack, accepted.values(), timeout=scale(90, 240))
            supervisor.assert_no_unexpected_exits()
    finally:
        stack.sandbox.set_latency(0)
    elapsed = time.monotonic() - started
    logs = stack.logs()
    acc = account_stack(stack, accepted, records, supervisor=supervisor, tag=tag)
    oom_lines = sum(
        1 for e in logs if "OutOfMemoryError" in str(e.get("error", "")) or "OOM" in str(e.get("event"))
    )
    print(
        f"\nredis full {FULL_SECONDS:.0f} s (lifted just before a sweeper's hold-off ended: {lifted_at_hold_off}) with {backlog} open deliveries ({refused_probes}/{probes} probe writes "
        f"refused): {elapsed:.0f} s; {acc.summary()}; intake answers retried {dict(feeder.refused)}; "
        f"OOM lines in the logs {oom_lines}; released {reasons(logs, 'delivery.released')}; "
        f"swept {sum(int(e.get('count', 0)) for e in events(logs, 'scheduler.swept'))}"
    )
    # the workers keep freeing room (final records are compacted) and the loop takes it back
    # every 0.1 s: most probes, not all, find Redis full
    assert refused_probes >= 0.5 * probes, "Redis was not kept at maxmemory"
    assert lifted_at_hold_off, "no sweep was refused while Redis was full"
    assert backlog > 20, "messages must be in flight and waiting when Redis fills up"
    assert oom_lines > 0, "no process met the OOM refusals"
    assert acc.statuses == {"sent": MESSAGES}
    acc.assert_exact(allow_duplicates=False)
    assert_one_outcome_line(logs, records)
    assert_indexes_clean(stack, accepted.values())

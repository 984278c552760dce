"""Chaos: messages keep flowing while workers are SIGKILLed, Redis restarts and is SIGKILLed, and
the intake is replaced.

Short mode (CI): 600 messages; long mode (``RELIABILITY_LONG=1``): 3,000. Graph answers in 150 ms
and a worker has at most 20 calls in flight, so kills and outages hit messages in flight and
waiting. Redis runs with ``appendfsync always``: a 202 is on disk before it is answered, so even
its SIGKILL may lose no accepted message. MESSAGE_TTL is 8 s, shorter than the longest wait the
chaos causes (a killed worker's deliveries wait for their lease to end), so some deliveries may
end ``expired`` (or ``dead`` after a retry), but none may reach Graph after its TTL.

Pass: every message answered 202 ends final (``sent``, or past its TTL ``expired``/``dead``); no
process exits except those the test stops; every extra send of a delivery is explained by the
README's duplicate windows (an ambiguous call, or a reclaim after its holder was killed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, free_port
from tests.reliability.harness import (
    DurableRedis,
    Feeder,
    Supervisor,
    account_stack,
    assert_indexes_clean,
    events,
    run_tag,
    scale,
    wait_all_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(int(scale(240, 600)))]
MESSAGES = int(scale(600, 3000))
RATE = 150.0  # messages/s offered by the feeder
TTL = 8.0
#: A call reaches the sandbox a moment after the worker decided to make it (loopback, loaded host).
TRANSIT = 0.5


def test_chaos_nothing_lost_duplicates_explained(tmp_path: Path, make_stack: Any) -> None:
    tag = run_tag("chaos")
    redis_server = DurableRedis(free_port(), tmp_path / "redis")
    redis_server.start()
    stack: Stack = make_stack(
        redis_url=redis_server.url, MESSAGE_TTL=str(TTL), WORKER_MAX_INFLIGHT="20", GRAPH_READ_TIMEOUT="5"
    )
    stack.sandbox.set_latency(150)
    done_actions: list[str] = []
    started = time.monotonic()
    try:
        stack.start_intake()
        stack.start_workers(2)
        with Supervisor(stack) as supervisor:
            feeder = Feeder(stack, MESSAGES, rate=RATE, tag=tag)
            feeder.start()
            plan = [
                (0.15, "kill -9 a worker"),
                (0.3, "restart redis"),
                (0.45, "kill -9 a worker"),
                (0.6, "kill -9 redis"),
                (0.75, "SIGTERM the intake"),
            ]
            for fraction, action in plan:
                feeder.wait_progress(fraction, timeout=120)
                if action == "kill -9 a worker":
                    supervisor.kill(supervisor.workers()[0])
                    stack.start_worker(name=f"after-kill-{fraction}")  # what its supervisor does
                elif action == "restart redis":
                    redis_server.stop()  # SIGTERM: redis-server fsyncs its AOF and exits
                    time.sleep(1.0)
                    redis_server.start()
                elif action == "kill -9 redis":
                    redis_server.kill()
                    time.sleep(1.0)
                    redis_server.start()
                else:
                    intake = next(p for p in stack.procs if p.name == "intake" and p.proc.poll() is None)
                    supervisor.stop(intake)
                    stack.start_intake(port=stack.intake_port)
                done_actions.append(action)
            accepted = feeder.finish(timeout=180)
            records = wait_all_final(stack, accepted.values(), timeout=scale(120, 300))
            supervisor.assert_no_unexpected_exits()
        assert_indexes_clean(stack, accepted.values())
    finally:
        stack.sandbox.set_latency(0)
        stack.stop()  # before Redis: stopping workers write (and log) every outcome they still hold
        redis_server.stop()
    elapsed = time.monotonic() - started
    logs = stack.logs()  # complete now: a live worker's fenced send is logged by the time it stops
    acc = account_stack(stack, accepted, records, supervisor=supervisor, tag=tag)
    calls = [c for c in stack.sandbox.calls() if c["psid"] in accepted and c["status"] == 200]
    created = {psid: float(records[d]["created_at"]) for psid, d in accepted.items()}
    late_calls = [
        (c["psid"], round(c["at"] - created[c["psid"]], 2))
        for c in calls
        if c["at"] - created[c["psid"]] > TTL + TRANSIT
    ]
    late_records = {
        d: round(float(r["sent_at"]) - float(r["created_at"]), 2)
        for d, r in records.items()
        if r.get("status") == "sent" and float(r["sent_at"]) - float(r["created_at"]) > TTL
    }
    expired_early = {
        d: round(float(r["updated_at"]) - float(r["created_at"]), 2)
        for d, r in records.items()
        if r.get("status") in ("expired", "dead") and float(r["updated_at"]) - float(r["created_at"]) < TTL
    }
    print(
        f"\nchaos: {MESSAGES} messages, {elapsed:.0f} s, actions {done_actions}; {acc.summary()}; "
        f"intake answers retried {dict(feeder.refused)}; reclaimed {len(events(logs, 'delivery.reclaimed'))}, "
        f"swept {sum(int(e.get('count', 0)) for e in events(logs, 'scheduler.swept'))}; "
        f"calls after the TTL {late_calls[:5]}, recorded sends after the TTL {len(late_records)}"
    )
    assert done_actions == [a for _, a in plan]
    assert set(acc.statuses) <= {"sent", "expired", "dead"}, acc.statuses  # nothing failed, nothing open
    assert acc.statuses["sent"] > 0
    assert not expired_early, f"ended unsent before their TTL: {list(expired_early.items())[:5]}"
    acc.assert_exact()
    assert not late_calls, f"{len(late_calls)} calls reached Graph after their TTL: {late_calls[:5]}"
    assert not late_records, f"sends started after their TTL: {list(late_records.items())[:5]}"

"""5. Pacing and fairness with four workers on one page (see ``benchmarks/run.py``)."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import statistics
import time
from typing import Any

import orjson

from benchmarks.common import (
    PAGE_B,
    CpuMeter,
    max_in_window,
    percentile,
    sandbox_calls,
)
from benchmarks.harness import (
    PAGE_RATE,
    Row,
    Run,
    cleanup,
    default_concurrency,
    loadgen,
    per_second,
    pid_of,
    post_backlog,
    sent_times,
    stack_for,
    start_redis,
    start_sandbox,
    wait_drained,
)
from tests.conftest import (
    PAGE,
    Proc,
    Stack,
)

# --- 5. pacing and fairness -----------------------------------------------------------------------


def worker_send_times(stack: Stack, page: str) -> list[float]:
    """When the workers started each successful Graph call (``sent_at`` of ``delivery.sent``).
    Tells pacing apart from how the requests reached the sandbox (a stalled sandbox stamps a queue
    of arrivals at once)."""
    out = [
        float(line["sent_at"])
        for line in stack.logs()
        if line.get("event") == "delivery.sent" and line.get("page_id") == page and "sent_at" in line
    ]
    return sorted(out)


def transit(workers: list[Proc], calls: list[dict[str, Any]], page: str) -> dict[str, Any]:
    """How long each send took from a worker's ``sent_at`` to the sandbox's arrival stamp (joined
    by message id), and whether slow ones came together from several workers (a stall shared by
    all: the sandbox's or the machine's) or from one worker alone (its own event loop). The
    arrival peak above the workers' own peak is this spread: a stall of 40 ms at 250/s stamps
    ten arrivals at once."""
    arrived = {c["message_id"]: float(c["at"]) for c in calls if c["status"] == 200 and c.get("message_id")}
    samples: list[tuple[float, float, int]] = []  # (arrival, transit s, worker)
    for index, proc in enumerate(workers):
        for line in proc.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"delivery.sent"' not in line or page not in line:
                continue
            event = orjson.loads(line)
            at = arrived.get(event.get("message_id") or "")
            if at is not None and event.get("page_id") == page and "sent_at" in event:
                samples.append((at, at - float(event["sent_at"]), index))
    if not samples:
        return {"n": 0}
    ms = sorted(t * 1000 for _, t, _ in samples)
    slow = sorted((at, index) for at, t, index in samples if t > SLOW_TRANSIT)
    # a slow send is "shared" when another worker's send arrived slow within 10 ms of it
    shared = sum(
        1
        for i, (at, index) in enumerate(slow)
        if any(other != index and abs(at2 - at) <= 0.010 for at2, other in slow[max(0, i - 16) : i + 17])
    )
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "slow_over_ms": SLOW_TRANSIT * 1000,
        "slow": len(slow),
        "slow_shared_by_workers": shared,
    }


SLOW_TRANSIT = 0.020


def _cont(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)


def trickle_latencies(sandbox_url: str, records: list[list[Any]]) -> tuple[list[float], list[float]]:
    calls = {
        c["psid"]: float(c["at"]) for c in sandbox_calls(sandbox_url, page_id=PAGE_B) if c["status"] == 200
    }
    lat = [(calls[r[0]] - r[2]) * 1000 for r in records if r[3] == 202 and r[0] in calls]
    return lat, [r[2] for r in records]


def measure_pacing(run: Run) -> None:
    s = run.sizes
    n = s.pacing_n
    log_dir = run.log_dir("pacing")
    trickle = ["--page", PAGE_B, "--rate", "5", "--concurrency", "8"]
    with cleanup() as c:
        redis_server = start_redis(c, run.work, "pacing")
        sandbox = start_sandbox(c, log_dir)
        stack = stack_for(c, redis_server, sandbox, log_dir, PAGE_RATE_LIMIT=str(PAGE_RATE))
        stack.start_intake()
        concurrency = default_concurrency()
        workers = stack.start_workers(4, concurrency=concurrency)

        idle_path = run.work / "trickle-idle.json"
        loadgen(
            "paced",
            [
                "--url",
                stack.intake_url,
                *trickle,
                "--n",
                str(int(5 * s.trickle_idle)),
                "--tag",
                "51",
                "--records",
                str(idle_path),
            ],
            s.trickle_idle + 60,
        )
        wait_drained(stack, 30)

        # page A's backlog is posted with the workers stopped (SIGSTOP), so that it is a backlog
        # when they resume and the posting's CPU does not compete with the pacing being measured
        for w in workers:
            os.kill(pid_of(w), signal.SIGSTOP)

        def resume_all() -> None:
            for w in workers:
                _cont(pid_of(w))

        c.add(resume_all)
        try:
            posted = post_backlog(stack, n, tag=52)
        finally:
            resume_all()
        meter = CpuMeter({f"worker{i}": pid_of(w) for i, w in enumerate(workers)}).start()
        time.sleep(1.0)
        busy_path = run.work / "trickle-busy.json"
        loadgen(
            "paced",
            [
                "--url",
                stack.intake_url,
                *trickle,
                "--n",
                str(int(5 * s.trickle_busy)),
                "--tag",
                "53",
                "--records",
                str(busy_path),
            ],
            s.trickle_busy + 60,
        )
        drained = wait_drained(stack, n / PAGE_RATE + 60)
        meter.stop()
        run.note_others("pacing", meter)
        a_calls = sandbox_calls(sandbox.url, page_id=PAGE)
        a_times = sent_times(a_calls)
        a_started = worker_send_times(stack, PAGE)
        a_transit = transit(workers, a_calls, PAGE)
        idle_lat, _ = trickle_latencies(sandbox.url, orjson.loads(idle_path.read_bytes()))
        busy_lat, busy_at = trickle_latencies(sandbox.url, orjson.loads(busy_path.read_bytes()))

    peak = max_in_window(a_times)
    span = a_times[-1] - a_times[0] if len(a_times) > 1 else math.nan
    mean = (len(a_times) - 1) / span if span and span > 0 else math.nan
    overlap = bool(a_times) and min(busy_at) >= a_times[0] and max(busy_at) <= a_times[-1]
    idle_p50, busy_p50 = statistics.median(idle_lat), statistics.median(busy_lat)
    run.details["pacing"] = {
        "worker_concurrency": concurrency,
        "limit": PAGE_RATE,
        "n": n,
        "posted": posted,
        "drained": drained,
        "sent": len(a_times),
        "peak_1s": peak,
        "mean_rate": mean,
        "span_s": span,
        "trickle_idle_ms": {"p50": idle_p50, "p99": percentile(idle_lat, 99), "n": len(idle_lat)},
        "trickle_busy_ms": {"p50": busy_p50, "p99": percentile(busy_lat, 99), "n": len(busy_lat)},
        "trickle_inside_backlog": overlap,
        "peak_2s_per_s": max_in_window(a_times, 2.0) / 2,
        "peak_5s_per_s": max_in_window(a_times, 5.0) / 5,
        "largest_arrival_gap_ms": max((b - a for a, b in itertools.pairwise(a_times)), default=0.0) * 1000,
        "worker_side": {
            "n": len(a_started),
            "peak_1s": max_in_window(a_started) if a_started else None,
            "mean_rate": (len(a_started) - 1) / (a_started[-1] - a_started[0])
            if len(a_started) > 1
            else None,
            "per_second": per_second(a_started),
        },
        "transit": a_transit,
        "per_second": per_second(a_times),
        "worker_cores": meter.cores(),
    }
    run.rows.append(
        Row(
            "5. pacing: max sends in a 1 s window",
            float(peak),
            PAGE_RATE * 1.05,
            peak / PAGE_RATE,
            "<= 1.05 x 250",
            peak <= PAGE_RATE * 1.05,
            "msg",
        )
    )
    started_peak = max_in_window(a_started) if a_started else math.nan
    run.rows.append(
        Row(
            "   pacing: the same, as the workers sent (sent_at)",
            float(started_peak),
            PAGE_RATE * 1.05,
            started_peak / PAGE_RATE,
            "info",
            None,
            "msg",
        )
    )
    run.rows.append(
        Row(
            "   pacing: mean rate over the backlog",
            mean,
            PAGE_RATE * 0.95,
            mean / PAGE_RATE,
            ">= 0.95 x 250",
            mean >= PAGE_RATE * 0.95 and len(a_times) == n,
            "msg/s",
        )
    )
    run.rows.append(
        Row(
            "   fairness: B p50, A backlogged / idle",
            busy_p50,
            idle_p50,
            busy_p50 / idle_p50,
            "<= 2x",
            busy_p50 <= 2 * idle_p50 and overlap,
            "ms",
        )
    )

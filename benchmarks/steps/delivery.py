"""2 + 3. Delivery rate and CPU cost per message, against the raw client (see ``benchmarks/run.py``)."""

from __future__ import annotations

import math
import time
from typing import Any

from benchmarks.common import (
    CpuMeter,
    graph_url,
    median_round,
    sandbox_calls,
    spread,
    window_rate,
)
from benchmarks.harness import (
    DELIVERY_CONCURRENCY,
    INFLIGHT,
    Row,
    Run,
    cleanup,
    loadgen,
    pid_of,
    post_backlog,
    sent_times,
    stack_for,
    start_redis,
    start_sandbox,
    wait_drained,
)

# --- 2 + 3. delivery and cost ---------------------------------------------------------------------


def _delivery_round(run: Run) -> dict[str, Any]:
    """One backlog drained by one worker, then the raw client on the same sandbox."""
    s = run.sizes
    n = s.delivery_n
    log_dir = run.log_dir("delivery")
    with cleanup() as c:
        redis_server = start_redis(c, run.work, "delivery")
        sandbox = start_sandbox(c, log_dir)
        stack = stack_for(c, redis_server, sandbox, log_dir, PAGE_RATE_LIMIT="1000000")
        intake = stack.start_intake()

        # the backlog, posted through the intake (its CPU and redis's are part of the cost)
        pre = CpuMeter({"intake": pid_of(intake), "redis": pid_of(redis_server)}).start()
        posted = post_backlog(stack, n, tag=2)
        pre_cpu = pre.stop()
        run.note_others("delivery", pre)
        intake.stop(timeout=15)  # not needed while draining: keep processes to the minimum
        client = stack.redis()
        batches = int(client.llen(stack.queue))
        hold = f"{stack.queue}:bench-hold"
        client.rename(stack.queue, hold)  # parked while the worker starts

        worker = stack.start_worker(concurrency=DELIVERY_CONCURRENCY)
        time.sleep(0.5)
        drain = CpuMeter(
            {"worker": pid_of(worker), "redis": pid_of(redis_server), "sandbox": pid_of(sandbox.proc)}
        ).start()
        released_at = time.time()
        client.rename(hold, stack.queue)
        drained = wait_drained(stack, s.drain_timeout)
        drain_cpu = drain.stop()
        run.note_others("delivery", drain)
        drain_cores = drain.cores()
        calls = sandbox_calls(sandbox.url)
        times = sent_times(calls)
        rate, span, in_window = window_rate(times)
        worker.stop(timeout=20)

        # the ceiling: a raw aiohttp client, same bodies, same sandbox, same in-flight count
        import httpx

        httpx.delete(f"{sandbox.url}/__sandbox/calls", timeout=10).raise_for_status()
        raw_meter = CpuMeter({"sandbox": pid_of(sandbox.proc)}).start()
        raw = loadgen(
            "raw",
            ["--url", graph_url(sandbox.url), "--n", str(n), "--inflight", str(INFLIGHT), "--tag", "3"],
            timeout=n / 100 + 60,
        )
        raw_meter.stop()
        run.note_others("delivery", raw_meter)
        raw_times = sent_times(sandbox_calls(sandbox.url))
        raw_rate, raw_span, raw_in_window = window_rate(raw_times)

    delivered = len(times)
    service_cpu = pre_cpu["intake"] + pre_cpu["redis"] + drain_cpu["worker"] + drain_cpu["redis"]
    per_1000 = service_cpu / delivered * 1000 if delivered else math.nan
    raw_per_1000 = raw["cpu_s"] / raw["n"] * 1000
    return {
        "n": n,
        "rate": rate,
        "raw_rate": raw_rate,
        "celery_messages": batches,
        "posted": posted,
        "drained": drained,
        "delivered": delivered,
        "first_send_after_release_s": (times[0] - released_at) if times else None,
        "rate_window": {"rate": rate, "span_s": span, "events": in_window},
        "drain_cpu_s": drain_cpu,
        "drain_cores": drain_cores,
        "preload_cpu_s": pre_cpu,
        "raw": raw,
        "raw_rate_window": {"rate": raw_rate, "span_s": raw_span, "events": raw_in_window},
        "raw_sandbox_cores": raw_meter.cores(),
        "cost": {
            "service_cpu_s": service_cpu,
            "per_1000_s": per_1000,
            "breakdown_per_1000_s": {
                "intake": pre_cpu["intake"] / delivered * 1000 if delivered else None,
                "redis": (pre_cpu["redis"] + drain_cpu["redis"]) / delivered * 1000 if delivered else None,
                "worker": drain_cpu["worker"] / delivered * 1000 if delivered else None,
            },
            "raw_per_1000_s": raw_per_1000,
        },
    }


def _median(rounds: list[dict[str, Any]], name: str) -> float:
    return spread([float(r["cost"][name]) for r in rounds])["median"]


def measure_delivery(run: Run) -> None:
    """``delivery_rounds`` rounds (fresh Redis, sandbox and processes each). Each figure is the
    median of its rounds (the range is shown beside it)."""
    rounds = [_delivery_round(run) for _ in range(run.sizes.delivery_rounds)]
    fast = median_round(rounds, "rate")
    raw_fast = median_round(rounds, "raw_rate")
    cheap = min(rounds, key=lambda r: abs(float(r["cost"]["per_1000_s"]) - _median(rounds, "per_1000_s")))
    complete = all(r["delivered"] == r["n"] for r in rounds)
    rates = spread([float(r["rate"]) for r in rounds])
    raw_rates = spread([float(r["raw_rate"]) for r in rounds])
    costs = spread([float(r["cost"]["per_1000_s"]) for r in rounds])
    raw_costs = spread([float(r["cost"]["raw_per_1000_s"]) for r in rounds])
    run.details["delivery"] = {
        **fast,
        "rate_spread": rates,
        "raw_rate_spread": raw_rates,
        "rounds_n": len(rounds),
        "rounds": rounds,
    }
    rate, raw_rate = rates["median"], raw_rates["median"]
    per_1000, raw_per_1000 = costs["median"], raw_costs["median"]
    run.details["cost"] = {
        "service": cheap["cost"],
        "per_1000_s": costs,
        "raw_per_1000_s": raw_per_1000,
        "raw_per_1000_spread": raw_costs,
    }
    drain_cores = fast["drain_cores"]
    raw_sandbox = raw_fast["raw_sandbox_cores"]
    ratio = rate / raw_rate
    run.rows.append(
        Row(
            f"2. delivery msg/s (1 worker, c=8; {rates['min']:,.0f}-{rates['max']:,.0f} / "
            f"{raw_rates['min']:,.0f}-{raw_rates['max']:,.0f})",
            rate,
            raw_rate,
            ratio,
            ">= 0.5x ceiling",
            ratio >= 0.5 and complete,
            "msg/s",
        )
    )
    run.rows.append(
        Row(
            "   sandbox cores busy (worker / raw)",
            drain_cores["sandbox"],
            raw_sandbox["sandbox"],
            None,
            "info (< 1 core)",
            None,
            "cores",
        )
    )
    cost_ratio = per_1000 / raw_per_1000
    run.rows.append(
        Row(
            f"3. CPU s per 1,000 delivered, backlog ({costs['min']:.3f}-{costs['max']:.3f} / "
            f"{raw_costs['min']:.3f}-{raw_costs['max']:.3f})",
            per_1000,
            raw_per_1000,
            cost_ratio,
            "<= 5x raw client",
            cost_ratio <= 5 and complete,
            "cpu-s",
        )
    )

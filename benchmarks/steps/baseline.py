"""6. Baseline: one Celery task per message (see ``benchmarks/run.py`` and ``benchmarks/baseline.py``)."""

from __future__ import annotations

import math
import time

from benchmarks.common import (
    CpuMeter,
    clean_env,
    graph_url,
    run_module,
    sandbox_calls,
    sandbox_sent,
    start_module,
    wait_log,
    window_rate,
)
from benchmarks.harness import (
    Row,
    Run,
    cleanup,
    pid_of,
    sent_times,
    start_redis,
    start_sandbox,
)
from tests.conftest import wait_until

# --- 6. baseline ----------------------------------------------------------------------------------


def measure_baseline(run: Run) -> None:
    s = run.sizes
    n = s.baseline_n
    log_dir = run.log_dir("baseline")
    with cleanup() as c:
        redis_server = start_redis(c, run.work, "baseline")
        sandbox = start_sandbox(c, log_dir)
        env = clean_env(BASELINE_REDIS_URL=redis_server.url)
        published = run_module(
            "benchmarks.baseline",
            ["--url", graph_url(sandbox.url), "--n", str(n)],
            timeout=n / 200 + 60,
            env=env,
        )
        client = redis_server.client()
        from benchmarks.baseline import QUEUE

        hold = f"{QUEUE}:bench-hold"
        client.rename(QUEUE, hold)
        worker = start_module(
            "baseline-worker",
            "celery",
            [
                "-A",
                "benchmarks.baseline",
                "worker",
                "--pool=threads",
                "--concurrency=32",
                f"--queues={QUEUE}",
                "--loglevel=WARNING",
            ],  # Celery's defaults otherwise, as the plain design runs it
            env,
            log_dir,
        )
        c.add(worker.stop)
        if not wait_log(worker.log, "baseline worker ready", 60):
            raise RuntimeError(f"baseline worker did not start:\n{worker.tail()}")
        time.sleep(0.5)
        meter = CpuMeter(
            {"worker": worker.pid, "redis": pid_of(redis_server), "sandbox": pid_of(sandbox.proc)}
        ).start()
        client.rename(hold, QUEUE)
        done = wait_until(lambda: sandbox_sent(sandbox.url) >= n, s.drain_timeout, 0.1)
        cpu = meter.stop()
        run.note_others("baseline", meter)
        times = sent_times(sandbox_calls(sandbox.url))
        rate, span, in_window = window_rate(times)

    per_1000_drain = (cpu["worker"] + cpu["redis"]) / len(times) * 1000 if times else math.nan
    per_1000 = per_1000_drain + published["cpu_ms_per_task"]  # ms per task == s per 1,000
    run.details["baseline"] = {
        "n": n,
        "published": published,
        "drained": done,
        "delivered": len(times),
        "rate_window": {"rate": rate, "span_s": span, "events": in_window},
        "drain_cpu_s": cpu,
        "cores": meter.cores(),
        "per_1000_s": {"drain": per_1000_drain, "publish": published["cpu_ms_per_task"], "total": per_1000},
    }
    delivery = run.details.get("delivery", {})
    raw_rate = delivery.get("raw_rate_window", {}).get("rate", math.nan)
    ours = delivery.get("rate_window", {}).get("rate", math.nan)
    cost = run.details.get("cost", {})  # the figure of row 3 (each side's cheapest round)
    ours_cost = cost.get("service", {}).get("per_1000_s", math.nan)
    raw_cost = cost.get("raw_per_1000_s", math.nan)
    gain = f"info (ours {ours:.0f} msg/s = {ours / rate:.2f}x)" if not math.isnan(ours) else "info"
    cost_gain = f"info (ours {ours_cost:.2f} s)" if not math.isnan(ours_cost) else "info"
    run.rows.append(
        Row(
            "6. baseline: Celery task/msg, httpx, 32 thr",
            rate,
            raw_rate,
            rate / raw_rate,
            gain,
            None,
            "msg/s",
        )
    )
    run.rows.append(
        Row(
            "   baseline CPU s per 1,000 (publish+drain)",
            per_1000,
            raw_cost,
            per_1000 / raw_cost,
            cost_gain,
            None,
            "cpu-s",
        )
    )

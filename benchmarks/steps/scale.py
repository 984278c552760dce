"""9. ``status`` and a /metrics scrape at 1,000 and at 1,000,000 open deliveries.

An intake (no worker: what is accepted stays open) on a fresh redis-server with the AOF switched
off (persistence is not what is measured, and 1,000,000 records would write about a GB of it).
Open deliveries are made by the intake's own group commit in this process (``accept.lua`` in
batches of 500, ``benchmarks/console.py``'s ``accept``; a 5-byte text body), 1,000 first, then up
to ``scale_large``. At each size: the status read model (``worker.status.read``, what
``messenger-worker status`` prints; in this process, sync client) and a GET of the intake's
/metrics listener (INTAKE_METRICS_PORT, over loopback), each ``ROUNDS`` times in a row, p50 and
p95. Bar: the p50 at the large size within 1.5x of the p50 at 1,000 plus 1 ms (constant time: a
read that grows with the backlog is 10-1000x slower at 1,000x the data; the p95 of 50 samples on a
shared machine is mostly its noise, so it is shown, not judged).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from benchmarks import console
from benchmarks.common import CpuMeter, percentile
from benchmarks.harness import Row, Run, cleanup, open_count, pid_of, stack_for, start_redis, start_sandbox
from worker import status
from worker.config import load_settings

ROUNDS = 50
FILL_BATCH = "500"  # BATCH_MAX of the in-process committer that fills Redis (its largest)


def _time(fn: Any) -> dict[str, float]:
    fn()  # warm: connections, imports
    samples = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": percentile(samples, 50), "p95_ms": percentile(samples, 95), "max_ms": max(samples)}


def _fill(env: dict[str, str], n: int, tag: str) -> float:
    started = time.monotonic()
    saved = os.environ.get("BATCH_MAX")
    os.environ["BATCH_MAX"] = FILL_BATCH
    try:
        console.accept(env, n, tag)
    finally:
        if saved is None:
            os.environ.pop("BATCH_MAX", None)
        else:
            os.environ["BATCH_MAX"] = saved
    return time.monotonic() - started


def measure_scale(run: Run) -> None:
    s = run.sizes
    log_dir = run.log_dir("scale")
    sizes: dict[str, dict[str, Any]] = {}
    with cleanup() as c:
        redis_server = start_redis(c, run.work, "scale")
        client = redis_server.client()
        client.config_set("appendonly", "no")
        sandbox = start_sandbox(c, log_dir)
        stack = stack_for(c, redis_server, sandbox, log_dir)
        stack.start_intake()
        settings = load_settings(
            **{k.lower(): v for k, v in stack.env.items() if k in ("REDIS_URL", "KEY_PREFIX", "QUEUE_NAME")},
            _env_file=None,
        )
        url = stack.intake_metrics_url
        scrape_client = httpx.Client(timeout=30)
        c.add(scrape_client.close)

        def scrape() -> None:
            resp = scrape_client.get(url)
            resp.raise_for_status()
            if b"bmw_open_deliveries" not in resp.content:
                raise RuntimeError("no bmw_open_deliveries in the scrape")

        filled = 0
        for size in (s.scale_small, s.scale_large):
            fill_s = _fill(stack.env, size - filled, f"s{size}-")
            filled = open_count(stack)
            if filled < size:
                raise RuntimeError(f"only {filled} of {size} open deliveries")
            read = status.read(client, settings)
            meter = CpuMeter({"redis": pid_of(redis_server)}).start()  # for "others" only
            sizes[str(size)] = {
                "open": filled,
                "fill_s": round(fill_s, 1),
                "queue_depth": read.queue_depth,
                "redis_used_memory": read.redis_used_memory,
                "status_read": _time(lambda: status.read(client, settings)),
                "metrics_scrape": _time(scrape),
            }
            meter.stop()
            run.note_others("scale", meter)
    run.details["scale"] = {"rounds": ROUNDS, "sizes": sizes}
    small, large = sizes[str(s.scale_small)], sizes[str(s.scale_large)]
    for name, what in (("status_read", "status read"), ("metrics_scrape", "/metrics scrape")):
        big, base = large[name]["p50_ms"], small[name]["p50_ms"]
        run.rows.append(
            Row(
                f"9. {what} p50 at {s.scale_large:,} open (at {s.scale_small:,}; p95 "
                f"{large[name]['p95_ms']:.1f} / {small[name]['p95_ms']:.1f} ms)",
                big,
                base,
                big / base,
                "<= 1.5x + 1 ms",
                big <= 1.5 * base + 1,
                "ms",
            )
        )

"""What idle workers cost Redis: redis-server's CPU a second, and the commands behind it, with no
worker, one and four workers that have nothing to do.

Why: every worker process asks Redis a few things every second whatever the traffic (its
scheduler's rounds, Celery's poll, the engine's reads), so a fleet sized for its peaks pays it
all day. A fresh redis-server with the README's RECOMMENDED_CONFIG (AOF on) and the sandbox; the
workers as the benchmark starts them (``benchmarks.harness.service_env``: production timings,
SCHEDULER_IDLE_SECONDS at its default); each figure is ``INFO cpu`` (user + sys) over
``--seconds``, after the workers have been idle 10 s; commands from ``INFO commandstats`` (a
script's inner commands are counted too, as Redis counts them; the benchmark's own reads left
out: ``rediscost.commandstats``). Loopback only; bounded by time.

    python -m benchmarks.idle [--seconds 20] [--workers 1,4]

For an A/B, run it from a ``git worktree`` of the other commit. Writes
``benchmarks/results/idle/{time}-{commit}.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import rediscost
from benchmarks.harness import cleanup, stack_for, start_redis, start_sandbox
from benchmarks.history import free_path, git_commit, history_name

RESULTS = Path(__file__).parent / "results" / "idle"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="each measurement (at most 120)")
    p.add_argument("--workers", default="1,4", help="idle worker counts, ascending (at most 8)")
    return p.parse_args()


def _measure(client: Any, seconds: float) -> dict[str, Any]:
    """Redis's CPU and commands over ``seconds`` (the measurement's own INFO left out)."""
    cpu, calls = rediscost.redis_cpu(client), rediscost.commandstats(client)
    time.sleep(seconds)
    used = rediscost.cpu_delta(cpu, rediscost.redis_cpu(client))["total"]
    per_s = {
        name: round((stat["calls"] - calls.get(name, {"calls": 0.0})["calls"]) / seconds, 2)
        for name, stat in sorted(rediscost.commandstats(client).items())
        if stat["calls"] > calls.get(name, {"calls": 0.0})["calls"]
    }
    return {"redis_cpu_ms_per_s": round(1000 * used / seconds, 3), "commands_per_s": per_s}


def main() -> int:
    args = _args()
    seconds = min(max(args.seconds, 1.0), 120.0)
    counts = sorted({min(max(int(n), 1), 8) for n in args.workers.split(",")})
    git = git_commit()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bmw-idle-") as tmp, cleanup() as c:
        work = Path(tmp)
        server = start_redis(c, work, f"idle-{time.monotonic_ns()}")
        sandbox = start_sandbox(c, work)
        stack = stack_for(c, server, sandbox, work)
        client = server.client()
        time.sleep(3)
        rows.append({"workers": 0, **_measure(client, seconds)})
        started = 0
        for n in counts:
            while started < n:
                stack.start_worker(concurrency=8)
                started += 1
            time.sleep(10)  # started, connected, first rounds over
            rows.append({"workers": n, **_measure(client, seconds)})
    bare = rows[0]["redis_cpu_ms_per_s"]
    for row in rows[1:]:
        row["per_worker_ms_per_s"] = round((row["redis_cpu_ms_per_s"] - bare) / row["workers"], 3)
    result = {
        "command": "python -m benchmarks.idle " + " ".join(sys.argv[1:]),
        "git": git,
        "seconds": seconds,
        "rows": rows,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = free_path(RESULTS, history_name(result["finished_at"], git["commit"], git["dirty"]))
    path.write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        per = f", {row['per_worker_ms_per_s']} per worker" if "per_worker_ms_per_s" in row else ""
        print(f"{row['workers']} idle workers: Redis {row['redis_cpu_ms_per_s']} ms of CPU a second{per}")
        print("   ", ", ".join(f"{k} {v}/s" for k, v in row["commands_per_s"].items()))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

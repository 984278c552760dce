"""What a moved page's requests cost the intake: the old shard asked for each Idempotency-Key.

Why: for two IDEMPOTENCY_TTLs after ``shards move``, a request with a key for the moved page is
looked up on the shard it came from before its new shard accepts it (worker/intake/moved.py):
one more round trip and one more script call per request, for that page only. Two fresh
redis-servers with RECOMMENDED_CONFIG, one intake with REDIS_SHARDS and both pages pinned to
shard 1; shard 1's P:moved names one of them as moved from shard 0 (whose buckets do not know
the keys: every lookup is made and misses, the costly case). wrk's closed loop (64 connections,
each request its own key) alternates between the two pages, ABBA, each round on emptied shards;
medians of ``--rounds`` a side. No worker runs: what is measured is the intake. Loopback only;
bounded by time.

    python -m benchmarks.moved [--rounds 3] [--seconds 5]

Writes ``benchmarks/results/moved/{time}-{commit}.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import PAGE_B, CpuMeter, intake_path, spread
from benchmarks.harness import cleanup, pid_of, service_env, start_redis
from benchmarks.history import free_path, git_commit, history_name
from benchmarks.steps.intake import wrk_closed
from tests.conftest import PAGE, free_port, start_process, wait_port
from worker.store import Keys

RESULTS = Path(__file__).parent / "results" / "moved"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds a side (at most 10)")
    p.add_argument("--seconds", type=float, default=5.0, help="each round's load (at most 30)")
    return p.parse_args()


def main() -> int:
    args = _args()
    rounds, seconds = min(max(args.rounds, 1), 10), min(max(args.seconds, 1.0), 30.0)
    git = git_commit()
    measured: dict[str, list[dict[str, Any]]] = {"moved": [], "plain": []}
    with tempfile.TemporaryDirectory(prefix="bmw-moved-") as tmp, cleanup() as c:
        work = Path(tmp)
        servers = [start_redis(c, work, f"moved-{i}-{time.monotonic_ns()}") for i in range(2)]
        env = service_env(
            servers[0].url,
            "http://127.0.0.1:9",
            REDIS_SHARDS=",".join(s.url for s in servers),
            SHARD_PAGES=json.dumps({PAGE: 1, PAGE_B: 1}),
        )
        keys = Keys(env["KEY_PREFIX"], env["QUEUE_NAME"])
        clients = [s.client() for s in servers]
        port = free_port()
        app = start_process("intake", ["intake", "--port", str(port)], env, work)
        c.add(app.stop)
        if not wait_port(port):
            raise RuntimeError(f"the intake did not start:\n{app.tail()}")
        pids = {"app": pid_of(app), "old_shard": pid_of(servers[0]), "new_shard": pid_of(servers[1])}
        order = list(itertools.islice(itertools.cycle(["moved", "plain", "plain", "moved"]), 2 * rounds))
        for side in order:
            for client in clients:
                client.flushall()
            clients[1].hset(keys.moved, PAGE, f"0:{time.time() + 86400:.0f}")
            time.sleep(5.5)  # the intake's next read of P:moved (every 5 s)
            page = PAGE if side == "moved" else PAGE_B
            url = f"http://127.0.0.1:{port}{intake_path(page)}"
            result = wrk_closed(url, 1.0, seconds, CpuMeter(pids))
            n = result["requests"]
            cpu = result["cpu"]
            measured[side].append(
                {
                    "rps": result["rps"],
                    "errors": result["errors"],
                    "app_cpu_us_per_request": 1e6 * cpu["app"] / n,
                    "old_shard_cpu_us_per_request": 1e6 * cpu["old_shard"] / n,
                    "new_shard_cpu_us_per_request": 1e6 * cpu["new_shard"] / n,
                    "p50_ms": result["p50_ms"],
                    "p99_ms": result["p99_ms"],
                }
            )
    summary = {
        side: {k: spread([r[k] for r in rows]) for k in rows[0] if k != "errors"}
        for side, rows in measured.items()
    }
    ratio = {
        "rps": summary["moved"]["rps"]["median"] / summary["plain"]["rps"]["median"],
        "app_cpu": summary["moved"]["app_cpu_us_per_request"]["median"]
        / summary["plain"]["app_cpu_us_per_request"]["median"],
    }
    result_json = {
        "command": "python -m benchmarks.moved " + " ".join(sys.argv[1:]),
        "git": git,
        "rounds": rounds,
        "seconds": seconds,
        "summary": summary,
        "moved_over_plain": ratio,
        "runs": measured,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = free_path(RESULTS, history_name(result_json["finished_at"], git["commit"], git["dirty"]))
    path.write_text(json.dumps(result_json, indent=2) + "\n")
    for side in ("plain", "moved"):
        s = summary[side]
        print(
            f"{side:>5}: {s['rps']['median']:,.0f} req/s ({s['rps']['min']:,.0f}-{s['rps']['max']:,.0f}), "
            f"intake {s['app_cpu_us_per_request']['median']:.0f} µs CPU a request, old shard "
            f"{s['old_shard_cpu_us_per_request']['median']:.1f} µs, p50 {s['p50_ms']['median']:.1f} ms"
        )
    print(
        f"moved / plain: {ratio['rps']:.3f} of the requests/s, {ratio['app_cpu']:.3f}x the intake's CPU a request"
    )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

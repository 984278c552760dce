"""``python -m benchmarks.run [--quick]``: the service against its ceilings, in one bounded run.

Each figure is measured in the same run as its ceiling, on 127.0.0.1, with the project's sandbox
(``python -m worker sandbox --latency-ms 50``) as the Graph API. Every measurement starts its own
fresh redis-server (free port, AOF everysec as the embedded default) and its own processes, and
stops them in a ``finally``.

1. Intake: requests/s and p50/p99 of ~300-byte Send API POSTs (Bearer + Idempotency-Key), 64
   connections, one intake process, against a ceiling on the same stack (``benchmarks/ceiling.py``):
   a bare Starlette app on the same uvicorn, with the intake's Redis client (hiredis packing), its
   GC settings and a group commit like the intake's (one LPUSH of up to 50 bodies, two in flight),
   that parses the body and stores it. Bar: >= 0.8x. Ceiling and intake alternate (ABBAAB, 3
   rounds each; ``--quick`` 2); each side's median round counts, the range is shown. The load
   comes from wrk (one thread, ``benchmarks/wrk_post.lua``) when it is installed, else from the
   Python load generator, which takes most of a core of the two the server needs (the JSON's
   ``loadgen`` says which).
   The app's CPU per request is shown too: on 2 shared cores it moves less than requests/s.
2. Delivery: messages/s of one worker (``--concurrency 8``) draining a backlog posted through the
   intake, PAGE_RATE_LIMIT=1e6, sandbox answering after 50 ms; rate from the sandbox's arrival
   times between the 10th and 90th percentile of arrivals (start-up and tail left out). Ceiling: a
   raw aiohttp client (on uvloop, like the engine's loop) sending the same bodies to the same
   sandbox with WORKER_MAX_INFLIGHT (100) in flight. Bar: >= 0.5x. The backlog is parked under
   another key while the worker starts, so the worker's start-up is outside the measurement.
   Three rounds (``--quick``: one), each on fresh processes; each side's median counts.
3. Cost: CPU seconds (``/proc/<pid>/stat`` utime+stime, children included) of intake + redis while
   the backlog is posted, plus worker + redis while it drains, per 1,000 delivered, against the
   raw client's own CPU per 1,000 requests. Bar: <= 5x. Each side's median round of (2) counts.
   The same cost with live traffic (step 4's stack): intake + redis + worker while traffic arrives
   at 50% and at 100% of the rate of (2) and is delivered (info rows).
4. Latency: an open-loop paced sender at 50% of the rate of (2) posts to the intake with one
   worker running; accept = the client receiving the 202. Reported: accept -> Graph request
   arrival (the sandbox's ``at``), accept -> Graph answer (``at`` + the 50 ms latency), and the
   record's ``created_at`` -> arrival. Bar: p50 of accept -> Graph answer <= 50 + 20 ms. The
   worker runs with its own default ``--concurrency`` (as in 5).
5. Pacing: 4 workers, one page, PAGE_RATE_LIMIT=250: the most sends in any trailing 1 s window
   (<= 1.05 x 250) and the mean rate over the backlog (>= 0.95 x 250), from arrival times;
   fairness: page B's 5 msg/s trickle accept -> arrival p50 with A backlogged vs A idle (<= 2x).
   A's backlog is posted through the intake while the workers are SIGSTOPped, so it is a backlog
   when they resume. The same figures from the workers' side (``delivery.sent``'s ``sent_at``)
   are in the JSON and the peak as an info row, and each send's transit (``sent_at`` to the
   sandbox's arrival, joined by message id; slow ones shared by several workers point at the
   sandbox), to tell pacing apart from arrival jitter.
6. Baseline: one Celery task per message, sync ``httpx.Client``, threads pool of 100 (the worker's
   in-flight limit)
   (``benchmarks/baseline.py``, Celery's defaults otherwise), publishing N tasks with
   ``send_task`` and draining them from the same kind of sandbox. No bar: it shows the gain.
7. Console: each operator-console page's p95 with 100,000 open deliveries against the same page
   at 1,000 (``benchmarks/console.py``). Bar: every p95 under 100 ms.
8. Redis: redis-server CPU per delivered message and bytes per open and per finished delivery,
   each against a floor measured in the same round; INFO commandstats per phase and a per-script
   SLOWLOG attribution (``benchmarks/steps/redis.py``). Goals: <= 30 us; body + 400 B; 250 B.
9. Scale: the status read model and a /metrics scrape at 1,000 and 1,000,000 open deliveries
   (``benchmarks/steps/scale.py``). Bar: p50 at 1,000,000 within 1.5x + 1 ms of the one at 1,000.
10. Pages: one backlog on one page and over 1,000 pages: CPU per message (<= 1.2x) and fairness
   across pages (slowest page's p50 <= 2x the median page's) (``benchmarks/steps/pages.py``).

Nothing is pinned: the load generator, the sandbox, redis-server and the service share the cores.
Each step reports the CPU other processes of the machine used meanwhile ("others"); a run where
that is not ~0 is disturbed and its figures are not comparable.

Writes every run's JSON to ``benchmarks/results/history/<UTC time>-<commit>.json`` (never
overwritten; ``benchmarks/history.py``), a full run also to ``benchmarks/results/latest.json``,
and prints the table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import orjson

from benchmarks import harness, history
from benchmarks.common import machine
from benchmarks.harness import FULL, QUICK, RESULTS, Row, Run, table
from benchmarks.steps.baseline import measure_baseline
from benchmarks.steps.console import measure_console
from benchmarks.steps.delivery import measure_delivery
from benchmarks.steps.intake import measure_intake
from benchmarks.steps.latency import measure_latency
from benchmarks.steps.pacing import measure_pacing
from benchmarks.steps.pages import measure_pages
from benchmarks.steps.redis import measure_redis
from benchmarks.steps.scale import measure_scale
from worker.store import connections

STEPS: dict[str, Callable[[Run], None]] = {
    "intake": measure_intake,
    "delivery": measure_delivery,
    "latency": measure_latency,
    "pacing": measure_pacing,
    "baseline": measure_baseline,
    "console": measure_console,
    "redis": measure_redis,
    "scale": measure_scale,
    "pages": measure_pages,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: under 3 minutes")
    p.add_argument("--only", choices=list(STEPS), action="append", help="run only these steps")
    p.add_argument(
        "--output",
        help="also write the JSON here (it always goes to results/history/; latest.json: full runs)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the work dir (process logs)")
    p.add_argument(
        "--redis-defaults",
        action="store_true",
        help="run redis-server with its defaults, not the README's RECOMMENDED_CONFIG (memory figures)",
    )
    args = p.parse_args(argv)
    harness.REDIS_ARGS[:] = [] if args.redis_defaults else connections.server_args()
    sizes = QUICK if args.quick else FULL
    command = "python -m benchmarks.run" + (
        " " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    info = machine()
    git = history.git_commit()
    work = Path(tempfile.mkdtemp(prefix="bmw-bench-"))
    run = Run(sizes, work)
    started = time.monotonic()
    print(
        f"machine: {info['cpu_model']}, {info['cores']} cores, Python {info['python']}, "
        f"redis-server {info['redis_server']}, load {' '.join(info['loadavg_at_start'])}"
    )
    print(f"work dir: {work}", flush=True)
    try:
        for name, step in STEPS.items():
            if args.only and name not in args.only:
                continue
            t0 = time.monotonic()
            print(f"[{time.monotonic() - started:6.1f}s] {name} ...", flush=True)
            try:
                step(run)
            except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others
                run.errors[name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                run.rows.append(Row(f"{name}: ERROR", str(exc)[:60], "", None, "", False))
            print(
                f"[{time.monotonic() - started:6.1f}s] {name} done in {time.monotonic() - t0:.1f}s",
                flush=True,
            )
    finally:
        elapsed = time.monotonic() - started
        report = {
            "command": command,
            "git": git,
            "quick": args.quick,
            "redis_config": "defaults" if args.redis_defaults else connections.RECOMMENDED_CONFIG,
            "machine": info,
            "note": "2 cores shared by load generator, sandbox, redis-server and the service; nothing pinned",
            "elapsed_s": round(elapsed, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sizes": sizes.__dict__,
            "figures": [r.as_json() for r in run.rows],
            "details": run.details,
            "errors": run.errors,
            "other_processes_cores": run.others,
            "work_dir": str(work) if args.keep_logs else None,
        }
        written = history.write(report, RESULTS, full=not args.quick and not args.only)
        if args.output:
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str))
            written.append(out)
        print()
        print(table(run.rows))
        print()
        print(
            f"machine: {info['cpu_model']}, {info['cores']} cores, Python {info['python']}, "
            f"redis-server {info['redis_server']} (nothing pinned: load generator, sandbox, redis and "
            "service share the cores)"
        )
        if run.others:
            print(
                "other processes' CPU during each step (cores of "
                f"{info['cores']}; not the benchmark's): "
                + ", ".join(f"{k} {v:.2f}" for k, v in run.others.items())
            )
        print(f"command: {command}   elapsed: {elapsed:.0f}s")
        print(
            f"commit: {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}   results: {', '.join(map(str, written))}"
        )
        if not args.keep_logs:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok is not False for r in run.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

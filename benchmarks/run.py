"""``python -m benchmarks.run [--quick]``: the service against its ceilings, in one bounded run.

Each figure is measured in the same run as its ceiling, on 127.0.0.1, with the project's sandbox
(``python -m worker sandbox --latency-ms 50``) as the Graph API. Every measurement starts its own
fresh redis-server (free port, AOF everysec as the embedded default) and its own processes, and
stops them in a ``finally``.

1. Intake: requests/s and p50/p99 of ~300-byte Send API POSTs (Bearer + Idempotency-Key), 64
   connections, one intake process, against a bare Starlette app on the same uvicorn stack that
   parses the body and LPUSHes it (``benchmarks/ceiling.py``). Bar: >= 0.8x. Ceiling and intake
   alternate (ABBAAB, 3 rounds each; ``--quick`` 2); each side's best round counts. The load
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
   Three rounds (``--quick``: one), each on fresh processes; each side's best rate counts.
3. Cost: CPU seconds (``/proc/<pid>/stat`` utime+stime, children included) of intake + redis while
   the backlog is posted, plus worker + redis while it drains, per 1,000 delivered, against the
   raw client's own CPU per 1,000 requests. Bar: <= 5x. Each side's cheapest round of (2) counts.
4. Latency: an open-loop paced sender at 50% of the rate of (2) posts to the intake with one
   worker running; accept = the client receiving the 202. Reported: accept -> Graph request
   arrival (the sandbox's ``at``), accept -> Graph answer (``at`` + the 50 ms latency), and the
   record's ``created_at`` -> arrival. Bar: p50 of accept -> Graph answer <= 50 + 20 ms. The
   worker runs with its own default ``--concurrency`` (as in 5).
5. Pacing: 4 workers, one page, PAGE_RATE_LIMIT=250: the most sends in any trailing 1 s window
   (<= 1.05 x 250) and the mean rate over the backlog (>= 0.95 x 250), from arrival times;
   fairness: page B's 5 msg/s trickle accept -> arrival p50 with A backlogged vs A idle (<= 2x).
   A's backlog is posted through the intake while the workers are SIGSTOPped, so it is a backlog
   when they resume. The same figures from the workers' side (a ``delivery.attempt`` line's
   timestamp minus its latency) are in the JSON, to tell pacing apart from arrival jitter.
6. Baseline: one Celery task per message, sync ``httpx.Client``, threads pool of 32
   (``benchmarks/baseline.py``, Celery's defaults otherwise), publishing N tasks with
   ``send_task`` and draining them from the same kind of sandbox. No bar: it shows the gain.
7. Console: each operator-console page's p95 with 100,000 open deliveries against the same page
   at 1,000 (``benchmarks/console.py``). Bar: every p95 under 100 ms.

Nothing is pinned: the load generator, the sandbox, redis-server and the service share the cores.
Each step reports the CPU other processes of the machine used meanwhile ("others"); a run where
that is not ~0 is disturbed and its figures are not comparable.

Writes ``benchmarks/results/latest.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (
    PAGE_B,
    PAGE_B_TOKEN,
    ROOT,
    CpuMeter,
    Helper,
    clean_env,
    graph_url,
    intake_path,
    machine,
    max_in_window,
    percentile,
    run_module,
    sandbox_calls,
    sandbox_sent,
    start_module,
    wait_log,
    window_rate,
)
from tests.conftest import (
    INTAKE_TOKEN,
    PAGE,
    PAGE_TOKEN,
    Proc,
    RedisServer,
    Sandbox,
    Stack,
    base_env,
    free_port,
    start_process,
    wait_port,
    wait_until,
)

RESULTS = ROOT / "benchmarks" / "results"
DELIVERY_CONCURRENCY = 8  # measurement 2 is specified for ``--concurrency 8``


def default_concurrency() -> int:
    """The worker's own default ``--concurrency`` (used where the benchmark does not pin it)."""
    from worker.cli import build_parser

    return int(build_parser().parse_args(["worker"]).concurrency)


GRAPH_LATENCY_MS = 50.0
INFLIGHT = 100  # WORKER_MAX_INFLIGHT's default
PAGE_RATE = 250.0


@dataclass(frozen=True)
class Sizes:
    intake_warmup: float
    intake_duration: float
    delivery_n: int
    drain_timeout: float
    latency_duration: float
    pacing_n: int
    trickle_idle: float
    trickle_busy: float
    baseline_n: int
    intake_rounds: int
    delivery_rounds: int


FULL = Sizes(2.0, 10.0, 10_000, 120.0, 10.0, 10_000, 6.0, 12.0, 6_000, 3, 3)
QUICK = Sizes(1.0, 3.0, 3_000, 45.0, 4.0, 2_500, 4.0, 5.0, 2_000, 2, 1)


@dataclass
class Row:
    figure: str
    measured: float | str
    ceiling: float | str
    ratio: float | None
    bar: str
    ok: bool | None  # None: informational, no bar
    unit: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "measured": _num(self.measured),
            "ceiling": _num(self.ceiling),
            "ratio": _num(self.ratio),
            "unit": self.unit,
            "bar": self.bar,
            "pass": self.ok,
        }


def _num(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


@dataclass
class Run:
    sizes: Sizes
    work: Path
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: cores used by other processes on the machine during each step (the worst of its meters)
    others: dict[str, float] = field(default_factory=dict)

    def note_others(self, step: str, meter: CpuMeter) -> None:
        self.others[step] = max(self.others.get(step, 0.0), meter.others)

    def log_dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


# --- process plumbing ------------------------------------------------------------------------------


class Cleanup:
    """Stops what a measurement started, in reverse order, whatever happened."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def close(self) -> None:
        while self._steps:
            step = self._steps.pop()
            started = time.monotonic()
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"  cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)
            if time.monotonic() - started > 5:
                print(f"  cleanup: {step} took {time.monotonic() - started:.0f}s", file=sys.stderr)


@contextlib.contextmanager
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    try:
        yield c
    finally:
        c.close()


def start_redis(c: Cleanup, work: Path, name: str) -> RedisServer:
    server = RedisServer(free_port(), work / f"redis-{name}")
    c.add(server.stop)
    server.start()
    return server


def start_sandbox(c: Cleanup, log_dir: Path, latency_ms: float = GRAPH_LATENCY_MS) -> Sandbox:
    port = free_port()
    proc = start_process(
        "sandbox", ["sandbox", "--port", str(port), "--latency-ms", str(latency_ms)], clean_env(), log_dir
    )
    c.add(lambda: proc.stop(timeout=10))
    if not wait_port(port):
        raise RuntimeError(f"sandbox did not start:\n{proc.tail()}")
    return Sandbox(port, proc)


def service_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    """The test-suite's environment with production timings (no 3 s sweeps during a backlog)."""
    env = base_env(
        redis_url,
        sandbox_url,
        PAGE_ACCESS_TOKENS=json.dumps({PAGE: PAGE_TOKEN, PAGE_B: PAGE_B_TOKEN}),
        MAX_ATTEMPTS="8",
        RETRY_BASE_SECONDS="2",
        RETRY_CAP_SECONDS="600",
        SWEEP_AFTER_SECONDS="600",
        DELIVERY_LEASE_SECONDS="60",
        GRAPH_DEADLINE_SECONDS="25",
        SCHEDULER_INTERVAL_SECONDS="0.1",
        GRAPH_READ_TIMEOUT="20",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        METRICS_PORT="0",
    )
    env.update(extra)
    return env


def stack_for(c: Cleanup, redis_server: RedisServer, sandbox: Sandbox, log_dir: Path, **extra: str) -> Stack:
    stack = Stack(service_env(redis_server.url, sandbox.url, **extra), sandbox, redis_server.url, log_dir)

    def stop() -> None:  # SIGTERM every process at once, then wait for each (SIGKILL after 30 s)
        for proc in stack.procs:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGTERM)
        for proc in reversed(stack.procs):
            started = time.monotonic()
            code = proc.stop()
            if time.monotonic() - started > 5:
                print(
                    f"  cleanup: {proc.name} took {time.monotonic() - started:.0f}s to stop (exit {code}); "
                    f"log {proc.log}:\n{proc.tail(8)}",
                    file=sys.stderr,
                )

    c.add(stop)
    return stack


def open_count(stack: Stack) -> int:
    return int(stack.redis().zcard(f"{stack.prefix}:pending"))


def wait_drained(stack: Stack, timeout: float) -> bool:
    """Every delivery final (nothing left in the pending index), polled every 50 ms."""
    client = stack.redis()
    key = f"{stack.prefix}:pending"
    return wait_until(lambda: int(client.zcard(key)) == 0, timeout, 0.05)


def pid_of(proc: Proc | Helper | RedisServer) -> int:
    popen = proc.proc
    if popen is None:
        raise RuntimeError("process not started")
    return int(popen.pid)


def loadgen(mode: str, args: list[str], timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = run_module("benchmarks.loadgen", [mode, *args], timeout)
    return result


def per_second(times: list[float]) -> list[int]:
    """Arrivals in each whole second from the first one (for reading a rate's shape)."""
    if not times:
        return []
    counts = [0] * (int(times[-1] - times[0]) + 1)
    for t in times:
        counts[int(t - times[0])] += 1
    return counts


def sent_times(calls: list[dict[str, Any]], page: str | None = None) -> list[float]:
    return sorted(
        float(c["at"]) for c in calls if c["status"] == 200 and (page is None or c["page_id"] == page)
    )


# --- 1. intake ------------------------------------------------------------------------------------


WRK_SCRIPT = ROOT / "benchmarks" / "wrk_post.lua"


def wrk_closed(url: str, warmup: float, duration: float, meter: CpuMeter) -> dict[str, Any]:
    """The closed loop with wrk (one thread, 64 connections): a warm-up run, then the measured one,
    metered. wrk takes under a fifth of a core here (``loadgen_cpu_s``); the Python load generator
    took most of one of the two cores the server under test needs."""
    env = dict(os.environ, INTAKE_TOKEN=INTAKE_TOKEN)
    base = ["wrk", "-t1", "-c64", "--timeout", "30s", "-s", str(WRK_SCRIPT)]
    subprocess.run(
        [*base, f"-d{max(1, round(warmup))}s", url],
        check=False,
        env={**env, "RUN": f"warmup-{time.time_ns()}"},
        capture_output=True,
        timeout=warmup + 60,
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.start()
    done = subprocess.run(
        [*base, f"-d{max(1, round(duration))}s", url],
        check=False,
        env={**env, "RUN": f"measured-{time.time_ns()}"},
        capture_output=True,
        timeout=duration + 60,
    )
    cpu = meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    summary = orjson.loads(lines[-1])
    seconds = summary["duration_us"] / 1e6
    statuses = {str(k): int(v) for k, v in summary["statuses"].items()}
    requests = int(summary["requests"])
    return {
        "loadgen": "wrk",
        "requests": requests,
        "requests_total": requests,
        "rps": requests / seconds,
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "statuses": statuses,
        "errors": requests - statuses.get("202", 0) + int(summary["socket_errors"]),
        "cpu": cpu,
        "loadgen_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "duration_s": seconds,
    }


def _closed_round(run: Run, which: str) -> dict[str, Any]:
    """One closed-loop load on a fresh redis-server and a fresh app: the ceiling or the intake.
    wrk drives it when installed; otherwise the Python load generator (``loadgen`` in the JSON)."""
    s = run.sizes
    log_dir = run.log_dir("intake")
    with cleanup() as c:
        redis_server = start_redis(c, run.work, f"{which}-{time.monotonic_ns()}")
        port = free_port()
        app: Proc | Helper
        if which == "ceiling":  # bare Starlette + one LPUSH
            app = start_module(
                "ceiling",
                "benchmarks.ceiling",
                ["--port", str(port), "--redis-url", redis_server.url],
                clean_env(),
                log_dir,
            )
        else:
            env = service_env(redis_server.url, "http://127.0.0.1:9")
            app = start_process("intake", ["intake", "--port", str(port)], env, log_dir)
        c.add(app.stop)
        if not wait_port(port):
            raise RuntimeError(f"{which} did not start:\n{app.tail()}")
        if shutil.which("wrk"):
            url = f"http://127.0.0.1:{port}{intake_path()}"
            meter = CpuMeter({"app": pid_of(app), "redis": pid_of(redis_server)})
            result = wrk_closed(url, s.intake_warmup, s.intake_duration, meter)
        else:
            meter = CpuMeter({"app": pid_of(app), "redis": pid_of(redis_server)}).start()
            result = loadgen(
                "closed",
                [
                    "--url",
                    f"http://127.0.0.1:{port}",
                    "--concurrency",
                    "64",
                    "--warmup",
                    str(s.intake_warmup),
                    "--duration",
                    str(s.intake_duration),
                ],
                s.intake_warmup + s.intake_duration + 60,
            )
            result["loadgen"] = "python (aiohttp): wrk not installed"
            result["cpu"] = meter.stop()
        result["cores"] = meter.cores()
        run.note_others("intake", meter)
        total = result["requests_total"]
        result["app_cpu_ms_per_request"] = result["cpu"]["app"] / total * 1000 if total else math.nan
    return result


def measure_intake(run: Run) -> None:
    """Ceiling and intake alternate (ABBAAB...); each side's best round is reported."""
    pattern = itertools.cycle(["ceiling", "intake", "intake", "ceiling"])
    order = list(itertools.islice(pattern, 2 * run.sizes.intake_rounds))
    rounds: dict[str, list[dict[str, Any]]] = {"ceiling": [], "intake": []}
    for which in order:
        rounds[which].append(_closed_round(run, which))
    ceiling = max(rounds["ceiling"], key=lambda r: float(r["rps"]))
    measured = max(rounds["intake"], key=lambda r: float(r["rps"]))
    run.details["intake_rounds"] = rounds
    run.details["intake"] = {
        "intake": measured,
        "ceiling": ceiling,
        "connections": 64,
        "best_of": len(order) // 2,
    }
    ratio = measured["rps"] / ceiling["rps"]
    run.rows.append(
        Row(
            "1. intake requests/s (64 conns)",
            measured["rps"],
            ceiling["rps"],
            ratio,
            ">= 0.8x ceiling",
            ratio >= 0.8 and measured["errors"] == 0,
            "req/s",
        )
    )
    run.rows.append(
        Row(
            "   app CPU per request",
            measured["app_cpu_ms_per_request"],
            ceiling["app_cpu_ms_per_request"],
            measured["app_cpu_ms_per_request"] / ceiling["app_cpu_ms_per_request"],
            "info",
            None,
            "cpu-ms",
        )
    )
    run.rows.append(
        Row(
            "   intake p50 latency",
            measured["p50_ms"],
            ceiling["p50_ms"],
            measured["p50_ms"] / ceiling["p50_ms"],
            "info",
            None,
            "ms",
        )
    )
    run.rows.append(
        Row(
            "   intake p99 latency",
            measured["p99_ms"],
            ceiling["p99_ms"],
            measured["p99_ms"] / ceiling["p99_ms"],
            "info",
            None,
            "ms",
        )
    )


# --- 2 + 3. delivery and cost ---------------------------------------------------------------------


def post_backlog(stack: Stack, n: int, tag: int, page: str = PAGE) -> dict[str, Any]:
    res = loadgen(
        "count",
        ["--url", stack.intake_url, "--page", page, "--n", str(n), "--tag", str(tag), "--concurrency", "64"],
        timeout=n / 200 + 60,
    )
    if res["ok"] != n:
        raise RuntimeError(f"backlog: only {res['ok']} of {n} accepted: {res['statuses']}")
    return res


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


def measure_delivery(run: Run) -> None:
    """``delivery_rounds`` rounds (fresh Redis, sandbox and processes each). The rate is each
    side's best round and the cost each side's cheapest, as the intake takes each side's best: on
    a shared machine the least disturbed round is the closest to what the code costs."""
    rounds = [_delivery_round(run) for _ in range(run.sizes.delivery_rounds)]
    fast = max(rounds, key=lambda r: float(r["rate"]))
    raw_fast = max(rounds, key=lambda r: float(r["raw_rate"]))
    cheap = min(rounds, key=lambda r: float(r["cost"]["per_1000_s"]))
    raw_cheap = min(rounds, key=lambda r: float(r["cost"]["raw_per_1000_s"]))
    complete = all(r["delivered"] == r["n"] for r in rounds)
    run.details["delivery"] = {**fast, "best_of": len(rounds), "rounds": rounds}
    rate, raw_rate = float(fast["rate"]), float(raw_fast["raw_rate"])
    per_1000, raw_per_1000 = float(cheap["cost"]["per_1000_s"]), float(raw_cheap["cost"]["raw_per_1000_s"])
    run.details["cost"] = {"service": cheap["cost"], "raw_per_1000_s": raw_per_1000}
    drain_cores = fast["drain_cores"]
    raw_sandbox = raw_fast["raw_sandbox_cores"]
    ratio = rate / raw_rate
    run.rows.append(
        Row(
            "2. delivery msg/s (1 worker, c=8)",
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
            "3. CPU s per 1,000 delivered",
            per_1000,
            raw_per_1000,
            cost_ratio,
            "<= 5x raw client",
            cost_ratio <= 5 and complete,
            "cpu-s",
        )
    )


# --- 4. accept-to-send latency --------------------------------------------------------------------


def measure_latency(run: Run) -> None:
    s = run.sizes
    sustainable = run.details.get("delivery", {}).get("rate_window", {}).get("rate")
    if not isinstance(sustainable, float) or math.isnan(sustainable):
        raise RuntimeError("no sustainable rate from measurement 2")
    rate = round(sustainable * 0.5, 1)
    log_dir = run.log_dir("latency")
    with cleanup() as c:
        redis_server = start_redis(c, run.work, "latency")
        sandbox = start_sandbox(c, log_dir)
        stack = stack_for(c, redis_server, sandbox, log_dir, PAGE_RATE_LIMIT="1000000")
        intake = stack.start_intake()
        concurrency = default_concurrency()
        worker = stack.start_worker(concurrency=concurrency)
        common = ["--url", stack.intake_url, "--rate", str(rate), "--concurrency", "256"]
        # warm-up: one second at the same rate (connections, code paths), not measured
        warm = str(run.work / "latency-warmup.json")
        loadgen("paced", [*common, "--n", str(int(rate)), "--tag", "40", "--records", warm], 60)
        wait_drained(stack, 30)
        records_path = run.work / "latency.json"
        n = int(rate * s.latency_duration)
        meter = CpuMeter(
            {
                "intake": pid_of(intake),
                "worker": pid_of(worker),
                "redis": pid_of(redis_server),
                "sandbox": pid_of(sandbox.proc),
            }
        ).start()
        sender = loadgen(
            "paced",
            [*common, "--n", str(n), "--tag", "41", "--records", str(records_path)],
            s.latency_duration + 60,
        )
        drained = wait_drained(stack, 60)
        meter.stop()
        run.note_others("latency", meter)
        calls = {c["psid"]: float(c["at"]) for c in sandbox_calls(sandbox.url) if c["status"] == 200}
        records = orjson.loads(records_path.read_bytes())
        client = stack.redis()
        pipe = client.pipeline(transaction=False)
        accepted = [r for r in records if r[3] == 202]
        for r in accepted:
            pipe.hget(stack.keys.delivery(r[4]), "created_at")
        created = pipe.execute()
        worker_logged = [
            float(line["accept_to_send_ms"])
            for line in stack.logs()
            if line.get("event") == "delivery.sent" and line.get("accept_to_send_ms") is not None
        ]
    to_arrival = [(calls[r[0]] - r[2]) * 1000 for r in accepted if r[0] in calls]
    from_created = [
        (calls[r[0]] - float(cr)) * 1000
        for r, cr in zip(accepted, created, strict=True)
        if r[0] in calls and cr
    ]
    to_answer = [v + GRAPH_LATENCY_MS for v in to_arrival]
    post_latency = [(r[2] - r[1]) * 1000 for r in accepted]
    summary: dict[str, Any] = {
        "worker_concurrency": concurrency,
        "target_rate": rate,
        "sustainable_rate": sustainable,
        "sender": sender,
        "drained": drained,
        "sent": len(to_arrival),
        "accepted": len(accepted),
        "accept_to_arrival_ms": {"p50": percentile(to_arrival, 50), "p99": percentile(to_arrival, 99)},
        "accept_to_answer_ms": {"p50": percentile(to_answer, 50), "p99": percentile(to_answer, 99)},
        "created_at_to_arrival_ms": {
            "p50": percentile(from_created, 50),
            "p99": percentile(from_created, 99),
        },
        "worker_logged_accept_to_send_ms": {
            "p50": percentile(worker_logged, 50),
            "p99": percentile(worker_logged, 99),
            "n": len(worker_logged),
        },
        "intake_post_ms": {"p50": percentile(post_latency, 50), "p99": percentile(post_latency, 99)},
        "cores": meter.cores(),
    }
    run.details["latency"] = summary
    bar = GRAPH_LATENCY_MS + 20
    p50 = summary["accept_to_answer_ms"]["p50"]
    ok = p50 <= bar and len(to_arrival) == n
    run.rows.append(
        Row(
            f"4. accept->Graph answer p50 @{rate:.0f}/s",
            p50,
            bar,
            p50 / bar,
            "<= Graph 50 ms + 20 ms",
            ok,
            "ms",
        )
    )
    run.rows.append(
        Row(
            "   accept->Graph answer p99", summary["accept_to_answer_ms"]["p99"], "", None, "info", None, "ms"
        )
    )
    run.rows.append(
        Row(
            "   accept->Graph arrival p50 / p99",
            summary["accept_to_arrival_ms"]["p50"],
            summary["accept_to_arrival_ms"]["p99"],
            None,
            "info (excl. the 50 ms)",
            None,
            "ms",
        )
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
        a_times = sent_times(sandbox_calls(sandbox.url, page_id=PAGE))
        a_started = worker_send_times(stack, PAGE)
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


# --- table ----------------------------------------------------------------------------------------


def fmt(value: float | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = ["figure", "measured", "ceiling", "ratio", "unit", "bar", "result"]
    body = [
        [
            r.figure,
            fmt(r.measured),
            fmt(r.ceiling),
            fmt(r.ratio) + ("x" if r.ratio is not None and not math.isnan(r.ratio) else ""),
            r.unit,
            r.bar,
            {True: "PASS", False: "FAIL", None: ""}[r.ok],
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def measure_console(run: Run) -> None:
    from benchmarks import console

    with cleanup() as c:
        redis_server = start_redis(c, run.work, "console")
        sandbox = start_sandbox(c, run.log_dir("console"))
        stack = stack_for(c, redis_server, sandbox, run.log_dir("console"))
        stack.start_intake()
        console.accept(stack.env, console.SMALL + console.DEAD, "a")
        dead_id = console.make_dead(stack.redis(), stack.keys, console.DEAD)
        paths, cookie = console.console_paths(dead_id), console.cookie_for()
        small = console.time_pages(stack.intake_url, cookie, paths)
        console.accept(stack.env, console.LARGE - console.SMALL, "b")
        large = console.time_pages(stack.intake_url, cookie, paths)
        assert open_count(stack) >= console.LARGE, open_count(stack)
    run.details["console"] = {
        "open_small": console.SMALL,
        "open_large": console.LARGE,
        "small": small,
        "large": large,
    }
    for path in paths:
        big, base = large[path]["p95_ms"], small[path]["p95_ms"]
        run.rows.append(
            Row(
                f"7. Console {path} p95 at 100,000 open (at 1,000)",
                big,
                base,
                big / base,
                "< 100 ms",
                big < console.BAR_MS,
                "ms",
            )
        )


STEPS: dict[str, Callable[[Run], None]] = {
    "intake": measure_intake,
    "delivery": measure_delivery,
    "latency": measure_latency,
    "pacing": measure_pacing,
    "baseline": measure_baseline,
    "console": measure_console,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes: under 3 minutes")
    p.add_argument("--only", choices=list(STEPS), action="append", help="run only these steps")
    p.add_argument("--output", default=str(RESULTS / "latest.json"))
    p.add_argument("--keep-logs", action="store_true", help="keep the work dir (process logs)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    command = "python -m benchmarks.run" + (
        " " + shlex.join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    info = machine()
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
            "quick": args.quick,
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
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str))
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
        print(f"command: {command}   elapsed: {elapsed:.0f}s   results: {out}")
        if not args.keep_logs:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r.ok is not False for r in run.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

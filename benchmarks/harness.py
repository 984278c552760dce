"""What every benchmark step shares: sizes, result rows, the run, and process plumbing (fresh
redis-servers, the sandbox, service stacks), each stopped by a :class:`Cleanup` whatever happens."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PAGE_B,
    PAGE_B_TOKEN,
    ROOT,
    CpuMeter,
    Helper,
    clean_env,
    run_module,
)
from tests.conftest import (
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
from worker.store import connections

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
    #: 8. Redis cost: deliveries per round, rounds, deliveries of the attribution round (SLOWLOG)
    redis_n: int = 10_000
    redis_rounds: int = 3
    attribution_n: int = 2_000
    #: 9. status and /metrics: the small and the large number of open deliveries
    scale_small: int = 1_000
    scale_large: int = 1_000_000
    #: 10. many pages: pages, messages per page
    pages: int = 1_000
    pages_per_page: int = 10


FULL = Sizes(2.0, 10.0, 10_000, 120.0, 10.0, 10_000, 6.0, 12.0, 6_000, 3, 3)
QUICK = Sizes(
    1.0,
    3.0,
    3_000,
    45.0,
    4.0,
    2_500,
    4.0,
    5.0,
    2_000,
    2,
    1,
    redis_n=3_000,
    redis_rounds=1,
    attribution_n=1_000,
    scale_large=100_000,
    pages=200,
    pages_per_page=10,
)


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


#: redis-server's arguments: the README's RECOMMENDED_CONFIG (``run.py --redis-defaults``: none).
REDIS_ARGS: list[str] = connections.server_args()


def start_redis(c: Cleanup, work: Path, name: str) -> RedisServer:
    """A fresh redis-server with REDIS_ARGS."""
    server = RedisServer(free_port(), work / f"redis-{name}", extra_args=list(REDIS_ARGS))
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
    """Open deliveries as the status counts them: the per-second counts' sum and the parked ones
    (``pending`` has an entry per batch, not per delivery)."""
    client = stack.redis()
    return int(client.get(stack.keys.open_total) or 0) + int(client.zcard(stack.keys.parked))


def wait_drained(stack: Stack, timeout: float) -> bool:
    """Every delivery final and every claim done with (nothing left in the pending index: no
    delivery, batch or claim entry), polled every 50 ms."""
    client = stack.redis()
    return wait_until(lambda: int(client.zcard(stack.keys.pending)) == 0, timeout, 0.05)


def pid_of(proc: Proc | Helper | RedisServer) -> int:
    popen = proc.proc
    if popen is None:
        raise RuntimeError("process not started")
    return int(popen.pid)


def loadgen(mode: str, args: list[str], timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = run_module("benchmarks.loadgen", [mode, *args], timeout)
    return result


def post_backlog(
    stack: Stack, n: int, tag: int, page: str = PAGE, pages: int = 1, *, spread: int = 0, keys: bool = True
) -> dict[str, Any]:
    """``n`` messages through the intake, 64 in flight; over ``pages`` pages from ``page`` on;
    texts up to ``spread`` characters shorter or longer than the 270-byte body's; each with an
    Idempotency-Key unless ``keys`` is False."""
    res = loadgen(
        "count",
        [
            *("--url", stack.intake_url, "--page", page, "--n", str(n), "--tag", str(tag)),
            *("--concurrency", "64", "--pages", str(pages), "--spread", str(spread)),
            *(() if keys else ("--no-key",)),
        ],
        timeout=n / 200 + 60,
    )
    if res["ok"] != n:
        raise RuntimeError(f"backlog: only {res['ok']} of {n} accepted: {res['statuses']}")
    return res


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

"""1. Intake: the closed loop against the intake and its ceiling (see ``benchmarks/run.py``)."""

from __future__ import annotations

import itertools
import math
import os
import resource
import shutil
import subprocess
import time
from typing import Any

import orjson

from benchmarks.common import (
    ROOT,
    CpuMeter,
    Helper,
    clean_env,
    intake_path,
    median_round,
    spread,
    start_module,
)
from benchmarks.harness import (
    Row,
    Run,
    cleanup,
    loadgen,
    pid_of,
    service_env,
    start_redis,
)
from tests.conftest import (
    INTAKE_TOKEN,
    Proc,
    free_port,
    start_process,
    wait_port,
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
    """Ceiling and intake alternate (ABBAAB...); each side's median round counts (the range is
    shown beside it)."""
    pattern = itertools.cycle(["ceiling", "intake", "intake", "ceiling"])
    order = list(itertools.islice(pattern, 2 * run.sizes.intake_rounds))
    rounds: dict[str, list[dict[str, Any]]] = {"ceiling": [], "intake": []}
    for which in order:
        rounds[which].append(_closed_round(run, which))
    ceiling = median_round(rounds["ceiling"], "rps")
    measured = median_round(rounds["intake"], "rps")
    rps = spread([float(r["rps"]) for r in rounds["intake"]])
    ceiling_rps = spread([float(r["rps"]) for r in rounds["ceiling"]])
    run.details["intake_rounds"] = rounds
    run.details["intake"] = {
        "intake": measured,
        "ceiling": ceiling,
        "rps": rps,
        "ceiling_rps": ceiling_rps,
        "connections": 64,
        "rounds": len(order) // 2,
    }
    ratio = rps["median"] / ceiling_rps["median"]
    # without wrk the Python load generator takes most of a core the apps need: say so
    driver = (
        "" if all(r.get("loadgen") == "wrk" for r in rounds["intake"]) else "; Python load generator, no wrk"
    )
    run.rows.append(
        Row(
            f"1. intake requests/s (64 conns; {rps['min']:,.0f}-{rps['max']:,.0f} / "
            f"{ceiling_rps['min']:,.0f}-{ceiling_rps['max']:,.0f}{driver})",
            rps["median"],
            ceiling_rps["median"],
            ratio,
            ">= 0.8x ceiling",
            ratio >= 0.8 and all(r["errors"] == 0 for r in rounds["intake"]),
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

"""4. Accept -> Graph latency at a share of the sustainable rate (see ``benchmarks/run.py``)."""

from __future__ import annotations

import math
from typing import Any

import orjson

from benchmarks.common import (
    CpuMeter,
    percentile,
    sandbox_calls,
)
from benchmarks.harness import (
    GRAPH_LATENCY_MS,
    Row,
    Run,
    cleanup,
    default_concurrency,
    loadgen,
    pid_of,
    stack_for,
    start_redis,
    start_sandbox,
    wait_drained,
)
from tests.conftest import Stack

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
        cpu50 = meter.stop()
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
        pids = {"intake": pid_of(intake), "worker": pid_of(worker), "redis": pid_of(redis_server)}
        live = {
            "50%": _cost(cpu50, sum(1 for r in accepted if r[0] in calls), rate),
            "100%": _live_round(run, stack, pids, sandbox.url, round(sustainable, 1)),
        }
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
        "live_cost": live,
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
    raw = run.details.get("cost", {}).get("raw_per_1000_s", math.nan)
    for share, cost in live.items():
        per_1000 = cost["per_1000_s"]
        run.rows.append(
            Row(
                f"3. CPU s per 1,000, live traffic at {share} of (2) = {cost['rate']:.0f}/s "
                f"(intake {cost['intake']:.2f} + redis {cost['redis']:.2f} + worker {cost['worker']:.2f})",
                per_1000,
                raw,
                per_1000 / raw,
                "info (<= 5x at the backlog)",
                None,
                "cpu-s",
            )
        )


def _cost(cpu: dict[str, float], sent: int, rate: float) -> dict[str, float]:
    """CPU seconds per 1,000 sent of intake, redis and worker (and their sum) at ``rate``."""
    per = {k: cpu[k] / sent * 1000 if sent else math.nan for k in ("intake", "redis", "worker")}
    return {**per, "per_1000_s": sum(per.values()), "sent": sent, "rate": rate}


def _live_round(
    run: Run, stack: Stack, pids: dict[str, int], sandbox_url: str, rate: float
) -> dict[str, float]:
    """Traffic at ``rate`` for half of ``latency_duration`` while the worker runs, metered from the
    first POST until every delivery is final."""
    n = int(rate * run.sizes.latency_duration / 2)
    meter = CpuMeter(dict(pids)).start()
    loadgen(
        "paced",
        [
            *("--url", stack.intake_url, "--rate", str(rate), "--concurrency", "256"),
            *("--n", str(n), "--tag", "42", "--records", str(run.work / "live-100.json")),
        ],
        run.sizes.latency_duration + 60,
    )
    drained = wait_drained(stack, 60)
    cpu = meter.stop()
    run.note_others("latency", meter)
    sent = sum(
        1 for c in sandbox_calls(sandbox_url) if c["status"] == 200 and str(c["psid"]).startswith("42")
    )
    return {**_cost(cpu, sent, rate), "drained": float(drained), "wall_s": meter.wall}

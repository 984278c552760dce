"""8. Redis's cost per delivery: redis-server CPU per delivered message and memory per open and
per finished delivery, each against its floor measured in the same round (``benchmarks/rediscost.py``).

A round: a fresh redis-server, the sandbox (50 ms), an intake; N Send API POSTs through the intake
(64 connections, the intake's own group commit), then one worker (``--concurrency 8``) drains
them, started with the queue parked as in (2). Redis's CPU is read from redis-server
(``INFO cpu``: all threads; the AOF's fsync thread included) from before the first POST to the
last outcome; memory from ``used_memory`` before the POSTs, after them (open) and after the drain
(finished, kept for RECORD_RETENTION), with ``MEMORY USAGE`` of sampled keys for the breakdown.
The buckets' expiries come from the seal pass once their window is over (worker/store/seals.py):
it is run on the round's windows at once (a clock one window ahead) before each memory reading,
the idempotency buckets' after the POSTs, the outcomes' and unread entries' after the drain, so
both figures include the expiry each bucket gets; its CPU is reported per bucket name and per
day at the default windows, not in the per-message figure (it is paid per window).
The worker's idle Redis CPU (scheduler ticks, heartbeats, Celery's polls) is measured for 2 s after
the drain and reported beside: it is paid per second, not per message.

Then the floor on a second fresh redis-server (``rediscost.floor``). With valgrind installed,
also ``python -m benchmarks.instructions`` (instructions per delivery by script, counted by
callgrind, and the floor's commands counted alike: an info row that does not move with the
machine). Rounds: ``redis_rounds``
(median and range). One more round of ``attribution_n`` deliveries runs with ``SLOWLOG`` at 0 µs
to attribute the command time to each script and each command a script runs (SLOWLOG's own cost
is in that round only, whose CPU figure is not used).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks import rediscost
from benchmarks.common import CpuMeter, spread
from benchmarks.harness import (
    DELIVERY_CONCURRENCY,
    Row,
    Run,
    cleanup,
    pid_of,
    post_backlog,
    stack_for,
    start_redis,
    start_sandbox,
    wait_drained,
)
from tests.conftest import Stack
from worker.store import idempotency, outcomes, scripts, seals, unread

#: Goals of issue 18: Redis CPU per delivered message; bytes per open delivery beyond its body;
#: bytes per finished delivery.
CPU_GOAL_US = 30.0
OPEN_OVER_BODY_GOAL = 400.0
FINISHED_GOAL = 250.0
IDLE_SECONDS = 2.0
#: The sustained rate the dense figures are for (messages/s), and a day: the default
#: IDEMPOTENCY_TTL and RECORD_RETENTION (s).
RATE = 1_000
DAY = 86_400
#: The measured backlog's texts are up to this many characters shorter or longer than the
#: 270-byte body's (mean 270): with one size, every body fell in one allocator size class, so a
#: record 10 bytes over a class boundary read 64 bytes more, and 10 bytes under it 64 less.
BODY_SPREAD = 64
#: Bucket names the seal pass visits a day at the default windows: 24 hours of outcomes, a day
#: of unread entries and one of idempotency keys.
SEAL_NAMES_PER_DAY = 24 * 16**outcomes.SUFFIX + 16**unread.SUFFIX + 16**idempotency.SUFFIX


def bucket_means(rate: float) -> dict[str, float]:
    """Entries per bucket on average at ``rate`` messages/s sustained, each to a recipient of its
    own, with the default windows: an hour's outcomes over 16**4 buckets, a day's idempotency keys
    and a day's recipients over 16**5 each."""
    return {
        "outcome": outcomes.SPAN * rate / 16**outcomes.SUFFIX,
        "idempotency": DAY * rate / 16**idempotency.SUFFIX,
        "unread": DAY * rate / 16**unread.SUFFIX,
    }


#: Entries per bucket at RATE sustained, whole (the 40-bucket samples' Poisson means): outcomes
#: (an hour's over 65,536 buckets), idempotency keys and unread recipients (a day's over 16**5).
DENSE_PER_BUCKET, IDEM_PER_BUCKET, UNREAD_PER_BUCKET = (int(m) for m in bucket_means(RATE).values())
#: The sustained rates (messages/s) the memory figures are derived for from a round's bucket
#: curves (at_rate), and the longest bucket a curve measures (a day at 1,000 msg/s puts 82 keys
#: in an idempotency bucket on average; 160 is far past its Poisson tail).
RATES = (10, 100, 1_000)
CURVE_ENTRIES = 160


def _open_samples(client: Any, stack: Stack, n: int) -> dict[str, Any]:
    """What an open delivery is made of: its record, its idempotency key (bucketed), its index entries."""
    sample = f"{stack.prefix}:d:*"
    zsets = {k: int(client.memory_usage(k, samples=0) or 0) for k in (stack.keys.pending,)}
    return {
        "body_bytes_stored": rediscost.body_bytes(client, sample, limit=2_000),
        "record_open": rediscost.memory_samples(client, sample),
        "idempotency_buckets": rediscost.bucket_samples(client, f"{stack.prefix}:i:[0-9]*"),
        "index_zsets_bytes_per_delivery": {k.rpartition(":")[2]: v / n for k, v in zsets.items()},
        "open_ages_bytes": sum(
            int(client.memory_usage(k, samples=0) or 0)
            for k in (stack.keys.open_counts, stack.keys.open_seconds, stack.keys.open_total)
        ),
        # the queued batches' id lists and their Celery messages, per open delivery
        "batch_lists_bytes_per_delivery": sum(
            int(client.memory_usage(k, samples=0) or 0)
            for k in client.scan_iter(match=f"{stack.keys.batch_prefix}*", count=1_000)
        )
        / n,
        "queue_bytes_per_delivery": int(client.memory_usage(stack.queue, samples=0) or 0) / n,
    }


def _message_id_chars(client: Any, pattern: str, limit: int = 200) -> float:
    """The mean length of the Graph message ids the outcomes hold (the sandbox's; Meta's are
    opaque strings whose length it does not document: each character more is a byte more)."""
    lengths: list[int] = []
    for key in client.scan_iter(match=pattern, count=1000):
        for value in client.hvals(key):
            mid = outcomes.unpack(value).get("message_id")
            if mid:
                lengths.append(len(mid))
        if len(lengths) >= limit:
            break
    return round(sum(lengths) / len(lengths), 1) if lengths else 0.0


def _finished_samples(client: Any, stack: Stack) -> dict[str, Any]:
    buckets = f"{stack.prefix}:o:[0-9]*"  # not P:o:meta
    return {
        "record_finished": rediscost.memory_samples(client, f"{stack.prefix}:d:*"),
        "outcome_buckets": rediscost.bucket_samples(client, buckets),
        "outcome_at_1000_per_s": rediscost.dense_buckets(client, buckets, DENSE_PER_BUCKET),
        "message_id_chars": _message_id_chars(client, buckets),
        "idempotency_at_1000_per_s": rediscost.dense_buckets(
            client, f"{stack.prefix}:i:[0-9]*", IDEM_PER_BUCKET
        ),
        "unread_buckets": rediscost.bucket_samples(client, f"{stack.prefix}:u:[0-9]*"),
        "unread_at_1000_per_s": rediscost.dense_buckets(
            client, f"{stack.prefix}:u:[0-9]*", UNREAD_PER_BUCKET
        ),
        # a bucket's bytes at 1..CURVE_ENTRIES of this run's entries: any rate's figure (RATES)
        "curves": {
            "key_overhead": rediscost.key_overhead(client, len(stack.prefix) + 14),  # P:o:{hour}:{4}
            "outcome": rediscost.bucket_curve(client, buckets, CURVE_ENTRIES),
            "idempotency": rediscost.bucket_curve(client, f"{stack.prefix}:i:[0-9]*", CURVE_ENTRIES),
            "unread": rediscost.bucket_curve(client, f"{stack.prefix}:u:[0-9]*", CURVE_ENTRIES),
        },
    }


def at_rate(memory: dict[str, Any], rate: float) -> dict[str, float] | None:
    """Bytes per entry of each bucketed layout at ``rate`` sustained (Poisson bucket sizes, from
    the round's curves and a key's cost beyond them: ``rediscost.per_entry_at``), and what a
    finished delivery keeps then (:func:`finished_bytes`; no read receipts: a read removes the
    unread entry sooner). None without curves (a round before they were measured)."""
    curves = memory.get("curves") or {}
    key = float(curves.get("key_overhead", 0.0))
    parts = {
        name: rediscost.per_entry_at(curves.get(name, []), mean, key)
        for name, mean in bucket_means(rate).items()
    }
    if any(v is None for v in parts.values()):
        return None
    out = {name: float(v or 0.0) for name, v in parts.items()}
    out["finished"] = finished_bytes(out["outcome"], out["idempotency"], out["unread"])
    return out


def sustained_finished(memory: dict[str, Any]) -> float | None:
    """Bytes per finished delivery at a sustained 1,000 messages/s, each to a recipient of its own,
    with the default retentions (a day each), derived from this round's own entries written as
    densely as that rate fills their buckets (``*_at_1000_per_s``; a bucket's key and expiry
    entries are spread over its 54-82 entries), kept as :func:`finished_bytes` says. No read
    receipts (a read removes the unread entry sooner). The burst figure above is the other end: 10,000 messages, where most buckets hold one entry and cost a key each."""
    parts = [
        memory.get(k, {}).get("bytes_per_entry")
        for k in ("outcome_at_1000_per_s", "idempotency_at_1000_per_s", "unread_at_1000_per_s")
    ]
    if any(p is None for p in parts):
        return None
    outcome, idem, unread_entry = (float(p) for p in parts)
    return finished_bytes(outcome, idem, unread_entry)


def finished_bytes(outcome: float, idem: float, unread_entry: float) -> float:
    """What a finished delivery keeps, from its parts' bytes per entry, with the default
    retentions: its outcome for a day and half an hour on average (the bucket of its hour expires
    a day after the hour ends), its idempotency key and unread entry for a day and a half (their
    buckets live one window to two)."""
    return outcome * (1 + outcomes.SPAN / 2 / DAY) + 1.5 * idem + 1.5 * unread_entry


def _open_without_keys(run: Run, n: int) -> dict[str, Any]:
    """An open delivery without its Idempotency-Key, on a fresh Redis: with a key's cost in a
    bucket as dense as a day at 1,000 requests/s fills it (measured in the rounds), what an open
    delivery costs once a service has run a while; the rounds' figure is a fresh Redis, where
    each key has a bucket (a Redis key) of its own."""
    with cleanup() as c:
        redis_server = start_redis(c, run.work, f"redis-nokey-{time.monotonic_ns()}")
        sandbox = start_sandbox(c, run.log_dir("redis"))
        stack = stack_for(c, redis_server, sandbox, run.log_dir("redis"))
        client = stack.redis()
        stack.start_intake()
        post_backlog(stack, 50, tag=80, keys=False)
        mem0 = rediscost.used_memory(client)
        post_backlog(stack, n, tag=82, spread=BODY_SPREAD, keys=False)
        mem1 = rediscost.used_memory(client)
        return {
            "n": n,
            "bytes_per_open": (mem1 - mem0) / n,
            "body_bytes_stored": rediscost.body_bytes(client, f"{stack.prefix}:d:*", limit=2_000),
        }


def _seal(client: Any, stack: Stack, names: tuple[str, ...]) -> dict[str, float]:
    """The seal pass over the current window of the layouts named, with a clock one window
    ahead (as it runs once the window is over): bucket names done, Redis CPU per name, and
    ``used_memory`` after it."""
    done, cpu0 = 0, rediscost.redis_cpu(client)
    for layout in seals.layouts(stack.keys, stack.record_retention, DAY):
        if layout.name in names:
            args = seals.args(layout, seals.ahead(layout, time.time()), names=16_384)
            while n := int(scripts.run_sync(client, "seal", keys=[layout.meta], args=args)):
                done += n
    cpu = rediscost.cpu_delta(cpu0, rediscost.redis_cpu(client))["total"]
    used = rediscost.used_memory(client)
    return {"names": done, "cpu_us_per_name": cpu / done * 1e6 if done else 0.0, "used_memory": used}


def _instructions() -> dict[str, Any] | None:
    """``python -m benchmarks.instructions``'s figures for this checkout (instructions redis-server
    executes per delivery, counted by callgrind: the same within 1% on every run), or None
    without valgrind. A process of its own: it runs redis-server under valgrind."""
    if not shutil.which("valgrind"):
        return None
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--n", "2000"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr[-500:]}
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _idle(client: Any) -> dict[str, float]:
    """Redis CPU while the worker has nothing to do (after its last outcome's side writes)."""
    time.sleep(0.3)
    before = rediscost.redis_cpu(client)
    time.sleep(IDLE_SECONDS)
    return rediscost.cpu_delta(before, rediscost.redis_cpu(client))


def _round(run: Run, n: int, attribution: bool) -> dict[str, Any]:
    log_dir = run.log_dir("redis")
    with cleanup() as c:
        redis_server = start_redis(c, run.work, f"redis-{time.monotonic_ns()}")
        sandbox = start_sandbox(c, log_dir)
        stack = stack_for(c, redis_server, sandbox, log_dir, PAGE_RATE_LIMIT="1000000")
        client = stack.redis()
        intake = stack.start_intake()
        post_backlog(stack, 50, tag=80)  # loads the scripts, warms the intake up
        if attribution:
            client.config_set("slowlog-max-len", 500_000)
            client.config_set("slowlog-log-slower-than", 0)
        client.slowlog_reset()
        client.config_resetstat()
        meter = CpuMeter({"redis": pid_of(redis_server)}).start()  # for "others" only
        mem0, cpu0 = rediscost.used_memory(client), rediscost.redis_cpu(client)
        post_backlog(stack, n, tag=81, spread=BODY_SPREAD)
        cpu1 = rediscost.redis_cpu(client)
        accept_stats = rediscost.commandstats(client)
        intake.stop(timeout=15)
        sealed_keys = _seal(client, stack, ("idempotency",))
        opened = _open_samples(client, stack, n)
        client.rename(stack.queue, f"{stack.queue}:bench-hold")
        worker = stack.start_worker(concurrency=DELIVERY_CONCURRENCY)
        time.sleep(0.5)
        client.config_resetstat()
        cpu2 = rediscost.redis_cpu(client)
        started = time.monotonic()
        client.rename(f"{stack.queue}:bench-hold", stack.queue)
        drained = wait_drained(stack, run.sizes.drain_timeout)
        drain_s = time.monotonic() - started
        cpu3 = rediscost.redis_cpu(client)
        drain_stats = rediscost.commandstats(client)
        entries = client.slowlog_get(500_000) if attribution else []
        client.config_set("slowlog-log-slower-than", 10_000)
        idle = _idle(client)
        worker.stop(timeout=20)
        sealed_outcomes = _seal(client, stack, ("outcomes", "unread"))
        finished = _finished_samples(client, stack)
        delivered = n + 50 - int(client.get(stack.keys.open_total) or 0)  # none is parked here

        floor_server = start_redis(c, run.work, f"floor-{time.monotonic_ns()}")
        floor = rediscost.floor(floor_server.client(), n)
        meter.stop()
        run.note_others("redis", meter)

    accept_cpu, drain_cpu = rediscost.cpu_delta(cpu0, cpu1), rediscost.cpu_delta(cpu2, cpu3)
    total = accept_cpu["total"] + drain_cpu["total"]
    idle_per_s = idle["total"] / IDLE_SECONDS
    out: dict[str, Any] = {
        "n": n,
        "drained": drained,
        "delivered": delivered,
        "drain_s": drain_s,
        "cpu_s": {"accept": accept_cpu, "drain": drain_cpu},
        "cpu_us_per_delivery": total / n * 1e6,
        "accept_cpu_us_per_delivery": accept_cpu["total"] / n * 1e6,
        "drain_cpu_us_per_delivery": drain_cpu["total"] / n * 1e6,
        "idle_cpu_us_per_s": idle_per_s * 1e6,
        "idle_share_of_drain_us_per_delivery": idle_per_s * drain_s / n * 1e6,
        "seal": {"idempotency": sealed_keys, "outcomes_and_unread": sealed_outcomes},
        "memory": {
            "bytes_per_open": (sealed_keys["used_memory"] - mem0) / n,
            "bytes_per_finished": (sealed_outcomes["used_memory"] - mem0) / n,
            **opened,
            **finished,
        },
        "commandstats": {
            "accept": rediscost.per_delivery(accept_stats, n),
            "drain": rediscost.per_delivery(drain_stats, n),
        },
        "floor": floor,
    }
    if attribution:
        out["slowlog_entries"] = len(entries)
        out["by_script"] = rediscost.attribute(entries, n)
    return out


def measure_redis(run: Run) -> None:
    s = run.sizes
    rounds = [_round(run, s.redis_n, attribution=False) for _ in range(s.redis_rounds)]
    attributed = _round(run, s.attribution_n, attribution=True)
    complete = all(r["drained"] for r in rounds)
    cpu = spread([r["cpu_us_per_delivery"] for r in rounds])
    floor_cpu = spread([r["floor"]["cpu_us_per_delivery"] for r in rounds])
    opened = spread([r["memory"]["bytes_per_open"] for r in rounds])
    finished = spread([r["memory"]["bytes_per_finished"] for r in rounds])
    floor_open = spread([r["floor"]["bytes_per_open"] for r in rounds])
    floor_finished = spread([r["floor"]["bytes_per_finished"] for r in rounds])
    derived = [v for v in (sustained_finished(r["memory"]) for r in rounds) if v is not None]
    sustained = spread(derived) if derived else None
    without_keys = _open_without_keys(run, s.redis_n)
    dense_key = spread([r["memory"]["idempotency_at_1000_per_s"]["bytes_per_entry"] for r in rounds])
    opened_dense = without_keys["bytes_per_open"] + dense_key["median"]
    by_rate: dict[str, Any] = {}
    for rate in RATES:
        figures = [f for f in (at_rate(r["memory"], rate) for r in rounds) if f is not None]
        if figures:
            by_rate[str(rate)] = {
                "finished": spread([f["finished"] for f in figures]),
                "open": spread([without_keys["bytes_per_open"] + f["idempotency"] for f in figures]),
                "bytes_per_entry": {k: spread([f[k] for f in figures]) for k in bucket_means(rate)},
                "entries_per_bucket": bucket_means(rate),
            }
    body = rounds[-1]["memory"]["body_bytes_stored"]
    mid = rounds[-1]["memory"].get("message_id_chars", 0.0)
    per_name = spread([r["seal"]["outcomes_and_unread"]["cpu_us_per_name"] for r in rounds])
    run.details["redis"] = {
        "seal_pass": {  # paid per window, not per message: what a day of it costs
            "cpu_us_per_name": per_name,
            "names_per_day": SEAL_NAMES_PER_DAY,
            "cpu_s_per_day": per_name["median"] * SEAL_NAMES_PER_DAY / 1e6,
            "cpu_us_per_delivery_at_1000_per_s": per_name["median"] * SEAL_NAMES_PER_DAY / (RATE * DAY),
        },
        "cpu_us_per_delivery": cpu,
        "floor_cpu_us_per_delivery": floor_cpu,
        "accept_cpu_us_per_delivery": spread([r["accept_cpu_us_per_delivery"] for r in rounds]),
        "drain_cpu_us_per_delivery": spread([r["drain_cpu_us_per_delivery"] for r in rounds]),
        "idle_cpu_us_per_s": spread([r["idle_cpu_us_per_s"] for r in rounds]),
        "bytes_per_open": opened,
        "bytes_per_finished": finished,
        "floor_bytes_per_open": floor_open,
        "floor_bytes_per_finished": floor_finished,
        "bytes_per_finished_sustained_1000_per_s": sustained,
        "open_without_idempotency_key": without_keys,
        "sustained": by_rate,
        "bytes_per_open_dense_idempotency": opened_dense,
        "body_bytes_stored": body,
        "message_id_chars": mid,
        "rounds": rounds,
        "attribution": attributed,
        "instructions": _instructions(),
    }
    med = cpu["median"]
    run.rows.append(
        Row(
            f"8. Redis CPU µs per delivered msg (median of {cpu['n']}, {cpu['min']:.0f}-{cpu['max']:.0f})",
            med,
            floor_cpu["median"],
            med / floor_cpu["median"],
            f"<= {CPU_GOAL_US:.0f} µs (goal)",
            med <= CPU_GOAL_US and complete,
            "µs",
        )
    )
    counted = run.details["redis"]["instructions"]
    if counted and "instructions_per_delivery" in counted:
        per = counted["instructions_per_delivery"]
        floor_per = counted.get("floor_instructions_per_delivery", {}).get("total")
        run.rows.append(
            Row(
                f"   Redis instructions per delivery (callgrind; accept {per['accept'] / 1000:.0f}k, "
                f"claim {per['claim'] / 1000:.0f}k, record {per['record'] / 1000:.0f}k; "
                "floor: the same minimal commands)",
                per["total"],
                floor_per if floor_per else "",
                per["total"] / floor_per if floor_per else None,
                "info (does not move with the machine)",
                None,
                "instr",
            )
        )
    run.rows.append(
        Row(
            f"   Redis bytes per open delivery (body {body:.0f} B; {opened['min']:.0f}-{opened['max']:.0f})",
            opened["median"],
            floor_open["median"],
            opened["median"] / floor_open["median"],
            f"<= body + {OPEN_OVER_BODY_GOAL:.0f}",
            opened["median"] <= body + OPEN_OVER_BODY_GOAL,
            "bytes",
        )
    )
    run.rows.append(
        Row(
            f"   the same, key in a dense bucket (without: {without_keys['bytes_per_open']:.0f}; "
            f"+ {dense_key['median']:.0f})",
            opened_dense,
            floor_open["median"],
            opened_dense / floor_open["median"],
            f"<= body + {OPEN_OVER_BODY_GOAL:.0f}",
            opened_dense <= without_keys["body_bytes_stored"] + OPEN_OVER_BODY_GOAL,
            "bytes",
        )
    )
    run.rows.append(
        Row(
            f"   Redis bytes per finished delivery (message id {mid:.0f} chars; "
            f"{finished['min']:.0f}-{finished['max']:.0f})",
            finished["median"],
            floor_finished["median"],
            finished["median"] / floor_finished["median"],
            f"<= {FINISHED_GOAL:.0f}",
            finished["median"] <= FINISHED_GOAL,
            "bytes",
        )
    )
    if sustained:
        run.rows.append(
            Row(
                "   the same at a sustained 1,000 msg/s (derived: sustained_finished)",
                sustained["median"],
                floor_finished["median"],
                sustained["median"] / floor_finished["median"],
                f"<= {FINISHED_GOAL:.0f}",
                sustained["median"] <= FINISHED_GOAL,
                "bytes",
            )
        )
    if all(str(rate) in by_rate for rate in RATES):
        rates = " / ".join(f"{rate:,}" for rate in RATES)
        run.rows.append(
            Row(
                f"   open / finished at a sustained {rates} msg/s (Poisson buckets, from the rounds' curves)",
                " / ".join(f"{by_rate[str(r)]['open']['median']:.0f}" for r in RATES)
                + " ; "
                + " / ".join(f"{by_rate[str(r)]['finished']['median']:.0f}" for r in RATES),
                "",
                None,
                "info",
                None,
                "bytes",
            )
        )

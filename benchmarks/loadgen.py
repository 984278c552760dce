"""The load generator: an aiohttp client in a process of its own, printing one JSON line of results.

Modes (every loop is bounded by a count or a deadline):

* ``closed``  — ``--concurrency`` connections post back-to-back for ``--warmup`` + ``--duration``
  seconds; requests/s and latency percentiles over the measured part only.
* ``count``   — post ``--n`` messages with ``--concurrency`` in flight (a backlog for the workers;
  ``--pages K`` spreads them round-robin over K pages from ``--page`` on).
* ``paced``   — open loop: message i is posted at ``t0 + i / rate`` whatever the answers do;
  writes ``[psid, t_post, t_answer, status, delivery_id]`` per message to ``--records``.
* ``raw``     — the delivery ceiling: ``--n`` Send API bodies straight to the Graph URL with
  ``--inflight`` requests in flight, no queue, no records.

CPU seconds of this process over the measured part are reported (``os.times``: utime + stime).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.common import intake_headers, intake_path, percentile, psid_for, send_body

BODY_POOL = 512


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    async with session.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


async def closed(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url}{intake_path(args.page)}"
    bodies = [send_body(psid_for(args.tag, i)) for i in range(BODY_POOL)]
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    cpu_at: dict[str, float] = {}
    total = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        begin = time.perf_counter()
        measure_from = begin + args.warmup
        measure_to = measure_from + args.duration

        async def mark() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu_at["from"] = _cpu()
            await asyncio.sleep(max(0.0, measure_to - time.perf_counter()))
            cpu_at["to"] = _cpu()

        async def worker(w: int) -> None:
            nonlocal total
            i = 0
            while True:
                t0 = time.perf_counter()
                if t0 >= measure_to:
                    return
                body = bodies[(w * 31 + i) % BODY_POOL]
                status = await _post(session, url, body, intake_headers(f"bench:{args.run}:{w}:{i}"))
                t1 = time.perf_counter()
                i += 1
                total += 1
                if measure_from <= t1 <= measure_to:
                    statuses[status] += 1
                    if t0 >= measure_from:
                        latencies.append(t1 - t0)

        await asyncio.gather(mark(), *(worker(w) for w in range(args.concurrency)))
    done = sum(statuses.values())
    return {
        "requests": done,
        "requests_total": total,
        "rps": done / args.duration,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": done - statuses.get(args.expect, 0),
        "cpu_s": cpu_at["to"] - cpu_at["from"],
        "duration_s": args.duration,
    }


async def count(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url}{intake_path(args.page)}"
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    next_index = iter(range(args.n))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0, t0 = _cpu(), time.perf_counter()

        async def worker() -> None:
            for i in next_index:
                psid = psid_for(args.tag, args.offset + i)
                to = (
                    url
                    if args.pages <= 1
                    else f"{args.url}{intake_path(str(int(args.page) + i % args.pages))}"
                )
                body = send_body(psid, args.spread, i)
                headers = intake_headers(f"bench:{args.run}:{i}")
                if args.no_key:
                    del headers["Idempotency-Key"]
                status = await _post(session, to, body, headers)
                statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "n": args.n,
        "ok": statuses.get(202, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "elapsed_s": elapsed,
        "rps": args.n / elapsed,
        "cpu_s": cpu,
    }


async def paced(args: argparse.Namespace) -> dict[str, Any]:
    url = f"{args.url}{intake_path(args.page)}"
    records: list[list[Any]] = []
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            psid = psid_for(args.tag, args.offset + i)
            t_post = time.time()
            headers = intake_headers(f"bench:{args.run}:{i}")
            try:
                async with session.post(url, data=send_body(psid), headers=headers) as resp:
                    payload = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                records.append([psid, t_post, time.time(), 0, None])
                return
            t_answer = time.time()
            delivery_id = orjson.loads(payload).get("delivery_id") if status == 202 else None
            records.append([psid, t_post, t_answer, status, delivery_id])

        tasks: list[asyncio.Task[None]] = []
        start = time.perf_counter() + 0.05
        for i in range(args.n):
            due = start + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - due)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    await asyncio.to_thread(Path(args.records).write_bytes, orjson.dumps(records))
    return {
        "n": args.n,
        "ok": sum(1 for r in records if r[3] == 202),
        "target_rate": args.rate,
        "achieved_rate": args.n / elapsed if elapsed > 0 else 0.0,
        "schedule_lag_p99_ms": percentile(lags, 99) * 1000,
    }


async def raw(args: argparse.Namespace) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    bodies = [send_body(psid_for(args.tag, i)) for i in range(args.n)]
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=args.inflight)
    timeout = aiohttp.ClientTimeout(total=60)
    next_index = iter(range(args.n))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu0, t0 = _cpu(), time.perf_counter()

        async def worker() -> None:
            for i in next_index:
                statuses[await _post(session, args.url, bodies[i], headers)] += 1

        await asyncio.gather(*(worker() for _ in range(args.inflight)))
        elapsed, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return {
        "n": args.n,
        "ok": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "elapsed_s": elapsed,
        "rate": args.n / elapsed,
        "cpu_s": cpu,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("closed", "count", "paced"):
        s = sub.add_parser(name)
        s.add_argument("--url", required=True, help="intake (or ceiling app) base URL")
        s.add_argument("--page", default="100")
        s.add_argument("--tag", type=int, default=1, help="PSID prefix of this load")
        s.add_argument("--offset", type=int, default=0)
        s.add_argument("--run", default=str(os.getpid()), help="Idempotency-Key prefix")
        s.add_argument("--concurrency", type=int, default=64)
    closed_p = sub.choices["closed"]
    closed_p.add_argument("--duration", type=float, default=10.0)
    closed_p.add_argument("--warmup", type=float, default=2.0)
    closed_p.add_argument("--expect", type=int, default=202)
    sub.choices["count"].add_argument("--n", type=int, required=True)
    sub.choices["count"].add_argument(
        "--pages", type=int, default=1, help="message i goes to page (--page + i %% pages), round-robin"
    )
    sub.choices["count"].add_argument(
        "--spread", type=int, default=0, help="texts up to this many characters shorter or longer"
    )
    sub.choices["count"].add_argument("--no-key", action="store_true", help="no Idempotency-Key header")
    paced_p = sub.choices["paced"]
    paced_p.add_argument("--n", type=int, required=True)
    paced_p.add_argument("--rate", type=float, required=True)
    paced_p.add_argument("--records", required=True)
    raw_p = sub.add_parser("raw")
    raw_p.add_argument("--url", required=True, help="the full Graph URL, token included")
    raw_p.add_argument("--n", type=int, required=True)
    raw_p.add_argument("--inflight", type=int, default=100)
    raw_p.add_argument("--tag", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    modes = {"closed": closed, "count": count, "paced": paced, "raw": raw}
    # uvloop where installed: it spares the load generators CPU, and the raw client (the delivery
    # ceiling) then runs on the same loop as the worker's engine, a like-for-like ceiling
    if True:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
    result = asyncio.run(modes[args.mode](args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

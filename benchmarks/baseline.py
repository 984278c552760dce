"""The baseline: the plain design, one Celery task per message sent with a sync ``httpx.Client``.

A tiny Celery app of its own (queue ``bench-baseline``, json, no result backend), run as
``celery -A benchmarks.baseline worker --pool=threads --concurrency=32``. Each task POSTs one
Send API body to ``BASELINE_GRAPH_URL`` with one ``httpx.Client`` shared by the pool's threads.
It writes no delivery record, paces nothing and classifies nothing, so its CPU per message is a
lower bound for that design. Broker: ``BASELINE_REDIS_URL``.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import httpx
import orjson
from celery import Celery
from celery.signals import worker_ready

from benchmarks.common import psid_for, send_body

QUEUE = "bench-baseline"
TASK = "baseline.send"

app = Celery("baseline", broker=os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)

_client: httpx.Client | None = None
_lock = threading.Lock()


def client() -> httpx.Client:
    global _client  # noqa: PLW0603 - one client per worker process, created on first use
    with _lock:
        if _client is None:
            _client = httpx.Client(
                timeout=httpx.Timeout(20.0, connect=5.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
                headers={"content-type": "application/json"},
            )
        return _client


@app.task(name=TASK, ignore_result=True)
def send(url: str, body: dict[str, Any]) -> int:
    response = client().post(url, content=orjson.dumps(body))
    return response.status_code


@worker_ready.connect
def _ready(**_kwargs: Any) -> None:
    sys.stdout.write("baseline worker ready\n")
    sys.stdout.flush()


def main() -> int:
    """``python -m benchmarks.baseline --url GRAPH_URL --n N``: publish N tasks, print a JSON line.

    One ``send_task`` per message, as the plain design's web view would do; the CPU it costs is
    reported (``os.times`` of this process).
    """
    import argparse
    import time

    p = argparse.ArgumentParser(prog="python -m benchmarks.baseline")
    p.add_argument("--url", required=True, help="the full Graph URL, token included")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--tag", type=int, default=6)
    args = p.parse_args()
    bodies = [orjson.loads(send_body(psid_for(args.tag, i))) for i in range(args.n)]
    app.send_task(TASK, args=[args.url, bodies[0]], queue=QUEUE)  # connect and declare first
    t0, cpu0 = time.perf_counter(), os.times()
    for body in bodies[1:]:
        app.send_task(TASK, args=[args.url, body], queue=QUEUE)
    elapsed, cpu1 = time.perf_counter() - t0, os.times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    published = args.n - 1
    result = {
        "n": args.n,
        "elapsed_s": elapsed,
        "rate": published / elapsed,
        "cpu_s": cpu,
        "cpu_ms_per_task": cpu / published * 1000,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

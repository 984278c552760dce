"""A worker's /healthz and /readyz (worker/health.py), with real workers on a real Redis.

Two workers on one host with the same METRICS_PORT both serve (the second on the next free port,
which worker.ready reports). With Redis stopped (SIGSTOP), readiness fails — the scheduler's rounds
stop — while liveness holds, so Kubernetes would not restart a healthy worker for a Redis stall;
with Redis back, the worker is ready again.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import httpx
import pytest

from tests.conftest import RedisServer, free_port, wait_until

pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=8)


def _ready_ports(stack: Any) -> list[int]:
    return [
        int(e["metrics_port"])
        for e in stack.logs()
        if e.get("event") == "worker.ready" and e.get("metrics_port")
    ]


def test_two_workers_one_host_health_and_readiness(make_stack: Any, own_redis: RedisServer) -> None:
    port = free_port()
    stack = make_stack(own_redis.url, METRICS_PORT=str(port))
    stack.start_worker(name="first")
    stack.start_worker(name="second")
    assert wait_until(lambda: len(_ready_ports(stack)) == 2, 20), stack.logs()
    ports = _ready_ports(stack)
    assert port in ports
    assert len(set(ports)) == 2, "the second worker serves on another port"
    assert not any("Address already in use" in p.tail(400) for p in stack.procs)
    for p in ports:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert _get(p, path).status_code == 200, (p, path, _get(p, path).text)
        checks = _get(p, "/readyz").json()["checks"]
        assert set(checks) == {"engine_loop", "celery_consumer", "broker", "loop_lag", "scheduler"}

    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: _get(port, "/readyz").status_code == 503, 25, 0.5)
        body = _get(port, "/readyz").json()
        assert body["checks"]["scheduler"]["ok"] is False, body
        assert _get(port, "/healthz").status_code == 200, "a Redis stall is not a dead worker"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: _get(port, "/readyz").status_code == 200, 30, 0.5), _get(port, "/readyz").text

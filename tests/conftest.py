"""Shared fixtures: real redis-server, the project's sandbox, real Celery workers and intakes.

Processes are started as subprocesses on loopback ports, each with its own log file under the
test's tmp dir. Without ``redis-server`` on PATH integration tests are skipped locally and fail in
CI (``CI=true``), as dramatiq's test-suite does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from worker.config import Settings
from worker.states import FINAL
from worker.store import Keys, outcomes

PY = sys.executable
INTAKE_TOKEN = "test-intake-token-0123456789abcdefgh"
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghij"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PAGE = "100"
PAGE_TOKEN = "sandbox-token-100"
#: Every page the tests send as: configured for each stack (an access token we do not hold is
#: refused at the intake, so a test's page must be one of these).
TEST_PAGES = (PAGE, "200", "401", "402", "403", "404", "501", "601", "602", "777")
#: Service processes refuse the built-in RECIPIENT_HASH_SALT (config.check_service).
HASH_SALT = "test-recipient-hash-salt-" + uuid.uuid4().hex[:12]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The secrets scan reads every process log of the session: it runs last."""
    last = [i for i in items if "test_secrets_after_suite" in i.nodeid]
    items[:] = [i for i in items if i not in last] + last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_port(port: int, timeout: float = 20.0) -> bool:
    def up() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return wait_until(up, timeout)


@dataclass
class RedisServer:
    port: int
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    #: AOF fsync policy: "everysec" (the embedded default) or "always" (nothing lost to a SIGKILL)
    appendfsync: str = "everysec"
    #: More redis-server arguments (the benchmarks: worker.store.connections.server_args())
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
        )
        assert wait_port(self.port), "redis-server did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def client(self) -> Any:  # redis-py types sync commands as "Awaitable[T] | T"; Any keeps tests readable
        return redis.Redis.from_url(self.url)


def _need_redis() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    _need_redis()
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop or restart it."""
    _need_redis()
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.reap(timeout)

    def reap(self, timeout: float = 30) -> int | None:
        """Wait for a process told to stop; killed when it takes longer than ``timeout``."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.returncode


@dataclass
class Sandbox:
    port: int
    proc: Proc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, **params: str) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.url}/__sandbox/calls", params=params, timeout=10)
        resp.raise_for_status()
        calls: list[dict[str, Any]] = resp.json()["calls"]
        return calls

    def clear(self) -> None:
        httpx.delete(f"{self.url}/__sandbox/calls", timeout=10).raise_for_status()
        httpx.delete(f"{self.url}/__sandbox/faults", timeout=10).raise_for_status()

    def fault(
        self,
        page_id: str,
        code: int,
        subcode: int | None = None,
        count: int | None = None,
        regain_minutes: int | None = None,
    ) -> None:
        httpx.post(
            f"{self.url}/__sandbox/faults",
            json={
                "page_id": page_id,
                "code": code,
                "subcode": subcode,
                "count": count,
                "regain_minutes": regain_minutes,
            },
            timeout=10,
        ).raise_for_status()

    def clear_faults(self, page_id: str) -> None:
        httpx.delete(
            f"{self.url}/__sandbox/faults", params={"page_id": page_id}, timeout=10
        ).raise_for_status()

    def set_latency(self, ms: float) -> None:
        httpx.post(f"{self.url}/__sandbox/config", json={"latency_ms": ms}, timeout=10).raise_for_status()


def start_process(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    handle = log.open("wb")
    proc = subprocess.Popen([PY, "-m", "worker", *args], env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return Proc(name, proc, log)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    port = free_port()
    env = {**os.environ}
    proc = start_process("sandbox", ["sandbox", "--port", str(port)], env, tmp_path_factory.mktemp("sandbox"))
    assert wait_port(port), proc.tail()
    yield Sandbox(port, proc)
    proc.stop()


def base_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GRAPH_", "PAGE_", "INTAKE_"))}
    env.update(
        {
            "REDIS_URL": redis_url,
            "GRAPH_API_URL": sandbox_url,
            "INTAKE_TOKENS": INTAKE_TOKEN,
            "ADMIN_TOKENS": ADMIN_TOKEN,
            "INTAKE_METRICS_PORT": "0",
            # the pages the tests send as (the sandbox takes sandbox-token-<page> for any page)
            "PAGE_ACCESS_TOKENS": json.dumps({page: f"sandbox-token-{page}" for page in TEST_PAGES}),
            "RECIPIENT_HASH_SALT": HASH_SALT,
            "KEY_PREFIX": "t" + uuid.uuid4().hex[:8],
            "QUEUE_NAME": "q" + uuid.uuid4().hex[:8],
            "MAX_ATTEMPTS": "3",
            "RETRY_BASE_SECONDS": "0.05",
            "RETRY_CAP_SECONDS": "0.3",
            "SWEEP_AFTER_SECONDS": "3",
            "DELIVERY_LEASE_SECONDS": "5",
            "GRAPH_DEADLINE_SECONDS": "2.5",
            "SCHEDULER_INTERVAL_SECONDS": "0.1",
            "GRAPH_READ_TIMEOUT": "2",
            "LOG_FORMAT": "json",
            "METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Stack:
    """An isolated pipeline (own key prefix and queue) on the shared redis and sandbox."""

    env: dict[str, str]
    sandbox: Sandbox
    redis_url: str
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    intake_port: int = 0
    intake_metrics_port: int = 0

    @property
    def prefix(self) -> str:
        return self.env["KEY_PREFIX"]

    @property
    def queue(self) -> str:
        return self.env["QUEUE_NAME"]

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix, self.queue)

    @property
    def record_retention(self) -> int:
        """RECORD_RETENTION as the stack runs (where a final record is looked for)."""
        default: int = Settings.model_fields["record_retention"].default
        return int(self.env.get("RECORD_RETENTION", default))

    @property
    def intake_url(self) -> str:
        return f"http://127.0.0.1:{self.intake_port}"

    def redis(self) -> Any:  # see RedisServer.client
        return redis.Redis.from_url(self.redis_url)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """``messenger-worker ARGS`` against this stack, to completion; fails the test on a non-zero exit."""
        return subprocess.run(
            [PY, "-m", "worker", *args], env=self.env, capture_output=True, timeout=60, check=True
        )

    def start_worker(self, concurrency: int = 4, name: str = "worker") -> Proc:
        proc = start_process(
            name,
            ["worker", "--concurrency", str(concurrency), "--hostname", f"{name}-{uuid.uuid4().hex[:6]}@%h"],
            self.env,
            self.log_dir,
        )
        self.procs.append(proc)
        assert wait_until(lambda: "ready" in proc.tail(200), 30), proc.tail()
        return proc

    def start_workers(self, count: int, concurrency: int = 4) -> list[Proc]:
        """Start several worker processes at once (their start-ups overlap)."""
        procs = [
            start_process(
                f"worker{i}",
                [
                    "worker",
                    "--concurrency",
                    str(concurrency),
                    "--hostname",
                    f"w{i}-{uuid.uuid4().hex[:6]}@%h",
                ],
                self.env,
                self.log_dir,
            )
            for i in range(count)
        ]
        self.procs.extend(procs)
        for proc in procs:
            assert wait_until(lambda p=proc: "ready" in p.tail(200), 60), proc.tail()
        return procs

    def post_many(self, bodies: list[tuple[str, dict[str, Any]]], concurrency: int = 32) -> list[str]:
        """POST (path, body) pairs concurrently; returns delivery ids in order. Bounded by the list."""
        import asyncio

        async def main() -> list[str]:
            sem = asyncio.Semaphore(concurrency)
            headers = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
            async with httpx.AsyncClient(base_url=self.intake_url, headers=headers, timeout=30) as client:

                async def one(path: str, body: dict[str, Any]) -> str:
                    async with sem:
                        resp = await client.post(path, json=body)
                        assert resp.status_code == 202, resp.text
                        delivery_id: str = resp.json()["delivery_id"]
                        return delivery_id

                return list(await asyncio.gather(*(one(p, b) for p, b in bodies)))

        return asyncio.run(main())

    def start_intake(self, port: int | None = None) -> Proc:
        """An intake on ``port`` (or a free one), its /metrics on a free port of its own."""
        self.intake_port = port or free_port()
        self.intake_metrics_port = free_port()
        env = {**self.env, "INTAKE_METRICS_PORT": str(self.intake_metrics_port)}
        proc = start_process("intake", ["intake", "--port", str(self.intake_port)], env, self.log_dir)
        self.procs.append(proc)
        assert wait_port(self.intake_port), proc.tail()
        return proc

    @property
    def intake_metrics_url(self) -> str:
        """The intake's /metrics (its own listener, not the public port)."""
        assert wait_port(self.intake_metrics_port), "the intake's /metrics listener did not start"
        return f"http://127.0.0.1:{self.intake_metrics_port}/metrics"

    def post(
        self,
        body: dict[str, Any] | bytes,
        *,
        path: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        hdrs = {"Authorization": f"Bearer {INTAKE_TOKEN}", "Content-Type": "application/json"}
        hdrs.update(headers or {})
        content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        return httpx.post(
            f"{self.intake_url}{path or f'/v25.0/{PAGE}/messages'}",
            content=content,
            headers=hdrs,
            params=params,
            timeout=10,
        )

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        resp = httpx.get(
            f"{self.intake_url}/v1/deliveries/{delivery_id}",
            headers={"Authorization": f"Bearer {INTAKE_TOKEN}"},
            timeout=10,
        )
        resp.raise_for_status()
        view: dict[str, Any] = resp.json()
        return view

    def record(self, delivery_id: str) -> dict[str, str]:
        return outcomes.read_sync(self.redis(), self.keys, delivery_id, self.record_retention)

    def wait_final(self, ids: list[str], timeout: float = 30) -> dict[str, dict[str, str]]:
        final = {s.value for s in FINAL}
        records: dict[str, dict[str, str]] = {}

        def done() -> bool:
            for i in ids:
                if records.get(i, {}).get("status") not in final:
                    records[i] = self.record(i)
            return all(records[i].get("status") in final for i in ids)

        assert wait_until(done, timeout, 0.1), {i: r.get("status") for i, r in records.items()}
        return records

    def logs(self) -> list[dict[str, Any]]:
        import orjson

        out: list[dict[str, Any]] = []
        for proc in self.procs:
            for line in proc.log.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("{"):
                    try:
                        out.append(orjson.loads(line))
                    except orjson.JSONDecodeError:
                        continue
        return out

    def stop(self) -> None:
        """Every process told to stop at once, then each waited for: a test's teardown takes the
        slowest shutdown (a worker's, about a second), not their sum."""
        live = [proc for proc in reversed(self.procs) if proc.proc.poll() is None]
        for proc in live:
            proc.proc.send_signal(signal.SIGTERM)
        for proc in live:
            proc.reap()


@pytest.fixture
def make_stack(redis_server: RedisServer, sandbox: Sandbox, tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(redis_url: str | None = None, **extra: str) -> Stack:
        url = redis_url or redis_server.url
        stack = Stack(base_env(url, sandbox.url, **extra), sandbox, url, tmp_path / f"logs{len(stacks)}")
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()

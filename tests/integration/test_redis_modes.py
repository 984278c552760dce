"""REDIS_URL over TLS (rediss://) and through Redis Sentinel, with the whole pipeline."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack, free_port, wait_port

pytestmark = pytest.mark.integration


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None
    handle = log.open("wb")
    proc = subprocess.Popen([binary, *args], stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return proc


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    proc = _spawn(
        ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
        tmp_path / "redis-tls.log",
    )  # fmt: skip
    assert wait_port(port), (tmp_path / "redis-tls.log").read_text()
    yield f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    _stop(proc)


@pytest.fixture
def sentinel_redis(tmp_path: Path) -> Iterator[str]:
    port, sport = free_port(), free_port()
    master = _spawn(["--port", str(port), "--save", "", "--dir", str(tmp_path)], tmp_path / "master.log")
    assert wait_port(port)
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sport}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {port} 1\n"
        "sentinel down-after-milliseconds mymaster 5000\n",
        encoding="utf-8",
    )
    sentinel = _spawn([str(conf), "--sentinel"], tmp_path / "sentinel.log")
    assert wait_port(sport), (tmp_path / "sentinel.log").read_text()
    yield f"sentinel://127.0.0.1:{sport}/0"
    _stop(sentinel, master)


def _round_trip(stack: Stack, psid: str) -> None:
    stack.start_intake()
    stack.start_worker()
    resp = stack.post({"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}})
    assert resp.status_code == 202, resp.text
    delivery_id = resp.json()["delivery_id"]
    from tests.conftest import wait_until

    assert wait_until(lambda: stack.delivery(delivery_id)["status"] == "sent", 30), stack.procs[-1].tail()
    assert len(stack.sandbox.calls(psid=psid)) == 1


def test_pipeline_over_tls(make_stack: Any, tls_redis: str) -> None:
    stack: Stack = make_stack(redis_url=tls_redis)
    _round_trip(stack, "tls-1")


def test_pipeline_through_sentinel(make_stack: Any, sentinel_redis: str) -> None:
    stack: Stack = make_stack(redis_url=sentinel_redis, REDIS_SENTINEL_MASTER="mymaster")
    _round_trip(stack, "sentinel-1")

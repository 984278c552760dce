"""The README's run command: `messenger-worker up --sandbox` on a bare machine, then `send` and `status`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.integration


def test_up_sandbox_send_status_and_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GRAPH_", "PAGE_", "INTAKE_"))}
    env.update({"PYTHONUNBUFFERED": "1", "METRICS_PORT": "0"})
    port = free_port()
    out = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "worker", "up", "--sandbox", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    out.close()
    log = tmp_path / "up.log"
    try:
        assert wait_until(lambda: "Ctrl-C stops everything" in log.read_text(errors="replace"), 60), (
            log.read_text()
        )
        text = log.read_text(errors="replace")
        token = re.search(r"Authorization: Bearer (\S+)'", text)
        url = re.search(r"curl -sS -X POST (http://127\.0\.0\.1:\d+/\S+)", text)
        assert token is not None
        assert url is not None
        assert (tmp_path / ".data" / "appendonlydir").exists() or any((tmp_path / ".data").glob("*.aof*"))
        body = {"recipient": {"id": "1000001"}, "messaging_type": "UPDATE", "message": {"text": "hello"}}
        resp = httpx.post(
            url.group(1), json=body, headers={"Authorization": f"Bearer {token.group(1)}"}, timeout=10
        )
        assert resp.status_code == 202, resp.text
        delivery_id = resp.json()["delivery_id"]
        view_url = f"http://127.0.0.1:{port}/v1/deliveries/{delivery_id}"
        headers = {"Authorization": f"Bearer {token.group(1)}"}
        assert wait_until(
            lambda: httpx.get(view_url, headers=headers, timeout=10).json()["status"] == "sent", 30
        )
        # the same token works for the CLI's own commands
        redis_url = re.search(r"redis://127\.0\.0\.1:\d+/0", log.read_text(errors="replace"))
        cli_env = {**env, "INTAKE_TOKENS": token.group(1)}
        if redis_url:
            cli_env["REDIS_URL"] = redis_url.group(0)
        send = subprocess.run(
            [sys.executable, "-m", "worker", "send", "--page", "1234567890", "--psid", "2000002", "--text", "hi",
             "--intake", f"http://127.0.0.1:{port}"],
            env=cli_env, capture_output=True, timeout=90, check=False,
        )  # fmt: skip
        assert send.returncode == 0, send.stdout + send.stderr
        assert b'"status": "sent"' in send.stdout
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        rc = up.wait(timeout=90)
    assert rc == 0, log.read_text()
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)

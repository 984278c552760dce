"""``messenger-worker up``: the whole stack on one machine, for a first hour or a laptop.

It locks its data directory (one ``up`` per directory), starts an embedded Redis when REDIS_URL is
not set (:mod:`worker.cli.embedded`), the sandbox with ``--sandbox``, a worker and the intake,
writes the connection settings to ``<data-dir>/up.json`` for the other commands
(:mod:`worker.cli.state`) and prints a curl to paste. A restart reuses the recorded ports and
generated tokens where they are still free.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from worker.cli import embedded, state
from worker.cli.common import SANDBOX_PAGE, configured, service_settings

#: Celery warns at every start as root; under `up` (a development stack) it is noise after the banner.
_ROOT_WARNING = "ignore:You're running the worker with superuser privileges"


def free_port(preferred: int) -> int:
    """``preferred`` if a server can listen on it now, else a free port. SO_REUSEADDR as the
    servers bind (uvicorn, redis-server): a port whose connections linger in TIME_WAIT after a
    restart is free for them, so it is for this check too."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
        return preferred


def wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def dev_credentials(env: dict[str, str], previous: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """INTAKE_TOKENS, ADMIN_TOKENS (32+ characters) and RECIPIENT_HASH_SALT in ``env`` for whichever
    is not configured (environment or ./.env): the previous run's when it recorded them, else new.
    Validates the whole configuration; returns the first intake and admin tokens and what it set."""
    generated: dict[str, str] = {}
    for name, prefix in (
        ("INTAKE_TOKENS", "dev-"),
        ("ADMIN_TOKENS", "dev-admin-"),
        ("RECIPIENT_HASH_SALT", ""),
    ):
        if not configured(name):
            env[name] = generated[name] = previous.get(name) or prefix + secrets.token_urlsafe(32)
    settings = service_settings(**{k.lower(): v for k, v in generated.items()})
    intake, admin = settings.intake_tokens, settings.admin_tokens
    return (
        intake[0].get_secret_value() if intake else "",
        admin[0].get_secret_value() if admin else "",
        generated,
    )


class Stack:
    """The processes ``up`` started, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def add(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self.procs.append((name, proc))

    def exited(self) -> tuple[str, int] | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()


def _start_redis(stack: Stack, data_dir: Path, env: dict[str, str], ports: dict[str, int]) -> None:
    port = free_port(ports.get("redis", 6379))
    proc, name = embedded.start(data_dir, port)
    stack.add("redis", proc)
    if not wait_port(port):
        raise SystemExit(f"the embedded {name} did not start")
    env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    ports["redis"] = port
    print(f"embedded Redis: {name} on 127.0.0.1:{port}, data in {data_dir}", flush=True)


def _start_sandbox(stack: Stack, env: dict[str, str], ports: dict[str, int], intake_port: int) -> None:
    """The sandbox, posting delivery and read receipts for what it accepts to the intake's webhook,
    signed with APP_SECRET (generated for the dev stack when it is not configured)."""
    sport = free_port(ports.get("sandbox", 8081))
    py = sys.executable
    webhook = f"http://127.0.0.1:{intake_port}/messenger/webhook"
    args = [py, "-m", "worker", "sandbox", "--port", str(sport), "--receipts-webhook", webhook]
    sandbox_env = {**env, "SANDBOX_RECEIPTS_SECRET": env.get("APP_SECRET", "")}  # not on the command line
    stack.add("sandbox", subprocess.Popen(args, env=sandbox_env))
    if not wait_port(sport):
        raise SystemExit("the sandbox did not start")
    env["GRAPH_API_URL"] = f"http://127.0.0.1:{sport}"
    ports["sandbox"] = sport
    if not configured("PAGE_ACCESS_TOKENS"):
        env["PAGE_ACCESS_TOKENS"] = json.dumps({SANDBOX_PAGE: f"sandbox-token-{SANDBOX_PAGE}"})


def _operators_hint(data_dir: Path) -> str:
    """How another shell reaches this stack: from this directory by itself with the default data
    directory, else (and from anywhere) with ``--data-dir``."""
    if data_dir.resolve() == Path(".data").resolve():
        return "from another shell in this directory: messenger-worker status | send | dead-letters list\n"
    return f"from another shell: messenger-worker --data-dir {data_dir.resolve()} status | send | dead-letters list\n"


def _banner(iport: int, page: str, token: str, admin: str, state_path: Path) -> str:
    return (
        "\nbraze-messenger-worker is up. Send a message through the intake:\n\n"
        f"  curl -sS -X POST http://127.0.0.1:{iport}/v25.0/{page}/messages \\\n"
        f"    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
        '    -d \'{"recipient":{"id":"1000001"},"messaging_type":"UPDATE","message":{"text":"hello"}}\'\n\n'
        f"then: curl -sS -H 'Authorization: Bearer {token}' http://127.0.0.1:{iport}/v1/deliveries/<delivery_id>\n"
        f"admin (dead letters): curl -sS -H 'Authorization: Bearer {admin}' http://127.0.0.1:{iport}/v1/dead-letters\n"
        f"operator console: http://127.0.0.1:{iport}/console/ (sign in with the admin token {admin})\n"
        f"{_operators_hint(state_path.parent)}"
        f"  (they read {state_path}, mode 0600: it holds these dev tokens)\n"
        "Ctrl-C stops everything.\n"
    )


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    """The whole stack on one machine; Ctrl-C stops every process."""
    data_dir = Path(args.data_dir)
    try:
        lock = state.acquire_lock(data_dir)
    except state.AlreadyRunningError as exc:
        print(f"messenger-worker up: {exc}", file=sys.stderr)
        return 1
    previous = state.read_state(data_dir)
    ports: dict[str, int] = {k: int(v) for k, v in previous.get("ports", {}).items() if str(v).isdigit()}
    env = dict(os.environ)
    if not configured("LOG_FORMAT"):
        env["LOG_FORMAT"] = "console"  # a person reads this terminal; services in production log JSON
    env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), _ROOT_WARNING]))
    if not configured("METRICS_HOST"):
        env["METRICS_HOST"] = "127.0.0.1"  # as the intake: this machine only
    if not args.sandbox and not configured("PAGE_ACCESS_TOKENS"):
        print(
            "warning: PAGE_ACCESS_TOKENS is not set and --sandbox is off: every message will fail "
            "no_page_token. Set it, or try `messenger-worker up --sandbox`.",
            file=sys.stderr,
        )
    stack = Stack()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as Ctrl-C does
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, _interrupt)
    try:
        return _run(args, data_dir, env=env, ports=ports, previous=previous, stack=stack)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        lock.close()


def _run(
    args: argparse.Namespace,
    data_dir: Path,
    *,
    env: dict[str, str],
    ports: dict[str, int],
    previous: dict[str, Any],
    stack: Stack,
) -> int:
    recorded = {}
    if not configured("REDIS_URL"):
        _start_redis(stack, data_dir, env, ports)
        recorded["REDIS_URL"] = env["REDIS_URL"]
    iport = free_port(args.port if args.port is not None else ports.get("intake", 8080))
    if args.sandbox:
        if not configured("APP_SECRET"):  # the sandbox signs its receipts with it; the intake checks
            env["APP_SECRET"] = recorded["APP_SECRET"] = previous.get("env", {}).get(
                "APP_SECRET"
            ) or secrets.token_urlsafe(32)
        _start_sandbox(stack, env, ports, iport)
        recorded["GRAPH_API_URL"] = env["GRAPH_API_URL"]
        if "PAGE_ACCESS_TOKENS" in env and not configured("PAGE_ACCESS_TOKENS"):
            recorded["PAGE_ACCESS_TOKENS"] = env["PAGE_ACCESS_TOKENS"]
    token, admin, generated = dev_credentials(env, previous.get("env", {}))
    recorded.update(generated)
    py = sys.executable
    stack.add(
        "worker",
        subprocess.Popen([py, "-m", "worker", "worker", "--concurrency", str(args.concurrency)], env=env),
    )
    stack.add("intake", subprocess.Popen([py, "-m", "worker", "intake", "--port", str(iport)], env=env))
    if not wait_port(iport):
        raise SystemExit("the intake did not start")
    ports["intake"] = iport
    intake_url = f"http://127.0.0.1:{iport}"
    path = state.write_state(
        data_dir, {"pid": os.getpid(), "intake_url": intake_url, "ports": ports, "env": recorded}
    )
    print(_banner(iport, SANDBOX_PAGE if args.sandbox else "PAGE_ID", token, admin, path), flush=True)
    while True:
        ended = stack.exited()
        if ended is not None:
            print(f"{ended[0]} exited with {ended[1]}; stopping", file=sys.stderr)
            return 1
        time.sleep(0.5)

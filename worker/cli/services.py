"""The service commands: ``intake``, ``worker`` and ``sandbox``."""

from __future__ import annotations

import argparse
import os
import sys

from worker.cli.common import service_settings


def cmd_intake(args: argparse.Namespace) -> int:
    import uvicorn

    if args.insecure_no_auth:
        os.environ["INTAKE_INSECURE_NO_AUTH"] = "true"
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # several processes behind one port: aggregate their metrics (worker/metrics.py)
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bmw-metrics-")
    settings = service_settings()
    from worker.intake.protocol import GuardedHttpToolsProtocol

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
        # longer than the load balancer's idle timeout (README "Configuration")
        timeout_keep_alive=settings.intake_keepalive_seconds,
        # beyond it uvicorn answers 503 itself, plain text without Retry-After (README)
        limit_concurrency=settings.intake_limit_concurrency or None,
        # uvicorn's httptools protocol with a deadline and a size cap on each request's headers
        http=GuardedHttpToolsProtocol,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    metrics_port = getattr(args, "metrics_port", None)
    if metrics_port is not None:  # the Celery app reads its settings from the environment
        os.environ["METRICS_PORT"] = str(metrics_port)
    if getattr(args, "shard", None) is not None:
        os.environ["SHARD_INDEX"] = str(args.shard)
    settings = service_settings()
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

    secret = args.receipts_secret or os.environ.get("SANDBOX_RECEIPTS_SECRET", "")
    receipts = {
        "webhook": args.receipts_webhook,
        "secret": secret,
        "share": args.receipts_share,
        "delay_ms": args.receipts_delay_ms,
    }
    serve(host=args.host, port=args.port, latency_ms=args.latency_ms, receipts=receipts)
    return 0

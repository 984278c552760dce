"""`messenger-worker worker` exits with Celery's exit code (a supervisor must see a failure), and
the service commands refuse to start with the built-in RECIPIENT_HASH_SALT."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest


@pytest.mark.filterwarnings("ignore::celery.platforms.SecurityWarning")  # the test runs as root here
@pytest.mark.parametrize("exitcode", [0, 1, 3])
def test_the_worker_command_returns_celerys_exit_code(monkeypatch: pytest.MonkeyPatch, exitcode: int) -> None:
    from celery.apps.worker import Worker

    from worker import cli

    def start(self: Any) -> None:  # instead of consuming: stop as an unrecoverable error would
        self.exitcode = exitcode

    monkeypatch.setattr(Worker, "start", start)
    monkeypatch.setattr("worker.logging.configure_logging", lambda *_a, **_k: None)
    monkeypatch.setenv("INTAKE_TOKENS", "test-intake-token-0123456789abcdefgh")
    monkeypatch.setenv("RECIPIENT_HASH_SALT", "test-salt-0123456789abcdef")  # a service requires one
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: start() is replaced
    args = argparse.Namespace(concurrency=1, hostname="exit-test@%h")
    try:
        assert cli.cmd_worker(args) == exitcode
    finally:
        from worker.celery import get_settings

        get_settings.cache_clear()


@pytest.mark.parametrize("command", ["worker", "intake"])
def test_a_service_refuses_to_start_with_the_default_recipient_hash_salt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    from worker import cli

    monkeypatch.setattr("worker.logging.configure_logging", lambda *_a, **_k: None)
    monkeypatch.setenv("INTAKE_TOKENS", "test-intake-token-0123456789abcdefgh")
    monkeypatch.delenv("RECIPIENT_HASH_SALT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./.env either
    args = argparse.Namespace(concurrency=1, hostname="salt-test@%h", insecure_no_auth=False, workers=1)
    run = cli.cmd_worker if command == "worker" else cli.cmd_intake
    with pytest.raises(SystemExit, match="RECIPIENT_HASH_SALT"):
        run(args)


def test_the_intake_s_uvicorn_factory_refuses_the_default_salt_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--workers N`` processes build the app with app_factory, not through cmd_intake."""
    from worker.intake.app import app_factory

    monkeypatch.setattr("worker.logging.configure_logging", lambda *_a, **_k: None)
    monkeypatch.setenv("INTAKE_TOKENS", "test-intake-token-0123456789abcdefgh")
    monkeypatch.delenv("RECIPIENT_HASH_SALT", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./.env
    with pytest.raises(SystemExit, match="RECIPIENT_HASH_SALT"):
        app_factory()

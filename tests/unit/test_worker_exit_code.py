"""`messenger-worker worker` exits with Celery's exit code (a supervisor must see a failure)."""

from __future__ import annotations

import argparse
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
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached: start() is replaced
    args = argparse.Namespace(concurrency=1, hostname="exit-test@%h")
    try:
        assert cli.cmd_worker(args) == exitcode
    finally:
        from worker.celery import get_settings

        get_settings.cache_clear()

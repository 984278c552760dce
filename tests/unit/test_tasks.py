"""Celery's side of "nothing lost": the app's broker semantics and what the thin tasks do when
Redis does not answer (no Redis here: the engine is replaced)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from celery.exceptions import Reject

from worker import tasks
from worker.celery import make_app
from worker.config import Settings
from worker.delivery.engine import ClaimUnavailable


def test_a_failed_task_is_never_acknowledged_and_refusals_are_not_fatal() -> None:
    conf = make_app(Settings(intake_insecure_no_auth=True, _env_file=None)).conf
    assert conf.task_acks_late is True
    assert conf.task_acks_on_failure_or_timeout is False
    assert conf.task_reject_on_worker_lost is True
    assert conf.broker_channel_error_retry is True  # a Redis OOM/READONLY answer: reconnect, not exit
    assert conf.worker_prefetch_multiplier == 1


class Unavailable:
    """An engine whose claims cannot reach Redis (it retried for CLAIM_RETRY_SECONDS)."""

    def run_batch(self, ids: list[str] | None = None, *, batch: str | None = None) -> dict[str, int]:
        raise ClaimUnavailable("ConnectionError")


@pytest.mark.parametrize(
    ("task", "arg"), [(tasks.deliver_batch, "batch-1"), (tasks.deliver, ["d1", "d2"])], ids=["batch", "ids"]
)
def test_a_claim_that_cannot_reach_redis_requeues_its_message(
    monkeypatch: pytest.MonkeyPatch, task: Any, arg: Any
) -> None:
    monkeypatch.setattr(tasks, "process_engine", lambda _factory: Unavailable())
    with pytest.raises(Reject) as refused:
        task.run(arg)
    assert getattr(refused.value, "requeue", None) is True  # not in celery-types' stubs


def test_importing_the_celery_app_needs_no_environment() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    code = "import worker.celery, worker.tasks; print(worker.celery.app.main)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "worker"

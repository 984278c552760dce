"""Celery's shutdown notices (written from signal handlers) come out as JSON lines."""

from __future__ import annotations

import os

import celery.apps.worker
import orjson

from worker.celery import _json_signal_messages, say_json


def test_safe_say_writes_one_json_line() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "w", closefd=False) as stream:
            say_json("worker: Warm shutdown (MainProcess)", stream)
        os.close(write_fd)
        data = os.read(read_fd, 65536)
    finally:
        os.close(read_fd)
    (line,) = data.splitlines()
    record = orjson.loads(line)
    assert record["event"] == "celery.notice"
    assert record["message"] == "worker: Warm shutdown (MainProcess)"
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


def test_celery_uses_it_once_logging_is_configured() -> None:
    module = celery.apps.worker  # safe_say is not in celery-types' stubs: reached via getattr
    original = getattr(module, "safe_say")  # noqa: B009
    try:
        _json_signal_messages()
        assert getattr(module, "safe_say") is say_json  # noqa: B009
    finally:
        setattr(module, "safe_say", original)  # noqa: B010

"""The operator commands' output as a shell user meets it: piped into a reader that goes away, and
run where no ``up`` is, with nothing configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RedisServer

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PAGE_ACCESS"))}
    return {**env, "RECIPIENT_HASH_SALT": "cli-output-salt-0123456789", **extra}


def test_a_reader_that_goes_away_gets_no_traceback(redis_server: RedisServer, tmp_path: Path) -> None:
    """`messenger-worker status | head -3` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "status"],
        cwd=tmp_path,
        env=_env(REDIS_URL=redis_server.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err


def test_without_an_up_or_redis_url_the_command_says_which_redis_it_uses(tmp_path: Path) -> None:
    """Before, it used the default Redis silently: the one of whichever up took port 6379."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "status"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = done.stderr.decode()
    assert "no up runs in ./.data and REDIS_URL is not set: using redis://127.0.0.1:6379/0" in err
    assert "Traceback" not in err

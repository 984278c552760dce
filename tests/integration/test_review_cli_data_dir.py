"""The operator's commands reach the embedded Redis of an ``up`` started with ``--data-dir`` from
any directory, given the same ``--data-dir`` (before or after the command); they say so in one
line when no ``up`` runs there, and REDIS_URL, when set, still wins.

A real ``messenger-worker up --sandbox --data-dir stack`` (bundled Valkey: PATH holds only the
virtualenv, as in test_cli.py), and the commands as subprocesses from another directory."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisServer, wait_until
from tests.integration.test_cli import BANNER, _bare_env, _cli, _start_up, _stop

pytestmark = pytest.mark.integration

PAGE = "1234567890"


def _ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    return run.stdout


def _paused(run: subprocess.CompletedProcess[str]) -> list[str]:
    out: dict[str, Any] = json.loads(_ok(run))
    return [p["page_id"] for p in out["paused"]]


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    return run.stderr


def test_operator_commands_reach_the_redis_of_an_up_in_another_data_dir(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    env = {**_bare_env(), "MAX_ATTEMPTS": "1"}
    log = tmp_path / "up.log"
    up = _start_up(home, env, log, "--data-dir", "stack")
    stack = "../home/stack"  # relative to where the commands run, as a person would type it
    try:
        assert wait_until(lambda: BANNER in log.read_text(errors="replace"), 60), log.read_text()
        assert not (home / ".data").exists()
        embedded = json.loads((home / "stack" / "up.json").read_text())["env"]["REDIS_URL"]
        assert embedded.startswith("redis://127.0.0.1:")

        # after the command and before it, at every level of a command with subcommands
        assert _paused(_cli(elsewhere, env, "status", "--json", "--data-dir", stack)) == []
        _ok(_cli(elsewhere, env, "pages", "pause", PAGE, "--data-dir", stack))
        assert _paused(_cli(elsewhere, env, "--data-dir", stack, "status", "--json")) == [PAGE]
        _ok(_cli(elsewhere, env, "pages", "--data-dir", stack, "resume", PAGE))
        assert _paused(_cli(elsewhere, env, "status", "--json", "--data-dir", stack)) == []

        # send finds the intake and its dev token; the first call fails (transient) and with
        # MAX_ATTEMPTS=1 that is a dead letter, which the commands list and replay
        died = _cli(elsewhere, env, "--data-dir", stack, "send", "--page", PAGE, "--psid", "flaky1-1200-a",
                    "--text", "hi")  # fmt: skip
        assert died.returncode == 1, died.stdout + died.stderr
        delivery_id = json.loads(died.stdout)["delivery_id"]
        assert json.loads(died.stdout)["status"] == "dead"
        listed = json.loads(_ok(_cli(elsewhere, env, "dead-letters", "list", "--data-dir", stack)))
        assert [d["delivery_id"] for d in listed] == [delivery_id]
        replayed = _cli(elsewhere, env, "--data-dir", stack, "dead-letters", "replay", "--id", delivery_id)
        assert json.loads(_ok(replayed)) == {"replayed": [delivery_id]}
        campaigns = json.loads(_ok(_cli(elsewhere, env, "campaigns", "list", "--data-dir", stack)))
        assert campaigns == []  # (no campaign headers: counted in none)

        # REDIS_URL, when set, wins: the page is paused there, not in the embedded Redis
        own = {**env, "REDIS_URL": redis_server.url}
        paused = _cli(elsewhere, own, "--data-dir", stack, "pages", "pause", "4444")
        _ok(paused)
        assert "note: REDIS_URL or REDIS_SHARDS is set" in paused.stderr
        assert "4444" in _paused(_cli(elsewhere, own, "status", "--json"))
        assert _paused(_cli(elsewhere, env, "--data-dir", stack, "status", "--json")) == []
        _ok(_cli(elsewhere, own, "pages", "resume", "4444"))
    finally:
        _stop(up, log)

    # no up runs there any more: one line that says so, not a connection error to a default Redis
    gone = _one_line(_cli(elsewhere, env, "--data-dir", stack, "status"))
    assert "no `messenger-worker up` is running with the data directory" in gone
    assert str((home / "stack").resolve()) in gone
    never = _one_line(_cli(elsewhere, env, "dead-letters", "list", "--data-dir", "nowhere"))
    assert "no `messenger-worker up` is running" in never
    assert not (elsewhere / "nowhere").exists()

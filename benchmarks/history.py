"""Every run's JSON, kept: ``benchmarks/results/history/<UTC time>-<commit>.json``.

A run never overwrites an earlier one: the name carries the UTC time it finished (to the second)
and the commit it measured (``-dirty`` when the work tree had changes, which the figures then
include), and a name already taken gets a counter. ``latest.json`` is the newest full run (no
``--only``, no ``--quick``): the README's table is read from it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import ROOT


def git_commit(root: Path = ROOT) -> dict[str, Any]:
    """The commit the work tree is at and whether it has uncommitted changes (benchmarks/results
    left out: a run writes there)."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return {
        "commit": commit or "unknown",
        "dirty": bool(changes),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
    }


def history_name(finished_at: str, commit: str, dirty: bool) -> str:
    """``2026-12-06T064704Z-e429133a1b2c[-dirty].json`` from an ISO ``finished_at`` (UTC, Z)."""
    stamp = finished_at.replace(":", "").replace("-", "", 0)
    short = commit[:12] if commit else "unknown"
    return f"{stamp}-{short}{'-dirty' if dirty else ''}.json"


def free_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name`` with ``.2``, ``.3``... before ``.json`` if it is taken."""
    path = directory / name
    stem = name.removesuffix(".json")
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{stem}.{n}.json"
    return path


def write(report: dict[str, Any], results: Path, *, full: bool) -> list[Path]:
    """Write the run to the history (always) and to ``latest.json`` (a full run only)."""
    data = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    history = results / "history"
    history.mkdir(parents=True, exist_ok=True)
    git = report.get("git", {})
    path = free_path(
        history, history_name(report["finished_at"], git.get("commit", ""), bool(git.get("dirty")))
    )
    path.write_bytes(data)
    written = [path]
    if full:
        latest = results / "latest.json"
        latest.write_bytes(data)
        written.append(latest)
    return written

"""What ``up`` tells the user about reaching the stack from another shell (worker/cli/up.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli.up import _banner


def test_the_banner_names_the_data_directory_when_it_is_not_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, ``up --data-dir D`` said "from another shell in this directory: messenger-worker
    status", which there reads ./.data: another stack's, or the default Redis, silently."""
    monkeypatch.chdir(tmp_path)
    default = _banner(8080, "100", "tok", "adm", Path(".data") / "up.json")
    assert "from another shell in this directory: messenger-worker status" in default
    assert "--data-dir" not in default
    other = _banner(8081, "100", "tok", "adm", tmp_path / "stack2" / "up.json")
    assert f"messenger-worker --data-dir {tmp_path / 'stack2'} status" in other
    assert "in this directory" not in other

"""Helpers shared by the deploy tests: paths, YAML loading, the CLI parser, required tools.

The third-party modules used here (PyYAML, jsonschema, kubernetes-validate) ship no type
information; they are imported in this one place.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML ships no type information

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / "env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
K8S_SHARDS = DEPLOY / "k8s-shards"
PROMETHEUS_DIR = DEPLOY / "prometheus"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "braze-messenger-worker.json"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_yaml_all(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def settings_env_names() -> set[str]:
    """Environment variable names the service reads: Settings field names in upper case."""
    from worker.config import Settings

    return {name.upper() for name in Settings.model_fields}


def make_settings(values: dict[str, Any]) -> Any:
    """``Settings`` from explicit values only (no .env file), as a test builds it."""
    from worker.config import Settings

    kwargs: dict[str, Any] = {"_env_file": None, **values}
    return Settings(**kwargs)


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse argv with the real ``messenger-worker`` parser; fail the test if it is refused."""
    from worker.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"not a valid messenger-worker command: {argv}: {err.getvalue().strip()}")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|h|m|s)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(value: str | int | float) -> float:
    """A Compose duration (``1m30s``, ``40s``) or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def require_tool(*names: str) -> dict[str, str]:
    """Paths of the named executables: skip when one is missing locally, fail in CI."""
    found = {name: shutil.which(name) for name in names}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        message = f"{', '.join(missing)} not installed (./scripts/install-test-deps installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return {name: path for name, path in found.items() if path is not None}


@dataclass
class Instruction:
    keyword: str
    args: str


def dockerfile_instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages() -> list[list[Instruction]]:
    """Instructions grouped by stage (each starts with FROM); ARGs before the first FROM dropped."""
    result: list[list[Instruction]] = []
    for ins in dockerfile_instructions():
        if ins.keyword == "FROM":
            result.append([ins])
        elif result:
            result[-1].append(ins)
    return result


def exec_form(ins: Instruction) -> list[str]:
    args = ins.args
    if ins.keyword == "HEALTHCHECK":
        args = args.split("CMD", 1)[1].strip()
    value = json.loads(args)
    assert isinstance(value, list), f"{ins.keyword} must use the exec (JSON) form"
    assert all(isinstance(part, str) for part in value)
    return [str(part) for part in value]

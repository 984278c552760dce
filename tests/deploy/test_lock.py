"""The lock files agree with pyproject.toml: every pinned dependency is locked at its pin, every
locked file is hashed, and the image, scripts/test (so CI) install from them."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.deploy.common import DOCKERFILE, ROOT

LOCKS = {"runtime": ROOT / "requirements" / "runtime.lock", "dev": ROOT / "requirements" / "dev.lock"}


def locked(kind: str) -> dict[str, str]:
    text = LOCKS[kind].read_text(encoding="utf-8")
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^;\s]+)", req)
        if match:
            out[match.group(1).lower()] = match.group(2)
    return out


@pytest.mark.parametrize("kind", ["runtime", "dev"])
def test_every_pin_is_locked_at_its_version(kind: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + (project["optional-dependencies"]["dev"] if kind == "dev" else [])
    names = {re.match(r"^([A-Za-z0-9_.-]+)", req).group(1).lower() for req in wanted}  # type: ignore[union-attr]
    have = locked(kind)
    assert not names - set(have), f"not in {LOCKS[kind].name}: {sorted(names - set(have))}; run scripts/lock"
    for name, version in pins(wanted).items():
        assert have[name] == version, (
            f"{name}: pyproject {version}, {LOCKS[kind].name} {have[name]}; run scripts/lock"
        )


@pytest.mark.parametrize("kind", ["runtime", "dev"])
def test_every_locked_package_is_hashed(kind: str) -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", LOCKS[kind].read_text(encoding="utf-8"))
    for block in blocks:
        if re.match(r"^[A-Za-z0-9_.-]+==", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_installs_come_from_the_lock() -> None:
    assert "--require-hashes -r requirements/runtime.lock" in DOCKERFILE.read_text(encoding="utf-8")
    script = (ROOT / "scripts" / "test").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements/dev.lock" in script
    assert "--no-deps -e ." in script
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")

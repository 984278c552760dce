"""The package's shape (docs/architecture.md): sizes a newcomer can read, docstrings that say what
each module owns, and statuses spelled only by the state machine. The layering itself is checked
by ``lint-imports`` (pyproject [tool.importlinter])."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker.states import State

PACKAGE = Path(__file__).resolve().parents[2] / "worker"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
#: String constants equal to a status that are not statuses, with why.
NOT_STATUSES = {
    ("braze/outbox.py", "sent"): "a Braze write result (bmw_braze_objects_total's label)",
    ("sandbox/control.py", "sent"): "the sandbox's /__sandbox/stats counter",
    ("status.py", "scheduled"): "an attribute name of the read model",
    ("status.py", "parked"): "an attribute name of the read model",
}


def rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_modules_are_small_and_say_what_they_own(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert len(source.splitlines()) <= MAX_MODULE_LINES, rel(path)
    if path.name != "__main__.py":
        assert ast.get_docstring(tree), f"{rel(path)} has no module docstring"
    long = [
        (node.name, (node.end_lineno or node.lineno) - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{rel(path)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_status_is_spelled_outside_the_state_machine() -> None:
    statuses = {s.value for s in State}
    found: list[tuple[str, str, int]] = []
    for path in MODULES:
        if rel(path) == "states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in statuses
                and (rel(path), node.value) not in NOT_STATUSES
            ):
                found.append((rel(path), node.value, node.lineno))
    assert not found, f"status literals outside worker/states.py: {found}"
    lua = [
        (p.name, s)
        for p in sorted((PACKAGE / "store" / "lua").glob("*.lua"))
        for s in statuses
        if f"'{s}'" in p.read_text(encoding="utf-8")
    ]
    assert not lua, f"Lua scripts must use the prelude's S.*, not literals: {lua}"


def test_the_allowlist_is_not_stale() -> None:
    """Each exception still exists (else it would hide nothing and should go)."""
    for (module, literal), _why in NOT_STATUSES.items():
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.Constant) and n.value == literal for n in ast.walk(tree)), (
            module,
            literal,
        )

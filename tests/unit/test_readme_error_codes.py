"""Every error code the intake can answer (its OpenAPI document, itself checked against the routes
by test_openapi.py) is in the README's "Intake HTTP API" section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def _codes(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        code = node.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
        if isinstance(code, dict) and "enum" in code:
            found |= set(code["enum"])
        for value in node.values():
            found |= _codes(value)
    elif isinstance(node, list):
        for item in node:
            found |= _codes(item)
    return found


def test_every_error_code_is_in_the_readme() -> None:
    from worker.intake.openapi import openapi_document

    codes = _codes(json.loads(json.dumps(openapi_document())))
    assert len(codes) >= 20, sorted(codes)
    section = README.read_text(encoding="utf-8").split("\n## Intake HTTP API", 1)[1].split("\n## ", 1)[0]
    missing = sorted(code for code in codes if f"`{code}`" not in section)
    assert not missing, f"README 'Intake HTTP API' lacks error codes: {missing}"

"""Secrets: after the whole suite, no token or key appears in any log line the processes wrote.

``tests/conftest.py`` moves this test to the very end of the session, so it reads the logs of
every intake, worker, sandbox and double started by every other test (and their metrics and
status answers were checked where they were produced).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import INTAKE_TOKEN, PAGE_TOKEN

pytestmark = pytest.mark.reliability

SECRETS = [
    INTAKE_TOKEN,
    PAGE_TOKEN,
    "sandbox-token-",  # every page token the tests pass through the intake URL
    "test-app-secret-abcdef012345",
    "test-braze-rest-key-5555",
    "test-verify-token-98765",
]


def test_no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.getbasetemp()
    logs = [p for p in root.rglob("*.log") if p.is_file()]
    assert logs, "the suite wrote no process logs to scan"
    leaks = []
    for path in logs:
        text = path.read_text(encoding="utf-8", errors="replace")
        for secret in SECRETS:
            if secret in text:
                leaks.append((str(path.relative_to(root)), secret[:6] + "…"))
    assert not leaks, leaks
    assert all(isinstance(p, Path) for p in logs)

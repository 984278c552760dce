"""Every way a Braze write is lost for good reaches someone: an alert reads it."""

from __future__ import annotations

from tests.deploy.common import PROMETHEUS_DIR, load_yaml


def test_braze_writes_refused_for_good_raise_an_alert() -> None:
    """A batch Braze refuses (4xx: ``dropped``) or objects it refuses one by one in a 2xx answer
    (``rejected``) are lost for good. Before, only BmwBrazeWritesHeld existed: losses were
    warning log lines that no alert read."""
    rules = {r["alert"]: r for g in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for r in g["rules"]}
    expr = rules["BmwBrazeWritesRefused"]["expr"]
    assert "bmw_braze_objects_total" in expr
    assert "dropped" in expr
    assert "rejected" in expr

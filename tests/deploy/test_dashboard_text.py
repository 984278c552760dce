"""What the dashboard's panels tell the on-call engineer agrees with the metrics and the alerts.

The queries themselves are run against a live Prometheus in test_prometheus.py; here, the words:
a panel's description must not say a gauge counts what the gauge leaves out (the backlog's age
leaves parked deliveries out: worker/status.py's HELP text says so), and every alert a description
names exists in deploy/prometheus/alerts.yml.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.deploy.common import DASHBOARD, PROMETHEUS_DIR, load_yaml


def _panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from _panels(panel.get("panels", []))


def panels() -> list[dict[str, Any]]:
    return list(_panels(json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]))


def _help(metric: str) -> str:
    from worker.status import _GAUGES

    (doc,) = [doc for name, doc, _attr in _GAUGES if name == metric]
    return doc


def test_the_backlog_age_panels_say_parked_deliveries_are_left_out() -> None:
    metric = "bmw_oldest_open_age_seconds"
    assert "not parked" in _help(metric)
    reading = [p for p in panels() if any(metric in t.get("expr", "") for t in p.get("targets", []))]
    assert reading, f"no panel shows {metric}"
    for panel in reading:
        description = panel.get("description", "")
        included = re.search(r"\(([^)]*)\)", description)
        assert not (included and "parked" in included.group(1)), (
            f"{panel['title']!r} lists parked deliveries among those {metric} measures: {description}"
        )
        assert "parked" in description, f"{panel['title']!r}: say that parked deliveries are left out"


def test_alerts_named_in_descriptions_exist() -> None:
    alerts = {r["alert"] for g in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for r in g["rules"]}
    named = 0
    for panel in panels():
        for name in re.findall(r"\bBmw[A-Za-z]+", panel.get("description", "")):
            assert name in alerts, f"{panel['title']!r} names {name}, which is not an alert"
            named += 1
    assert named >= 2

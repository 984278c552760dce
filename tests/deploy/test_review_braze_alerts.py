"""Every way a Braze write is lost for good, or stuck, reaches someone: promtool runs the alerts on
synthetic series (tests/deploy/test_alert_rules.py's harness)."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.test_alert_rules import _run


def test_braze_writes_refused_for_good_raise_an_alert(tmp_path: Path) -> None:
    """A batch Braze refuses (4xx: ``dropped``) or objects it refuses one by one in a 2xx answer
    (``rejected``) are lost for good. Before, only BmwBrazeWritesHeld existed: losses were
    warning log lines that no alert read."""
    series = [
        ('bmw_braze_objects_total{instance="w1", result="sent"}', "0+50x40"),
        ('bmw_braze_objects_total{instance="w1", result="rejected"}', "0x10 1x30"),
        ('bmw_braze_objects_total{instance="w1", result="dropped"}', "0x40"),
    ]
    checks = [
        ("9m", "BmwBrazeWritesRefused", []),
        ("13m", "BmwBrazeWritesRefused", []),  # for: 5m
        ("17m", "BmwBrazeWritesRefused", [{"severity": "warning"}]),
        ("35m", "BmwBrazeWritesRefused", []),  # none refused in the last 15 minutes
    ]
    _run(tmp_path, series, checks)


def test_an_outbox_that_waits_with_nothing_sent_raises_an_alert(tmp_path: Path) -> None:
    """Braze answered 503 with Retry-After: 3600: the drainer waits an hour, ``held`` counted
    once, so BmwBrazeWritesHeld (held within 15 minutes, nothing sent) fell silent after 15
    minutes while the outbox grew. The outbox gauge (two intake replicas reporting the same)
    keeps BmwBrazeOutboxStuck firing, for the shard that is stuck only; it stops once the
    outbox drains."""
    series = [
        ('bmw_braze_outbox_items{instance="i1", shard="1", state="waiting"}', "0x5 100+100x60 0x20"),
        ('bmw_braze_outbox_items{instance="i2", shard="1", state="waiting"}', "0x5 100+100x60 0x20"),
        # shard 0's drainer works: its outbox empties between writes
        ('bmw_braze_outbox_items{instance="i1", shard="0", state="waiting"}', "0 30 0 12 0 " * 17),
        ('bmw_braze_objects_total{instance="w1", result="sent"}', "0+50x85"),
        ('bmw_braze_objects_total{instance="w2", result="held"}', "0x6 50x80"),
    ]
    checks = [
        ("30m", "BmwBrazeOutboxStuck", []),  # empty at 5m: not yet 30 minutes without
        ("45m", "BmwBrazeOutboxStuck", []),  # for: 15m
        ("55m", "BmwBrazeOutboxStuck", [{"severity": "warning", "shard": "1"}]),
        ("55m", "BmwBrazeWritesHeld", []),  # what it missed (and shard 0's sends hide it)
        ("80m", "BmwBrazeOutboxStuck", []),  # drained
    ]
    _run(tmp_path, series, checks)


def test_a_backlog_that_drains_is_not_stuck(tmp_path: Path) -> None:
    """Braze back after an outage: the outbox holds thousands and shrinks every minute. Never
    empty for 30 minutes, but draining: no alert."""
    series = [('bmw_braze_outbox_items{instance="i1", state="waiting"}', "9000-100x80")]
    _run(tmp_path, series, [("50m", "BmwBrazeOutboxStuck", []), ("75m", "BmwBrazeOutboxStuck", [])])

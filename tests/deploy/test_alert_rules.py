"""The on-call alerts fire when they should and stay quiet when they should not, and Alertmanager's
inhibitions silence only what they explain.

* ``promtool test rules`` on synthetic series, with the rules of deploy/prometheus/alerts.yml (their
  annotations dropped: the labels are under test here, the summaries in test_alert_shards.py):
  a page whose token is invalid, no worker up, a failure ratio over 5% (expired deliveries
  counted: never delivered), Braze writes held, new dead letters, an old backlog, the send
  route's 503s (critical) apart from the Messenger webhook's (a warning: APP_SECRET unset is a
  configuration mistake, not an outage for Braze); and the cases where each must not fire.
* deploy/alertmanager/alertmanager.yml's inhibit rules, applied as Alertmanager applies them
  (matchers on the source and the target, ``equal`` labels, an absent label equal to an absent
  one): with REDIS_SHARDS, one shard's Redis outage must not silence another shard's backlog.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML ships no type information

from tests.deploy.common import DEPLOY, load_yaml
from tests.deploy.test_prometheus import ALERTS, alert_rules, dashboard_queries, promtool


def _run(
    tmp_path: Path, series: list[tuple[str, str]], checks: list[tuple[str, str, list[dict[str, str]]]]
) -> None:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    test = {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": [{"exp_labels": labels} for labels in alerts]}
            for t, name, alerts in checks
        ],
    }
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": [test]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    done = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_page_with_an_invalid_token_pages_at_once_other_pauses_after_15_minutes(tmp_path: Path) -> None:
    series = [
        # two intake replicas report the same paused pages
        ('bmw_page_paused{instance="a", page_id="111", reason="token_invalid"}', "1x30"),
        ('bmw_page_paused{instance="b", page_id="111", reason="token_invalid"}', "1x30"),
        ('bmw_page_paused{instance="a", page_id="222", reason="page_restricted"}', "1x30"),
    ]
    checks = [
        ("3m", "BmwPageTokenInvalid", [{"page_id": "111", "severity": "critical"}]),
        ("10m", "BmwPagePaused", []),  # for: 15m
        ("20m", "BmwPagePaused", [{"page_id": "222", "reason": "page_restricted", "severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)


def test_no_worker_up_fires_and_an_up_worker_keeps_it_quiet(tmp_path: Path) -> None:
    series = [
        ('up{job="worker", instance="w1"}', "1x5 0x20"),  # the only worker stops answering at 5m
        ('up{job="intake", instance="i1"}', "1x25"),
    ]
    checks = [
        ("4m", "BmwNoWorker", []),
        ("6m", "BmwNoWorker", []),  # for: 2m
        ("10m", "BmwNoWorker", [{"severity": "critical"}]),
        ("10m", "BmwNoIntake", []),
    ]
    _run(tmp_path, series, checks)


def test_failure_ratio_fires_over_5_percent_of_enough_traffic(tmp_path: Path) -> None:
    series = [
        # 1 sent/s throughout; 0.5 failed/s from 10m on (a third of outcomes), dead letters none
        ('bmw_deliveries_total{outcome="sent", page_id="111"}', "0+60x40"),
        ('bmw_deliveries_total{outcome="failed", page_id="111"}', "0x10 0+30x30"),
        ('bmw_deliveries_total{outcome="dead", page_id="111"}', "0x40"),
    ]
    checks = [
        ("9m", "BmwFailureRatioHigh", []),
        ("30m", "BmwFailureRatioHigh", [{"severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)
    # the same ratio on a trickle (0.03 outcomes/s) is noise, not an alert
    trickle = [
        ('bmw_deliveries_total{outcome="sent", page_id="111"}', "0+1x40"),
        ('bmw_deliveries_total{outcome="failed", page_id="111"}', "0+1x40"),
    ]
    (tmp_path / "trickle").mkdir()
    _run(tmp_path / "trickle", trickle, [("30m", "BmwFailureRatioHigh", [])])


def test_expired_deliveries_count_as_failures(tmp_path: Path) -> None:
    """A delivery that expired (MESSAGE_TTL passed before a send) was accepted and never
    delivered: for the on-call engineer it is a failure like failed and dead. A third of the
    outcomes expiring fires the alert; before, expired was left out and it stayed silent."""
    series = [
        ('bmw_deliveries_total{outcome="sent", page_id="111", reason="none"}', "0+60x40"),
        ('bmw_deliveries_total{outcome="expired", page_id="111", reason="ttl"}', "0x10 0+30x30"),
        ('bmw_deliveries_total{outcome="cancelled", page_id="111", reason="none"}', "0x40"),
    ]
    checks = [
        ("9m", "BmwFailureRatioHigh", []),
        ("30m", "BmwFailureRatioHigh", [{"severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)


def test_cancels_do_not_hide_failures(tmp_path: Path) -> None:
    """A stop of a large campaign cancels its queued deliveries by the thousand (counted since
    the scripts' cancels are): over all outcomes, 9% failing would read 1.6% for as long as the
    cancels last. Cancels are left out of the ratio."""
    series = [
        ('bmw_deliveries_total{outcome="sent", page_id="111", reason="none"}', "0+60x40"),
        ('bmw_deliveries_total{outcome="failed", page_id="111", reason="x"}', "0x10 0+6x30"),
        (
            'bmw_deliveries_total{outcome="cancelled", page_id="111", reason="campaign_stopped"}',
            "0x10 0+300x30",
        ),
    ]
    checks = [
        ("9m", "BmwFailureRatioHigh", []),
        ("30m", "BmwFailureRatioHigh", [{"severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)


def _squeeze(expr: str) -> str:
    return " ".join(expr.split())


def test_the_failure_ratio_panel_is_the_alerts_expression() -> None:
    """The dashboard's 'Failure ratio (5m)' shows what BmwFailureRatioHigh compares with 5%."""
    (rule,) = [r for r in alert_rules() if r["alert"] == "BmwFailureRatioHigh"]
    ratio, _, rest = _squeeze(rule["expr"]).partition(" > 0.05")
    assert rest, rule["expr"]
    (panel,) = [expr for title, expr in dashboard_queries() if title == "Failure ratio (5m)"]
    assert _squeeze(panel) == ratio
    assert 'outcome=~"failed|expired|dead"' in ratio
    (by_class,) = [expr for title, expr in dashboard_queries() if title == "Failures by class per page"]
    assert 'outcome=~"failed|expired|dead"' in by_class


def test_only_the_send_routes_503s_page_the_webhooks_warn(tmp_path: Path) -> None:
    """APP_SECRET unset: every Messenger webhook POST is 503 not_configured from the start, while
    Braze's sends are stored (202). That is a configuration mistake, not an outage: a warning
    (BmwWebhookUnavailable), not BmwIntakeUnavailable, which fired on it before. At 20m Redis
    goes: the send route answers 503, and that pages."""
    series = [
        ('bmw_intake_requests_total{instance="i1", route="webhook", status="503"}', "0+30x40"),
        ('bmw_intake_requests_total{instance="i1", route="send", status="202"}', "0+600x20 12000x20"),
        ('bmw_intake_requests_total{instance="i1", route="send", status="503"}', "0x20 0+300x20"),
    ]
    checks = [
        ("15m", "BmwIntakeUnavailable", []),
        ("10m", "BmwWebhookUnavailable", []),  # for: 15m
        ("20m", "BmwWebhookUnavailable", [{"severity": "warning"}]),
        ("30m", "BmwIntakeUnavailable", [{"severity": "critical"}]),
    ]
    _run(tmp_path, series, checks)


def test_braze_writes_held_fires_only_while_nothing_gets_through(tmp_path: Path) -> None:
    series = [
        ('bmw_braze_objects_total{instance="w1", result="held"}', "0+10x60"),
        ('bmw_braze_objects_total{instance="w1", result="sent"}', "0+10x10 100x50"),  # sends stop at 10m
    ]
    checks = [
        ("10m", "BmwBrazeWritesHeld", []),  # held, but sent too
        ("20m", "BmwBrazeWritesHeld", []),  # pending: for 15m
        ("45m", "BmwBrazeWritesHeld", [{"severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)


def test_a_template_catalogue_not_synced_for_three_hours_fires_per_page(tmp_path: Path) -> None:
    series = [
        # page 111's last sync was at 0; page 222 syncs every hour; two intake replicas report both
        ('bmw_template_catalogue_synced_timestamp_seconds{instance="a", page_id="111"}', "0x300"),
        ('bmw_template_catalogue_synced_timestamp_seconds{instance="b", page_id="111"}', "0x300"),
        (
            'bmw_template_catalogue_synced_timestamp_seconds{instance="a", page_id="222"}',
            "0x59 3600x59 7200x59 10800x59 14400x59",
        ),
    ]
    checks = [
        ("150m", "BmwTemplateCatalogueStale", []),
        ("190m", "BmwTemplateCatalogueStale", []),  # stale since 180m: pending, for 15m
        ("200m", "BmwTemplateCatalogueStale", [{"page_id": "111", "severity": "warning"}]),
    ]
    _run(tmp_path, series, checks)


def test_new_dead_letters_fire_and_a_replay_does_not(tmp_path: Path) -> None:
    series = [
        ('bmw_dead_letters{instance="a"}', "0x10 5x10 0x40"),  # 5 dead at 10m, replayed at 20m
        ('bmw_dead_letters{instance="b"}', "0x10 5x10 0x40"),
    ]
    checks = [
        ("5m", "BmwDeadLettersGrowing", []),
        ("12m", "BmwDeadLettersGrowing", [{"severity": "warning"}]),
        ("50m", "BmwDeadLettersGrowing", []),
    ]
    _run(tmp_path, series, checks)


def test_an_old_backlog_fires_per_shard(tmp_path: Path) -> None:
    series = [
        ('bmw_oldest_open_age_seconds{instance="a", shard="0"}', "0x60"),
        ('bmw_oldest_open_age_seconds{instance="a", shard="1"}', "0+60x60"),  # ages a minute a minute
    ]
    checks = [
        ("35m", "BmwBacklogOld", []),  # over 1800 s since 30m, for: 10m
        ("45m", "BmwBacklogOld", [{"shard": "1", "severity": "warning"}]),
        ("45m", "BmwBacklogVeryOld", []),
    ]
    _run(tmp_path, series, checks)


# ---- Alertmanager's inhibitions ------------------------------------------------------------------

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    for text in matchers:
        found = _MATCHER.match(text)
        assert found, f"matcher not understood here: {text}"
        name, op, value = found.groups()
        have = labels.get(name, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def inhibited(target: dict[str, str], firing: list[dict[str, str]]) -> bool:
    """Whether Alertmanager (alertmanager.yml's inhibit_rules) mutes ``target`` while ``firing`` fire."""
    rules: list[dict[str, Any]] = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")["inhibit_rules"]
    for rule in rules:
        if not _matches(rule["target_matchers"], target):
            continue
        for source in firing:
            if source is target or not _matches(rule["source_matchers"], source):
                continue
            if all(source.get(name, "") == target.get(name, "") for name in rule.get("equal", [])):
                return True
    return False


def test_one_shards_outage_silences_its_own_backlog_only() -> None:
    down_1 = {"alertname": "BmwRedisDown", "shard": "1", "severity": "critical"}
    backlog_0 = {"alertname": "BmwBacklogOld", "shard": "0", "severity": "warning"}
    backlog_1 = {"alertname": "BmwBacklogOld", "shard": "1", "severity": "warning"}
    queue_1 = {"alertname": "BmwQueueNotDraining", "shard": "1", "severity": "warning"}
    assert inhibited(backlog_1, [down_1])
    assert inhibited(queue_1, [down_1])
    assert not inhibited(backlog_0, [down_1]), "shard 1's Redis does not explain shard 0's backlog"
    no_worker_1 = {"alertname": "BmwShardWithoutWorker", "shard": "1", "severity": "critical"}
    assert inhibited(queue_1, [no_worker_1])
    assert not inhibited(backlog_0, [no_worker_1])


def test_one_redis_and_no_worker_silence_the_backlog() -> None:
    backlog = {"alertname": "BmwBacklogVeryOld", "severity": "critical"}
    assert inhibited(backlog, [{"alertname": "BmwRedisDown", "severity": "critical"}])
    assert inhibited(backlog, [{"alertname": "BmwNoWorker", "severity": "critical"}])
    backlog_0 = {"alertname": "BmwBacklogOld", "shard": "0", "severity": "warning"}
    assert inhibited(backlog_0, [{"alertname": "BmwNoWorker", "severity": "critical"}])
    # and nothing mutes the alerts that are the cause
    assert not inhibited({"alertname": "BmwRedisDown", "severity": "critical"}, [backlog, backlog_0])
    assert not inhibited({"alertname": "BmwFailureRatioHigh", "severity": "warning"}, [backlog])

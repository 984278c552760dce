"""The alert rules with REDIS_SHARDS, run by ``promtool test rules`` on synthetic series.

Every intake replica reports each shard's gauges with a ``shard`` label (worker/status.py). A
rule that took max() across all of them would hide one shard behind another: shard 1's Redis
down while shard 0's is up read as up, one shard full while the other has room read as fine.
Here two intake replicas report two shards: shard 1's Redis is down for a while, shard 0's is
at 95% of its maxmemory, shard 1 (once back) has no maxmemory and a queue that does not drain.
Each alert must fire for its shard, and only for it, and its summary must say which shard. The
same rules on one Redis (no label) still fire as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML ships no type information

from tests.deploy.test_prometheus import ALERTS, promtool

REPLICAS = ("intake-a", "intake-b")


def _series(name: str, shard: str | None, values: str) -> list[dict[str, str]]:
    label = f', shard="{shard}"' if shard is not None else ""
    return [{"series": f'{name}{{instance="{r}"{label}}}', "values": values} for r in REPLICAS]


def _alert(shard: str | None, summary: str, **extra: str) -> dict[str, Any]:
    labels = {"shard": shard} if shard is not None else {}
    return {"exp_labels": {**labels, **extra}, "exp_annotations": {"summary": summary}}


def _case(series: list[dict[str, str]], *checks: tuple[str, str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One promtool test: the input series and, per (eval time, alert), the alerts expected."""
    return {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": alerts} for t, name, alerts in checks
        ],
    }


def _run(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    # the rules' descriptions are not under test: promtool compares every annotation, so the test
    # loads a copy of the rules with the summaries alone
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    done = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


DOWN_1 = "Redis (shard 1) is unreachable: the intake answers 503 for its pages and its workers cannot claim deliveries"
DOWN = "Redis is unreachable: the intake answers 503 for its pages and its workers cannot claim deliveries"
FULL_0 = "Redis (shard 0) is at 95% of maxmemory: the intake refuses new messages for its pages"
NO_MAX_1 = "Redis (shard 1) has no maxmemory: set it (and keep maxmemory-policy noeviction)"
QUEUE_1 = "500 batches have waited in the queue (shard 1) for 10 minutes"
QUEUE = "500 batches have waited in the queue for 10 minutes"
NO_WORKER_1 = "No worker serves shard 1: its pages' messages are accepted and not sent"


def test_each_shard_alerts_on_its_own(tmp_path: Path) -> None:
    gib = 1024**3
    series = [
        *_series("bmw_redis_up", "0", "1x60"),
        *_series("bmw_redis_up", "1", "0x10 1x50"),  # shard 1 down for the first 10 minutes
        *_series("bmw_redis_used_memory_bytes", "0", f"{int(0.95 * gib)}x60"),
        *_series("bmw_redis_maxmemory_bytes", "0", f"{gib}x60"),
        *_series("bmw_redis_used_memory_bytes", "1", f"_x10 {int(0.1 * gib)}x50"),
        *_series("bmw_redis_maxmemory_bytes", "1", "_x10 0x50"),  # no maxmemory on shard 1
        *_series("bmw_queue_depth", "0", "0x60"),
        *_series("bmw_queue_depth", "1", "_x10 500x50"),
    ]
    checks = [
        ("5m", "BmwRedisDown", [_alert("1", DOWN_1, severity="critical")]),
        ("30m", "BmwRedisDown", []),
        ("5m", "BmwRedisMemoryFull", [_alert("0", FULL_0, severity="critical")]),
        ("50m", "BmwRedisNoMaxmemory", [_alert("1", NO_MAX_1, severity="warning")]),
        ("30m", "BmwQueueNotDraining", [_alert("1", QUEUE_1, severity="warning")]),
    ]
    _run(tmp_path, [_case(series, *checks)])


def test_one_redis_still_alerts_without_a_shard_label(tmp_path: Path) -> None:
    series = [*_series("bmw_redis_up", None, "0x10"), *_series("bmw_queue_depth", None, "500x30")]
    checks = [
        ("5m", "BmwRedisDown", [_alert(None, DOWN, severity="critical")]),
        ("20m", "BmwQueueNotDraining", [_alert(None, QUEUE, severity="warning")]),
    ]
    _run(tmp_path, [_case(series, *checks)])


def _worker(shard: str, values: str) -> dict[str, str]:
    return {
        "series": f'bmw_worker_shard{{job="worker", instance="w{shard}", shard="{shard}"}}',
        "values": values,
    }


def test_a_shard_without_a_worker_alerts_while_the_others_have_theirs(tmp_path: Path) -> None:
    """Shard 1's workers are missing for the first 20 minutes (a Deployment not created), then
    start: BmwShardWithoutWorker fires for shard 1 alone and clears. BmwNoWorker (any worker at
    all) cannot see this: shard 0's workers are up throughout. With one Redis: nothing to say."""
    series = [
        *_series("bmw_redis_up", "0", "1x40"),
        *_series("bmw_redis_up", "1", "1x40"),
        _worker("0", "1x40"),
        _worker("1", "_x20 1x20"),
    ]
    checks = [
        ("3m", "BmwShardWithoutWorker", []),  # for: 5m
        ("10m", "BmwShardWithoutWorker", [_alert("1", NO_WORKER_1, severity="critical")]),
        ("30m", "BmwShardWithoutWorker", []),
    ]
    one_redis = _case(_series("bmw_redis_up", None, "1x20"), ("15m", "BmwShardWithoutWorker", []))
    _run(tmp_path, [_case(series, *checks), one_redis])


OLD_1 = "Oldest open delivery (shard 1) is 2h 15m 0s old"
VERY_OLD_1 = "Oldest open delivery (shard 1) is 2h 15m 0s old; messages near MESSAGE_TTL will expire"
VERY_OLD = "Oldest open delivery is 2h 15m 0s old; messages near MESSAGE_TTL will expire"


def test_the_backlog_alerts_name_their_shard(tmp_path: Path) -> None:
    """Shard 1's oldest delivery ages a minute a minute while shard 0's is fresh: the warning and
    the critical backlog alert both say which shard (the critical one said none before)."""
    series = [
        *_series("bmw_oldest_open_age_seconds", "0", "0x140"),
        *_series("bmw_oldest_open_age_seconds", "1", "0+60x140"),
    ]
    checks = [
        ("135m", "BmwBacklogOld", [_alert("1", OLD_1, severity="warning")]),
        ("135m", "BmwBacklogVeryOld", [_alert("1", VERY_OLD_1, severity="critical")]),
    ]
    one_redis = _case(
        _series("bmw_oldest_open_age_seconds", None, "0+60x140"),
        ("135m", "BmwBacklogVeryOld", [_alert(None, VERY_OLD, severity="critical")]),
    )
    _run(tmp_path, [_case(series, *checks), one_redis])


def test_every_rule_kept_per_shard_names_the_shard() -> None:
    """A rule that keeps the shard label (`by (shard)`) says which shard in its summary, so a
    page names the shard to look at (with one Redis: the `if` leaves it out)."""
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    per_shard = [r for g in rules["groups"] for r in g["rules"] if "by (shard)" in r["expr"]]
    assert len(per_shard) >= 10
    silent = [r["alert"] for r in per_shard if "$labels.shard" not in r["annotations"]["summary"]]
    assert not silent, f"name the shard in the summary: {silent}"

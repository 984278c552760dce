"""Prometheus config, alert rules and the Grafana dashboard, checked against the real service.

* ``promtool check config|rules`` on deploy/prometheus (and on the Kubernetes scrape config,
  adapted: Debian's Prometheus is built without Kubernetes discovery).
* A live run: real redis-server, intake, worker and sandbox (tests/conftest.py), a few messages
  (one failing with Graph error 551), then a real Prometheus on a free loopback port scraping the
  intake and the worker every second *through the Kubernetes relabelling of
  deploy/k8s/prometheus-scrape.yml* (file discovery hands it the same ``__meta_kubernetes_*``
  labels a pod would have), with deploy/prometheus/alerts.yml loaded. Then every dashboard query
  and every alert expression is run through the HTTP API: each must be valid, and every metric it
  reads must be one the intake or the worker actually exports (their live /metrics).

Without prometheus/promtool the tests skip locally and fail in CI (``./scripts/install-test-deps``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proc, RedisServer, Sandbox, Stack, base_env, free_port, wait_port, wait_until
from tests.deploy.common import (
    COMPOSE_FILE,
    DASHBOARD,
    K8S,
    K8S_SHARDS,
    PROMETHEUS_DIR,
    dockerfile_instructions,
    exec_form,
    load_yaml,
    load_yaml_all,
    require_tool,
)
from tests.deploy.promql import metric_names, selector_labels

ALERTS = PROMETHEUS_DIR / "alerts.yml"
#: Grafana's interval variables, replaced by a value valid in PromQL.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
#: Series Prometheus adds itself.
SYNTHETIC = {"up", "ALERTS", "ALERTS_FOR_STATE"}
SEVERITIES = {"warning", "critical"}
#: Gauges the intake reports per shard that count something: their totals are sums over shards.
SHARD_COUNTS = (
    "bmw_queue_depth",
    "bmw_dead_letters",
    "bmw_scheduled",
    "bmw_open_deliveries",
    "bmw_pages_paused",
    "bmw_in_flight_batches",
)
NAMESPACE = "braze-messenger-worker"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool")["promtool"]
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variables -> a value for querying: `.*` for query variables (they sit in =~)."""
    values: dict[str, str] = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = ".*"
    return values


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = dashboard_variables(dashboard)
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_INTERVALS.items():
                expr = expr.replace(name, value)
            for name, value in variables.items():
                expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {expr}"
            out.append((panel["title"], expr))
    return out


# ---- static checks ------------------------------------------------------------------------------


def test_promtool_accepts_the_compose_config() -> None:
    done = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(alert_rules())} rules found" in done.stdout


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert "for" in rule, f"{rule['alert']}: give it a `for:`"
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
    exprs = " ".join(rule["expr"] for rule in rules)
    for needed in (
        "bmw_oldest_open_age_seconds",
        "bmw_deliveries_total",
        'bmw_page_paused{reason="token_invalid"}',
        "bmw_dead_letters",
        'up{job="worker"}',
        "bmw_redis_up",
        "bmw_possible_duplicates_total",
        'bmw_braze_objects_total{result="held"}',
    ):
        assert needed in exprs, f"no alert on {needed}"


def test_dashboard_shape() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "braze-messenger-worker"
    panels = dashboard["panels"]
    assert panels[0]["type"] == "row"
    assert panels[0]["title"] == "Health"
    health = []
    for panel in panels[1:]:
        if panel["type"] == "row":
            break
        health.append(" ".join(t["expr"] for t in panel["targets"]))
    for metric in (
        'outcome="sent"',
        'outcome=~"failed|expired|dead"',
        "bmw_oldest_open_age_seconds",
        "bmw_queue_depth",
        "bmw_pages_paused",
        "bmw_dead_letters",
    ):
        assert any(metric in h for h in health), f"health row lacks {metric}"
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    everything = " ".join(expr for _title, expr in dashboard_queries())
    for metric in (
        "bmw_graph_request_seconds_bucket",
        "bmw_accept_to_send_seconds_bucket",
        "bmw_page_effective_rate",
        "bmw_page_rate_limit",
        "bmw_pacing_deferrals_total",
        "bmw_retries_scheduled_total",
        "bmw_intake_requests_total",
        "bmw_intake_enqueue_seconds_bucket",
        "bmw_possible_duplicates_total",
        "bmw_braze_objects_total",  # by result: sent, dropped, held
        "process_cpu_seconds_total",  # worker CPU
        "process_resident_memory_bytes",  # worker memory
    ):
        assert metric in everything, f"no panel shows {metric}"
    titles = {title for title, _expr in dashboard_queries()}
    assert {"Failures by class per page", "Dead letters over time"} <= titles
    for _title, expr in dashboard_queries():
        for gauge in ("bmw_queue_depth", "bmw_dead_letters", "bmw_oldest_open_age_seconds", "bmw_scheduled"):
            if re.search(rf"\b{gauge}\b", expr):
                assert re.search(rf"max(\s+by\s*\([^)]*\))?\s*\(\s*{gauge}\b", expr), (
                    f"use max() over {gauge}: every intake replica reports it ({expr})"
                )
        # a count per shard (REDIS_SHARDS: label `shard`) is summed over the shards, never max()ed
        # across them: max() alone would show the biggest shard's queue as the whole
        for gauge in SHARD_COUNTS:
            if re.search(rf"\b{gauge}\b", expr) and not re.search(r"max\s+by\s*\(\s*shard\s*\)", expr):
                pytest.fail(f"a total of {gauge} is sum(max by (shard) (...)): {expr}")
    health_exprs = " ".join(health)
    assert "min(max by (shard) (bmw_redis_up))" in health_exprs, "the Redis stat: up only when every shard is"


def test_grafana_provisioning() -> None:
    datasource = load_yaml(PROMETHEUS_DIR.parent / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    providers = load_yaml(PROMETHEUS_DIR.parent / "grafana/provisioning/dashboards/dashboards.yml")
    (provider,) = providers["providers"]
    compose = load_yaml(COMPOSE_FILE)
    mounts = [str(v) for v in compose["services"]["grafana"]["volumes"]]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


def test_promql_reader() -> None:
    expr = 'sum by (le) (rate(a_bucket{x="}", y=~"b|c"}[5m])) / on (job) group_left max(b) offset 5m and up{job="w"} > 1e3'
    assert metric_names(expr) == {"a_bucket", "b", "up"}
    assert selector_labels(expr) == {"a_bucket": {"x", "y"}, "up": {"job"}}
    assert metric_names('absent(up{job="worker"} == 1)') == {"up"}
    assert metric_names("count by (version) (bmw_build_info)") == {"bmw_build_info"}


# ---- the live run -------------------------------------------------------------------------------


@dataclass
class Live:
    stack: Stack
    metrics_port: int
    prometheus: str
    exported: set[str]
    series_labels: dict[str, set[str]] = field(default_factory=dict)
    final: dict[str, dict[str, str]] = field(default_factory=dict)

    def query(self, expr: str) -> dict[str, Any]:
        resp = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = resp.json()
        assert resp.status_code == 200, f"{expr}: {body.get('error')}"
        assert body["status"] == "success", f"{expr}: {body}"
        return body

    def labels_of(self, metric: str) -> set[str]:
        if metric not in self.series_labels:
            resp = httpx.get(f"{self.prometheus}/api/v1/series", params={"match[]": metric}, timeout=10)
            resp.raise_for_status()
            self.series_labels[metric] = {key for series in resp.json()["data"] for key in series}
        return self.series_labels[metric]


def exported_names(text: str) -> set[str]:
    """Metric names a /metrics body exports (TYPE lines, histogram series, every sample)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def kubernetes_config(tmp_path: Path, targets_file: Path) -> Path:
    """deploy/k8s/prometheus-scrape.yml with pod discovery swapped for a file of fake pods."""
    config = load_yaml(K8S / "prometheus-scrape.yml")
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    config["rule_files"] = [str(ALERTS)]
    for job in config["scrape_configs"]:
        job.pop("kubernetes_sd_configs")
        job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
    return path


def fake_pods(intake_metrics_port: int, metrics_port: int) -> list[dict[str, Any]]:
    """What Kubernetes discovery would report for one intake pod and two worker pods on loopback
    (shard 0's, deploy/k8s/worker.yaml, and shard 1's, deploy/k8s-shards/worker-1.yaml: the same
    live worker, scraped twice)."""
    pods = []
    for doc in load_yaml_all(
        (K8S / "intake.yaml").read_text(encoding="utf-8")
        + "\n---\n"
        + (K8S / "worker.yaml").read_text(encoding="utf-8")
        + "\n---\n"
        + (K8S_SHARDS / "worker-1.yaml").read_text(encoding="utf-8")
    ):
        if doc["kind"] != "Deployment":
            continue
        template = doc["spec"]["template"]["metadata"]
        component = template["labels"]["app.kubernetes.io/component"]
        notes = dict(template["annotations"])
        # The processes listen on random loopback ports: the annotation carries the live one, and
        # __address__ a wrong port (as a pod's first containerPort may be) the relabelling must replace.
        notes["prometheus.io/port"] = str(intake_metrics_port if component == "intake" else metrics_port)
        labels = {
            "__meta_kubernetes_namespace": NAMESPACE,
            "__meta_kubernetes_pod_name": f"{component}-0",
            "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
        }
        for key, value in notes.items():
            labels["__meta_kubernetes_pod_annotation_" + re.sub(r"[^A-Za-z0-9_]", "_", key)] = value
        pods.append({"targets": ["127.0.0.1:1"], "labels": labels})
    return pods


def _messages(stack: Stack) -> dict[str, dict[str, str]]:
    """Three messages that are sent and one that Graph refuses (551); psid -> final record."""
    ids: dict[str, str] = {}
    for psid in ("deploy-ok-1", "deploy-ok-2", "deploy-ok-3", "err-551-x"):
        body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hello"}}
        resp = stack.post(body)
        assert resp.status_code == 202, resp.text
        ids[psid] = resp.json()["delivery_id"]
    stack.post(b"{not json")  # an intake 400, so that a status other than 202 exists
    records = stack.wait_final(list(ids.values()), timeout=30)
    return {psid: records[delivery_id] for psid, delivery_id in ids.items()}


@pytest.fixture(scope="module")
def live(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    tools = require_tool("prometheus", "promtool")
    tmp_path = tmp_path_factory.mktemp("deploy-live")
    metrics_port = free_port()
    stack = Stack(
        base_env(redis_server.url, sandbox.url, METRICS_PORT=str(metrics_port)),
        sandbox,
        redis_server.url,
        tmp_path / "logs",
    )
    prometheus: Proc | None = None
    try:
        stack.start_worker()
        stack.start_intake()
        assert wait_port(metrics_port), "the worker's /metrics server did not start"
        final = _messages(stack)

        exported: set[str] = set()
        for url in (stack.intake_metrics_url, f"http://127.0.0.1:{metrics_port}/metrics"):
            resp = httpx.get(url, timeout=10)
            resp.raise_for_status()
            exported |= exported_names(resp.text)

        targets = tmp_path / "pods.json"
        targets.write_text(json.dumps(fake_pods(stack.intake_metrics_port, metrics_port)), encoding="utf-8")
        config = kubernetes_config(tmp_path, targets)
        checked = promtool("check", "config", str(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr

        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [
                    tools["prometheus"],
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        prometheus = Proc("prometheus", proc, log)
        url = f"http://127.0.0.1:{port}"
        assert wait_port(port, 20), prometheus.tail()

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, 20, 0.2), prometheus.tail()
        result = Live(stack, metrics_port, url, exported, final=final)

        def scraped() -> bool:
            healthy = {(t["labels"].get("job"), t["health"]) for t in _targets(result)}
            return healthy == {("intake", "up"), ("worker", "up")} and all(
                result.query(f'count({{job="{job}", __name__=~"bmw_.+"}})')["data"]["result"]
                for job in ("intake", "worker")
            )

        assert wait_until(scraped, 20, 0.2), (_targets(result), prometheus.tail())
        yield result
    finally:
        if prometheus is not None:
            prometheus.stop(timeout=15)
        stack.stop()


def _targets(live: Live) -> list[dict[str, Any]]:
    resp = httpx.get(f"{live.prometheus}/api/v1/targets", timeout=5)
    resp.raise_for_status()
    active: list[dict[str, Any]] = resp.json()["data"]["activeTargets"]
    return active


def test_kubernetes_relabelling_scrapes_both_jobs(live: Live) -> None:
    targets = _targets(live)
    by_pod = {t["labels"]["pod"]: t for t in targets}
    assert {pod: t["labels"]["job"] for pod, t in by_pod.items()} == {
        "intake-0": "intake",
        "worker-0": "worker",
        "worker-1-0": "worker",  # a shard's workers are the worker job too (deploy/k8s-shards)
    }, "jobs are named after app.kubernetes.io/component"
    assert by_pod["worker-0"]["scrapeUrl"] == f"http://127.0.0.1:{live.metrics_port}/metrics"
    assert by_pod["intake-0"]["scrapeUrl"] == live.stack.intake_metrics_url  # not the public port
    for target in targets:
        assert target["health"] == "up"
        assert target["labels"]["namespace"] == NAMESPACE
        assert target["labels"]["pod"].startswith(target["labels"]["job"])


def test_service_metrics_arrive(live: Live) -> None:
    assert {live.final[f"deploy-ok-{i}"]["status"] for i in (1, 2, 3)} == {"sent"}
    outcome = live.final["err-551-x"]["status"]
    assert outcome in ("failed", "dead"), live.final["err-551-x"]
    result = live.query(f'bmw_deliveries_total{{outcome="{outcome}", error_code="551"}}')["data"]["result"]
    assert result, "the Graph 551 failure is not in bmw_deliveries_total"
    sent = live.query('sum(bmw_deliveries_total{outcome="sent"})')["data"]["result"]
    assert float(sent[0]["value"][1]) >= 3
    assert live.query("max(bmw_redis_up)")["data"]["result"][0]["value"][1] == "1"


def _check_expression(live: Live, where: str, expr: str) -> None:
    live.query(expr)  # valid PromQL, evaluated by Prometheus
    assert metric_names(expr), f"{where}: no metric found in {expr}"
    unknown = sorted(metric_names(expr) - live.exported - SYNTHETIC)
    assert not unknown, f"{where}: {expr}\n  reads metrics the service does not export: {unknown}"
    for metric, labels in selector_labels(expr).items():
        seen = live.labels_of(metric) if metric else set()
        if seen:  # a label only checkable once the metric has series
            assert labels <= seen, f"{where}: {metric} has no label(s) {sorted(labels - seen)}"


def test_every_dashboard_query_is_valid_and_uses_exported_metrics(live: Live) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    for title, expr in queries:
        _check_expression(live, f"panel {title!r}", expr)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["definition"])
        assert match, var["definition"]
        assert match.group(2) in live.labels_of(match.group(1)), var["definition"]


def test_every_alert_expression_is_valid_and_uses_exported_metrics(live: Live) -> None:
    for rule in alert_rules():
        _check_expression(live, f"alert {rule['alert']}", rule["expr"])


def test_alert_rules_evaluate_without_errors(live: Live) -> None:
    def rules() -> list[dict[str, Any]]:
        resp = httpx.get(f"{live.prometheus}/api/v1/rules", timeout=5)
        resp.raise_for_status()
        return [r for g in resp.json()["data"]["groups"] for r in g["rules"]]

    assert wait_until(lambda: all(r["health"] != "unknown" for r in rules()), 15, 0.2), rules()
    loaded = rules()
    assert {r["name"] for r in loaded} == {r["alert"] for r in alert_rules()}
    bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, bad
    # the stack is healthy: no critical alert about workers, intakes or Redis is pending or firing
    active = {r["name"] for r in loaded if r["state"] != "inactive"}
    assert not active & {"BmwNoWorker", "BmwNoIntake", "BmwRedisDown"}, active


def _health_snippets() -> dict[str, str]:
    compose = load_yaml(COMPOSE_FILE)["services"]
    snippets = {name: compose[name]["healthcheck"]["test"][3] for name in ("intake", "worker")}
    (healthcheck,) = [i for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK"]
    snippets["image"] = exec_form(healthcheck)[2]
    return snippets


def test_container_health_checks_pass_against_the_live_processes(live: Live) -> None:
    """The Python one-liners of the image and compose health checks, pointed at the live ports."""
    ports = {"8080": str(live.stack.intake_port), "9808": str(live.metrics_port)}
    for name, code in _health_snippets().items():
        local = re.sub(r"127\.0\.0\.1:(8080|9808)/", lambda m: f"127.0.0.1:{ports[m.group(1)]}/", code)
        assert local != code, name
        done = subprocess.run(
            [sys.executable, "-c", local], capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, f"{name} health check failed: {done.stderr}"
    # and it fails when nothing listens
    dead = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{free_port()}/", _health_snippets()["intake"])
    done = subprocess.run(
        [sys.executable, "-c", dead], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0

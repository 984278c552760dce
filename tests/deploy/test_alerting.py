"""Alerts reach someone, and KEDA reads the Redis that REDIS_URL names.

* compose runs Alertmanager, Prometheus's ``alerting:`` points at it, and its routes name receivers
  that exist; the prometheus-operator kit (deploy/k8s/monitoring) carries alerts.yml's groups
  unchanged and scrapes the pods' ``metrics`` port;
* the Redis memory and backlog alerts exist; the backlog age alert reads the gauge that leaves
  parked deliveries out;
* KEDA: TLS and the password come from the Secret (nothing hard-coded), with a fallback count,
  and a Sentinel variant.
"""

from __future__ import annotations

from typing import Any

from tests.deploy.common import COMPOSE_FILE, DEPLOY, K8S, PROMETHEUS_DIR, load_yaml, load_yaml_all


def _docs(path: str) -> list[dict[str, Any]]:
    return load_yaml_all((K8S / path).read_text(encoding="utf-8"))


def test_prometheus_sends_alerts_to_the_compose_alertmanager() -> None:
    compose = load_yaml(COMPOSE_FILE)["services"]
    assert "alertmanager" in compose
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in compose["alertmanager"]["volumes"]
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_alertmanager_routes_to_receivers_that_exist() -> None:
    config = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")
    receivers = {r["name"] for r in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert all(r["receiver"] in receivers for r in routes)
    assert all(r.get("webhook_configs") or r.get("slack_configs") for r in config["receivers"])


def test_the_operator_kit_carries_the_same_rules() -> None:
    (rule,) = _docs("monitoring/prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == load_yaml(PROMETHEUS_DIR / "alerts.yml"), "copy alerts.yml's groups here"
    (monitor,) = _docs("monitoring/podmonitor.yaml")
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    kustomization = load_yaml(K8S / "monitoring" / "kustomization.yaml")
    assert set(kustomization["resources"]) == {"prometheusrule.yaml", "podmonitor.yaml"}


def test_memory_and_backlog_alerts() -> None:
    rules = {r["alert"]: r for g in load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"] for r in g["rules"]}
    assert "bmw_redis_maxmemory_bytes" in rules["BmwRedisMemoryHigh"]["expr"]
    assert "bmw_redis_used_memory_bytes" in rules["BmwRedisMemoryHigh"]["expr"]
    assert "predict_linear" in rules["BmwRedisFillsWithinAnHour"]["expr"]
    assert "bmw_open_deliveries" in rules["BmwBacklogGrowing"]["expr"]
    assert "BmwRedisNoMaxmemory" in rules
    redis = load_yaml(COMPOSE_FILE)["services"]["redis"]["command"]
    assert "--maxmemory" in redis
    assert redis[redis.index("--maxmemory-policy") + 1] == "noeviction"


def test_keda_reads_tls_and_password_from_the_secret() -> None:
    docs = {d["kind"]: d for d in _docs("worker-keda.yaml")}
    meta = docs["ScaledObject"]["spec"]["triggers"][0]["metadata"]
    assert "enableTLS" not in meta, "TLS comes from the Secret (tls), not a hard-coded value"
    params = {r["parameter"]: r["key"] for r in docs["TriggerAuthentication"]["spec"]["secretTargetRef"]}
    assert {"address", "password", "tls"} <= set(params)
    fallback = docs["ScaledObject"]["spec"]["fallback"]
    assert fallback["replicas"] >= docs["ScaledObject"]["spec"]["minReplicaCount"]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in _docs("secret.example.yaml")}
    assert set(params.values()) <= set(secrets["messenger-worker-keda-redis"])
    sentinel = {d["kind"]: d for d in _docs("worker-keda-sentinel.yaml")}
    trigger = sentinel["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["type"] == "redis-sentinel"
    assert trigger["metadata"]["listName"] == meta["listName"]

"""deploy/k8s-shards: the Kubernetes kit with two shards renders, is valid, and stays the base.

Rendered with ``kubectl kustomize`` or ``kustomize build`` when one is installed, else by loading
the base directly (tests/deploy/test_k8s.py) plus worker-1.yaml and applying the overlay's one
patch (shard 0's SHARD_INDEX) by hand; both ways must give the same objects. Then: every core
object is valid Kubernetes; shard 1's worker is the base worker but for its name, its component
label and SHARD_INDEX (so a change to worker.yaml must be made there too); no Deployment's
selector takes another's pods; each shard's KEDA scaler reads its own Redis through a Secret of
secret.example.yaml; the settings accept both workers' SHARD_INDEX; Prometheus names both the
`worker` job.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from tests.deploy.common import K8S, K8S_SHARDS, load_yaml, load_yaml_all
from tests.deploy.test_k8s import (
    CRD_GROUPS,
    K8S_VERSION,
    NAMESPACE,
    container,
    find,
    load_directly,
    one,
    render_with_tool,
    secrets_example,
    selects,
)


def render_directly() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S_SHARDS / "kustomization.yaml")
    assert kustomization["resources"] == ["../k8s", "worker-1.yaml"]
    assert kustomization["images"] == load_yaml(K8S / "kustomization.yaml")["images"], "the same image"
    objects = load_directly()
    for doc in load_yaml_all((K8S_SHARDS / "worker-1.yaml").read_text(encoding="utf-8")):
        doc["metadata"]["namespace"] = kustomization["namespace"]
        objects.append(doc)
    (patch,) = kustomization["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": "worker"}
    (op,) = load_yaml_all(patch["patch"])[0]
    assert (op["op"], op["path"]) == ("add", "/spec/template/spec/containers/0/env")
    container(one(objects, "Deployment", "worker"))["env"] = op["value"]
    return objects


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render_with_tool(K8S_SHARDS) or render_directly()


def _key(o: dict[str, Any]) -> tuple[str, str]:
    return (o["kind"], o["metadata"]["name"])


def test_the_direct_rendering_matches_kustomize(objects: list[dict[str, Any]]) -> None:
    direct = render_directly()
    assert sorted(map(_key, direct)) == sorted(map(_key, objects))
    for name in ("worker", "worker-1"):
        assert (
            container(one(direct, "Deployment", name))["env"]
            == container(one(objects, "Deployment", name))["env"]
        )


def test_two_shards_of_workers_are_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    assert {
        ("Deployment", "worker-1"),
        ("PodDisruptionBudget", "worker-1"),
        ("ScaledObject", "worker-1"),
    } <= set(map(_key, objects))
    for obj in objects:
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == NAMESPACE
        if not obj["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_shard_1s_worker_is_the_base_worker_but_its_name_label_and_shard(
    objects: list[dict[str, Any]],
) -> None:
    base = copy.deepcopy(one(objects, "Deployment", "worker"))
    shard = copy.deepcopy(one(objects, "Deployment", "worker-1"))
    assert container(base)["env"] == [{"name": "SHARD_INDEX", "value": "0"}]
    assert container(shard)["env"] == [{"name": "SHARD_INDEX", "value": "1"}]
    for deployment, name, component in ((base, "worker", "worker"), (shard, "worker-1", "worker-1")):
        assert deployment["metadata"]["name"] == name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        del container(deployment)["env"]
        deployment["metadata"]["name"] = "x"
        for where in (
            deployment["metadata"]["labels"],
            deployment["spec"]["selector"]["matchLabels"],
            deployment["spec"]["template"]["metadata"]["labels"],
        ):
            where["app.kubernetes.io/component"] = "x"
    assert shard == base, "copy the change of deploy/k8s/worker.yaml to deploy/k8s-shards/worker-1.yaml"
    budget, budget_1 = (
        one(objects, "PodDisruptionBudget", "worker"),
        one(objects, "PodDisruptionBudget", "worker-1"),
    )
    assert budget["spec"]["maxUnavailable"] == budget_1["spec"]["maxUnavailable"]
    assert selects(
        budget_1["spec"]["selector"]["matchLabels"],
        one(objects, "Deployment", "worker-1")["spec"]["template"]["metadata"]["labels"],
    )


def test_no_deployment_takes_anothers_pods(objects: list[dict[str, Any]]) -> None:
    deployments = find(objects, "Deployment")
    for owner in deployments:
        selector = owner["spec"]["selector"]["matchLabels"]
        for other in deployments:
            if other is not owner:
                assert not selects(selector, other["spec"]["template"]["metadata"]["labels"]), (
                    f"{owner['metadata']['name']} would select {other['metadata']['name']}'s pods"
                )


def test_each_shards_scaler_reads_its_own_redis(objects: list[dict[str, Any]]) -> None:
    secrets = secrets_example()
    read: dict[str, str] = {}
    for scaled in find(objects, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]["name"]
        one(objects, "Deployment", target)
        (trigger,) = scaled["spec"]["triggers"]
        auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (secret,) = {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
        assert all(ref["key"] in secrets[secret] for ref in auth["spec"]["secretTargetRef"])
        read[target] = secret
    assert read == {"worker": "messenger-worker-keda-redis", "worker-1": "messenger-worker-keda-redis-1"}
    base, shard = (
        one(objects, "ScaledObject", "worker")["spec"],
        one(objects, "ScaledObject", "worker-1")["spec"],
    )
    assert shard["triggers"][0]["metadata"] == base["triggers"][0]["metadata"]  # the same queue name


def test_the_settings_accept_both_workers(objects: list[dict[str, Any]]) -> None:
    from worker.config import Settings

    urls = ["redis://redis-0:6379/0", "redis://redis-1:6379/0"]
    for name, index in (("worker", 0), ("worker-1", 1)):
        (env,) = container(one(objects, "Deployment", name))["env"]
        settings = Settings(redis_shards=urls, shard_index=int(env["value"]), _env_file=None)
        assert settings.shard_index == index
        assert settings.redis_url == urls[index]


def test_prometheus_names_every_shards_workers_the_worker_job() -> None:
    scrape = load_yaml(K8S / "prometheus-scrape.yml")["scrape_configs"][0]["relabel_configs"]
    (job,) = [r for r in scrape if r.get("target_label") == "job"]
    monitor = load_yaml(K8S / "monitoring" / "podmonitor.yaml")["spec"]["podMetricsEndpoints"][0]
    (job_op,) = [r for r in monitor["relabelings"] if r["targetLabel"] == "job"]
    for regex, replacement in ((job["regex"], job["replacement"]), (job_op["regex"], job_op["replacement"])):
        # Prometheus anchors relabelling regexes at both ends
        for component, expected in (
            ("intake", "intake"),
            ("worker", "worker"),
            ("worker-1", "worker"),
            ("worker-12", "worker"),
        ):
            match = re.fullmatch(regex, component)
            assert match is not None
            assert match.expand(replacement.replace("$1", r"\1")) == expected

"""deploy/k8s: the kustomization renders, every core object is valid Kubernetes, and it fits the app.

Rendered with ``kubectl kustomize`` or ``kustomize build`` when one is installed, else by loading
the kustomization's resources directly (it uses no generators, only the namespace). Core objects
are validated with kubernetes-validate (strict: unknown fields are errors) for a supported
Kubernetes version; KEDA's CRDs have no schema there and are checked by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.common import (
    K8S,
    ROOT,
    load_yaml,
    load_yaml_all,
    make_settings,
    parse_cli,
    settings_env_names,
)

K8S_VERSION = "1.30.0"
NAMESPACE = "braze-messenger-worker"
CRD_GROUPS = ("keda.sh/",)


def render_with_tool(path: Path) -> list[dict[str, Any]] | None:
    """The kustomization at ``path`` rendered by kustomize or kubectl; None without either."""
    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if kustomize:
        argv = [kustomize, "build", str(path)]
    elif kubectl:
        argv = [kubectl, "kustomize", str(path)]
    else:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return load_yaml_all(done.stdout)


def render() -> list[dict[str, Any]]:
    return render_with_tool(K8S) or load_directly()


def load_directly() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert not kustomization.get("secretGenerator")
    assert not kustomization.get("configMapGenerator")
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        for doc in load_yaml_all((K8S / resource).read_text(encoding="utf-8")):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render()


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in ctr["ports"]}, port
        return port
    by_name = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    assert port in by_name, f"probe port {port} is not a named container port"
    return int(by_name[port])


def secrets_example() -> dict[str, dict[str, str]]:
    docs = load_yaml_all((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    return {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}


#: The Secrets of secret.example.yaml the processes read as environment variables (envFrom), split
#: by who reads them; the KEDA and page-token Secrets are not settings passed as variables.
APP_SECRETS = (
    "messenger-worker-secrets",
    "messenger-worker-intake-secrets",
    "messenger-worker-worker-secrets",
)


def app_secret_settings() -> dict[str, str]:
    """Every setting the app Secrets of the template carry (name -> placeholder), all of them."""
    secrets = secrets_example()
    merged: dict[str, str] = {}
    for name in APP_SECRETS:
        assert not set(secrets[name]) & set(merged), f"{name} repeats a key of another Secret"
        merged.update(secrets[name])
    return merged


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_renders_the_expected_objects(objects: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Namespace", NAMESPACE),
        ("ConfigMap", "messenger-worker-config"),
        ("Deployment", "intake"),
        ("Deployment", "worker"),
        ("Service", "intake"),
        ("HorizontalPodAutoscaler", "intake"),
        ("PodDisruptionBudget", "intake"),
        ("PodDisruptionBudget", "worker"),
        ("ScaledObject", "worker"),
        ("TriggerAuthentication", "worker-redis"),
    } <= kinds
    assert not find(objects, "Secret"), "secrets are created by hand from secret.example.yaml"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]


def test_core_objects_are_valid_kubernetes(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    for doc in load_yaml_all((K8S / "secret.example.yaml").read_text(encoding="utf-8")):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 11


def test_validation_is_not_vacuous() -> None:
    import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"A": "1"},
        "dataa": {},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_settings_keys_are_real(objects: list[dict[str, Any]]) -> None:
    fields = settings_env_names()
    config = one(objects, "ConfigMap", "messenger-worker-config")["data"]
    assert not set(config) - fields, f"not Settings fields: {sorted(set(config) - fields)}"
    secret = app_secret_settings()
    assert not set(secret) - fields, f"not Settings fields: {sorted(set(secret) - fields)}"
    assert {"REDIS_URL", "INTAKE_TOKENS"} <= set(secret)
    assert "PAGE_ACCESS_TOKENS" in config


def test_secret_template_placeholders_are_refused_at_start() -> None:
    """A Secret applied without filling it in must stop the service, not run with fake tokens."""
    from pydantic import ValidationError

    secret = app_secret_settings()
    for key in ("INTAKE_TOKENS", "APP_SECRET", "LINK_SECRET"):
        assert "<" in secret[key], f"{key} must be an obvious placeholder"
        with pytest.raises(ValidationError, match="placeholder"):
            make_settings({key.lower(): secret[key]})
    tokens = secrets_example()["messenger-worker-page-tokens"]["page-tokens.json"]
    with pytest.raises(ValidationError, match="placeholder"):
        make_settings({"page_access_tokens": tokens})
    from worker.config import check_service

    with pytest.raises(ValueError, match="RECIPIENT_HASH_SALT"):  # a service start refuses it
        check_service(make_settings({"recipient_hash_salt": secret["RECIPIENT_HASH_SALT"]}))


def test_env_sources_and_volumes_exist(objects: list[dict[str, Any]]) -> None:
    secrets = secrets_example()
    config = one(objects, "ConfigMap", "messenger-worker-config")["data"]
    for name in ("intake", "worker"):
        dep = one(objects, "Deployment", name)
        ctr = container(dep)
        for source in ctr["envFrom"]:
            if "configMapRef" in source:
                one(objects, "ConfigMap", source["configMapRef"]["name"])
            else:
                assert source["secretRef"]["name"] in secrets
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"]: m for m in ctr["volumeMounts"]}
        assert set(mounts) <= set(volumes)
        tokens = volumes["page-tokens"]["secret"]["secretName"]
        assert tokens in secrets
        assert "subPath" not in mounts["page-tokens"], "a subPath mount never sees a rotated token"
        (key,) = secrets[tokens]
        assert config["PAGE_ACCESS_TOKENS"] == f"{mounts['page-tokens']['mountPath']}/{key}"
        assert mounts["tmp"]["mountPath"] == "/tmp"


def test_commands_are_real_subcommands(objects: list[dict[str, Any]]) -> None:
    intake = parse_cli(container(one(objects, "Deployment", "intake"))["args"])
    assert (intake.command, intake.host, intake.port) == ("intake", "0.0.0.0", 8080)
    worker = parse_cli(container(one(objects, "Deployment", "worker"))["args"])
    assert worker.command == "worker"
    for name in ("intake", "worker"):
        assert "command" not in container(one(objects, "Deployment", name)), "keep the image's ENTRYPOINT"


def test_intake_probes_and_graceful_stop(objects: list[dict[str, Any]]) -> None:
    dep = one(objects, "Deployment", "intake")
    ctr = container(dep)
    ready, live = ctr["readinessProbe"]["httpGet"], ctr["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    assert port_number(ctr, ready["port"]) == port_number(ctr, live["port"]) == 8080
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 40
    pre_stop = ctr["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert grace >= int(pre_stop[1]) + 30, "preStop sleep + uvicorn's 30 s drain must fit in the grace period"


def test_worker_probes_and_graceful_stop(objects: list[dict[str, Any]]) -> None:
    from worker.config import Settings

    dep = one(objects, "Deployment", "worker")
    ctr = container(dep)
    config = one(objects, "ConfigMap", "messenger-worker-config")["data"]
    metrics_port = int(config["METRICS_PORT"])
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        get = ctr[probe]["httpGet"]
        assert get["path"] == path
        assert port_number(ctr, get["port"]) == metrics_port
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    read_timeout = float(
        config.get("GRAPH_READ_TIMEOUT", Settings.model_fields["graph_read_timeout"].default)
    )
    connect_timeout = Settings.model_fields["graph_connect_timeout"].default
    assert grace >= 60
    assert grace > read_timeout + connect_timeout + 30


def test_pods_are_hardened(objects: list[dict[str, Any]]) -> None:
    for name in ("intake", "worker"):
        pod = one(objects, "Deployment", name)["spec"]["template"]["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] != 0
        assert security["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        ctr = pod["containers"][0]
        assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
        assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
        assert ctr["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(ctr["resources"]["requests"])
        assert "memory" in ctr["resources"]["limits"]


def test_dockerfile_user_matches_run_as_user(objects: list[dict[str, Any]]) -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    uid, _, gid = users[-1].partition(":")
    for name in ("intake", "worker"):
        security = one(objects, "Deployment", name)["spec"]["template"]["spec"]["securityContext"]
        assert str(security["runAsUser"]) == uid
        assert str(security["runAsGroup"]) == gid


def test_prometheus_annotations_name_a_container_port(objects: list[dict[str, Any]]) -> None:
    for name in ("intake", "worker"):
        dep = one(objects, "Deployment", name)
        notes = dep["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/path"] == "/metrics"
        port_number(container(dep), int(notes["prometheus.io/port"]))
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert component == name, "prometheus-scrape.yml names the job after this label"


def test_selectors_match_pods(objects: list[dict[str, Any]]) -> None:
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in find(objects, "Deployment")
    }
    for dep in find(objects, "Deployment"):
        assert selects(dep["spec"]["selector"]["matchLabels"], pods[dep["metadata"]["name"]])
    for pdb in find(objects, "PodDisruptionBudget"):
        matched = [n for n, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert matched == [pdb["metadata"]["name"]], f"PDB {pdb['metadata']['name']} selects {matched}"
    service = one(objects, "Service", "intake")
    matched = [n for n, labels in pods.items() if selects(service["spec"]["selector"], labels)]
    assert matched == ["intake"]
    target = service["spec"]["ports"][0]["targetPort"]
    port_number(container(one(objects, "Deployment", "intake")), target)


def test_disruption_budgets_allow_drains(objects: list[dict[str, Any]]) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler", "intake")
    intake_pdb = one(objects, "PodDisruptionBudget", "intake")["spec"]
    assert intake_pdb["minAvailable"] < hpa["spec"]["minReplicas"]
    worker_pdb = one(objects, "PodDisruptionBudget", "worker")["spec"]
    assert worker_pdb.get("maxUnavailable", 0) >= 1, "one worker replica must still be drainable"


def test_intake_hpa(objects: list[dict[str, Any]]) -> None:
    hpa = one(objects, "HorizontalPodAutoscaler", "intake")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "intake"}
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(objects, "Deployment", "intake")["spec"], "the HPA owns replicas"


def test_keda_scales_the_worker_on_the_celery_queue(objects: list[dict[str, Any]]) -> None:
    from worker.config import Settings

    scaled = one(objects, "ScaledObject", "worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    one(objects, "Deployment", target["name"])
    assert target["name"] == "worker"
    assert spec["minReplicaCount"] >= 1, "the scheduler runs in the workers: never scale to zero"
    assert spec["maxReplicaCount"] > spec["minReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == Settings.model_fields["queue_name"].default
    assert int(meta["listLength"]) > 0
    assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secrets = secrets_example()
    params = set()
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]], ref
        params.add(ref["parameter"])
    assert "address" in params or "address" in meta
    assert "replicas" not in one(objects, "Deployment", "worker")["spec"], "KEDA owns replicas"


def test_prometheus_scrape_config_for_kubernetes() -> None:
    config = load_yaml(K8S / "prometheus-scrape.yml")
    (job,) = config["scrape_configs"]
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == [NAMESPACE]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"job", "__address__", "__metrics_path__"} <= targets


def test_direct_loading_matches_kustomize(objects: list[dict[str, Any]]) -> None:
    """The fallback used where neither kubectl nor kustomize is installed renders the same objects."""

    def key(o: dict[str, Any]) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""))

    assert sorted(map(key, load_directly())) == sorted(map(key, objects))

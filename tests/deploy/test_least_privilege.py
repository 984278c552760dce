"""Each pod or container gets only the secrets its process reads: the Kubernetes Secrets
(deploy/k8s/secret.example.yaml) and the compose services (docker-compose.yml and its shards
override), both checked against one table.

The intake's bearer tokens (who may send as the pages, who may administer) and the webhook's verify
token are the intake's alone; the key that signs m.me refs (a PSID linked to any Braze user) is
the workers' alone. ``READERS`` says which process reads each secret setting; a secret field added
to Settings fails here until it says where it goes. The table is checked against the code too: a
setting said to be one process's is not read by the other's modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.common import COMPOSE_FILE, K8S_SHARDS, ROOT, load_yaml, parse_cli
from tests.deploy.test_compose import command, environment, uses_project_image
from tests.deploy.test_compose_shards import merged as merged_shards
from tests.deploy.test_k8s import APP_SECRETS, container, one, render, render_with_tool, secrets_example
from tests.deploy.test_k8s_shards import render_directly as render_shards
from tests.deploy.test_settings_coverage import SECRET_AS_FILE, deployed_settings

BOTH = frozenset({"intake", "worker"})
INTAKE = frozenset({"intake"})
WORKER = frozenset({"worker"})
#: Secret setting -> the processes that read it.
READERS: dict[str, frozenset[str]] = {
    "REDIS_URL": BOTH,
    "REDIS_SHARDS": BOTH,
    "RECIPIENT_HASH_SALT": BOTH,
    # workers: appsecret_proof on Graph calls; intake: the Messenger webhook's signature
    "APP_SECRET": BOTH,
    # only the workers call Braze (the intake's cancels queue outcome events on BRAZE_REST_URL:
    # worker/store/campaign_ctx.py)
    "BRAZE_API_KEY": WORKER,
    "INTAKE_TOKENS": INTAKE,
    "ADMIN_TOKENS": INTAKE,
    "MESSENGER_VERIFY_TOKEN": INTAKE,
    "LINK_SECRET": WORKER,  # refs are checked by the workers' inbound task (worker/delivery/inbound.py)
}
#: Where each process's code lives, for the cross-check (the CLI and config modules serve both).
INTAKE_CODE = ("worker/intake",)
WORKER_CODE = ("worker/delivery", "worker/braze", "worker/graph", "worker/celery.py", "worker/tasks.py")


def _component(deployment: dict[str, Any]) -> str:
    """intake or worker (a shard's worker-N is a worker)."""
    label: str = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
    return "worker" if label.startswith("worker") else label


def _env_secret_keys(deployment: dict[str, Any], secrets: dict[str, dict[str, str]]) -> set[str]:
    keys: set[str] = set()
    for source in container(deployment).get("envFrom", []):
        if "secretRef" in source:
            keys |= set(secrets[source["secretRef"]["name"]])
    return keys


def test_every_secret_setting_says_who_reads_it() -> None:
    secret_settings = {n for n, secret in deployed_settings().items() if secret and n not in SECRET_AS_FILE}
    assert secret_settings == set(READERS), "add the new secret to READERS (and to the right Secret)"


@pytest.mark.parametrize("kit", ["k8s", "k8s-shards"])
def test_each_pod_gets_the_secrets_it_reads_and_no_other(kit: str) -> None:
    objects = render() if kit == "k8s" else (render_with_tool(K8S_SHARDS) or render_shards())
    secrets = secrets_example()
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"intake", "worker"}
    for deployment in deployments:
        component = _component(deployment)
        wanted = {name for name, readers in READERS.items() if component in readers}
        got = _env_secret_keys(deployment, secrets)
        assert got == wanted, (
            f"{deployment['metadata']['name']}: lacks {sorted(wanted - got)}, "
            f"gets what it never reads: {sorted(got - wanted)}"
        )
        for source in container(deployment)["envFrom"]:
            if "secretRef" in source:
                assert source["secretRef"]["name"] in APP_SECRETS
    one(objects, "Deployment", "intake")


@pytest.mark.parametrize("kit", ["docker-compose.yml", "deploy/compose.shards.yml"])
def test_each_compose_service_gets_the_secrets_it_reads_and_no_other(kit: str) -> None:
    """A compose service running the project's image gets, of the secret settings, those its
    process (its command: intake, worker, sandbox) reads, and the page tokens when it is the intake
    or a worker. With the shards override, shard 1's worker-1 (extends: worker) is checked too."""
    services: dict[str, dict[str, Any]] = (
        load_yaml(COMPOSE_FILE)["services"] if kit == "docker-compose.yml" else merged_shards()["services"]
    )
    checked: dict[str, list[str]] = {}
    for name, svc in services.items():
        if not uses_project_image(svc):
            continue
        process = parse_cli(command(svc)).command
        checked.setdefault(process, []).append(name)
        passed = set(environment(svc))
        wanted = {setting for setting, readers in READERS.items() if process in readers}
        got = passed & set(READERS)
        assert got == wanted, (
            f"{kit} {name} ({process}): lacks {sorted(wanted - got)}, gets what it never reads: {sorted(got - wanted)}"
        )
        has_page_tokens = passed >= SECRET_AS_FILE
        assert has_page_tokens is (process in BOTH), (
            f"{kit} {name}: the page tokens are the intake's and the workers'"
        )
    assert set(checked) >= {"intake", "worker"}, checked
    if kit != "docker-compose.yml":
        assert sorted(checked["worker"]) == ["worker", "worker-1"]


def _mentions(roots: tuple[str, ...], attribute: str) -> list[str]:
    found: list[str] = []
    for root in roots:
        path = ROOT / root
        files = [path] if path.suffix == ".py" else sorted(Path(path).rglob("*.py"))
        found += [str(f.relative_to(ROOT)) for f in files if attribute in f.read_text(encoding="utf-8")]
    return found


def test_the_table_matches_the_code() -> None:
    """A setting given to one process alone is not read by the other's modules."""
    for name, readers in READERS.items():
        attribute = name.lower()
        if readers == INTAKE:
            assert not _mentions(WORKER_CODE, attribute), f"the workers read {name}: give it to them"
            assert _mentions(INTAKE_CODE, attribute), f"the intake no longer reads {name}"
        elif readers == WORKER:
            assert not _mentions(INTAKE_CODE, attribute), f"the intake reads {name}: give it to it"
            assert _mentions(WORKER_CODE, attribute), f"the workers no longer read {name}"

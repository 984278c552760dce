"""Every setting reaches the containers: the list comes from the Settings model, not from a copy.

A field added to ``worker/config/__init__.py`` Settings fails these tests until it is in deploy/env.example,
the compose file's intake or worker environment, the Kubernetes ConfigMap or Secret template, and the
README's configuration table; a name there that is no longer a field fails them too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import SecretStr

from tests.deploy.common import COMPOSE_FILE, ENV_EXAMPLE, K8S, ROOT, load_yaml, load_yaml_all, make_settings

#: Fields that are not deployment settings, and why.
NOT_DEPLOYED = {
    "INTAKE_TOKEN_PAGES": "derived from INTAKE_TOKENS' JSON form, never set on its own",
    "INTAKE_INSECURE_NO_AUTH": "set only by `messenger-worker intake --insecure-no-auth` (development)",
    "SHARD_INDEX": "per worker (`messenger-worker worker --shard N`), never shared by every process",
}
#: Secret settings whose ConfigMap value is a path to a mounted Secret, not the secret itself.
SECRET_AS_FILE = {"PAGE_ACCESS_TOKENS"}
#: Not SecretStr, but credentials all the same (a Redis URL carries the password).
SECRET_BY_NATURE = {"REDIS_URL", "REDIS_SHARDS"}


def _is_secret(annotation: Any) -> bool:
    text = repr(annotation)
    return "SecretStr" in text or annotation is SecretStr


def deployed_settings() -> dict[str, bool]:
    """Environment name -> whether it is a secret, for every Settings field that is deployed."""
    from worker.config import Settings

    out: dict[str, bool] = {}
    for name, field in Settings.model_fields.items():
        env = name.upper()
        if env not in NOT_DEPLOYED:
            out[env] = _is_secret(field.annotation) or env in SECRET_BY_NATURE
    return out


def all_fields() -> set[str]:
    from worker.config import Settings

    return {name.upper() for name in Settings.model_fields}


def env_example_names() -> set[str]:
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M)}


def compose_app_environment() -> dict[str, Any]:
    """What the compose file passes to the intake or the workers: the shared x-app-environment and
    each one's own secrets (split by who reads them: tests/deploy/test_least_privilege.py)."""
    services = load_yaml(COMPOSE_FILE)["services"]
    env: dict[str, Any] = {**services["intake"]["environment"], **services["worker"]["environment"]}
    return env


def k8s_config() -> tuple[dict[str, str], dict[str, str]]:
    (config,) = load_yaml_all((K8S / "configmap.yaml").read_text(encoding="utf-8"))
    from tests.deploy.test_k8s import app_secret_settings  # the Secrets split by who reads them

    return config["data"], app_secret_settings()


def readme_configuration_names() -> set[str]:
    """Names in the first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", first))
    return names


def test_the_list_is_derived_from_the_model() -> None:
    deployed = deployed_settings()
    assert len(deployed) >= 60, "the Settings model lost its fields?"
    assert set(NOT_DEPLOYED) <= all_fields(), "an exception names a field that no longer exists"
    assert deployed["INTAKE_TOKENS"]
    assert deployed["BRAZE_API_KEY"]
    assert not deployed["WINDOW_POLICY"]


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("deploy/env.example", env_example_names),
        ("docker-compose.yml intake + worker environment", lambda: set(compose_app_environment())),
        ("deploy/k8s ConfigMap + Secret template", lambda: set(k8s_config()[0]) | set(k8s_config()[1])),
        ("README configuration table", readme_configuration_names),
    ],
)
def test_every_setting_is_listed(where: str, names: Any) -> None:
    missing = sorted(set(deployed_settings()) - names())
    assert not missing, f"{where} misses settings: {missing}"


def test_no_stale_names() -> None:
    fields = all_fields()
    compose_vars = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text(encoding="utf-8")))
    compose_vars |= {"FLOWER_BASIC_AUTH"}  # passed through to Flower (`KEY:` without a value)
    stale = {
        "deploy/env.example": env_example_names() - fields - compose_vars,
        "docker-compose.yml": set(compose_app_environment()) - fields,
        "ConfigMap": set(k8s_config()[0]) - fields,
        "Secret": set(k8s_config()[1]) - fields,
        "README": readme_configuration_names() - fields,
    }
    assert not any(stale.values()), {k: sorted(v) for k, v in stale.items() if v}


def test_secrets_stay_in_the_secret() -> None:
    config, secret = k8s_config()
    for name, is_secret in deployed_settings().items():
        if is_secret and name not in SECRET_AS_FILE:
            assert name in secret, f"{name} is a secret: it belongs in the Secret template"
            assert name not in config, f"{name} is a secret: not in the ConfigMap"
        else:
            assert name in config, f"{name} belongs in the ConfigMap"
    compose = compose_app_environment()
    for name, is_secret in deployed_settings().items():
        value = compose[name]
        if is_secret and name not in SECRET_BY_NATURE:
            assert value is None or ":?" in str(value), f"{name}: compose must not carry a default secret"


def test_configmap_values_are_valid_settings() -> None:
    """The ConfigMap as the pods see it (an empty value is unset) validates as Settings."""
    config, _ = k8s_config()
    values = {k.lower(): v for k, v in config.items() if v != "" and k not in SECRET_AS_FILE}
    settings = make_settings(values)
    assert settings.queue_name == config["QUEUE_NAME"]

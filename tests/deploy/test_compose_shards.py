"""deploy/compose.shards.yml, the two-shard override of docker-compose.yml (docs/scaling.md).

No Docker engine runs here: the override is validated against the vendored Compose schema, and
merged with the main file the way Compose merges (``extends`` resolved from the main file,
mappings merged key by key, volumes by container path) to check what the containers would get:
every app service the same REDIS_SHARDS naming a Redis service each, one worker service per
shard with its SHARD_INDEX, and the whole as valid Settings.
"""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.common import COMPOSE_FILE, PROMETHEUS_DIR, ROOT, load_yaml, make_settings
from tests.deploy.test_compose import SCHEMA, env_example, interpolate
from tests.deploy.test_prometheus import promtool

OVERRIDE = ROOT / "deploy" / "compose.shards.yml"


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in {**base, **over}.items()}
    if (
        isinstance(base, list)
        and isinstance(over, list)
        and all(isinstance(x, str) and ":" in x for x in base + over)
    ):
        by_target = {x.rsplit(":", 1)[-1]: x for x in base}  # volumes: merged by container path
        by_target.update({x.rsplit(":", 1)[-1]: x for x in over})
        return list(by_target.values())
    return over


def merged() -> dict[str, Any]:
    env = {name: value for name, value in env_example().items() if value}  # as test_compose fills it
    env.update(
        INTAKE_TOKENS="intake-token-for-tests-0123456789abcdef",
        PAGE_ACCESS_TOKENS='{"100": "page-token-for-tests"}',
        RECIPIENT_HASH_SALT="recipient-hash-salt-for-tests",
        GRAFANA_ADMIN_PASSWORD="grafana-password-for-tests",
    )
    main = interpolate(load_yaml(COMPOSE_FILE), env)
    over = interpolate(load_yaml(OVERRIDE), env)
    services = dict(main["services"])
    for name, given in over["services"].items():
        base = services.get(name, {})
        if "extends" in given:
            assert given["extends"]["file"] == "../docker-compose.yml"
            base = main["services"][given["extends"]["service"]]
        services[name] = _merge(base, {k: v for k, v in given.items() if k != "extends"})
    return {**main, "services": services, "volumes": {**main["volumes"], **over["volumes"]}}


def test_the_override_is_valid_compose() -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    for document in (load_yaml(OVERRIDE), merged()):
        errors = [e.message for e in validator.iter_errors(document)]
        assert not errors, errors[:5]


def test_each_shard_has_a_redis_and_its_own_workers() -> None:
    services = merged()["services"]
    shards = services["intake"]["environment"]["REDIS_SHARDS"].split(",")
    assert len(shards) == 2
    hosts = [url.split("//", 1)[1].split(":", 1)[0] for url in shards]
    assert all(host in services for host in hosts), hosts
    assert services["redis-1"]["volumes"] == ["redis-1-data:/data"]  # not the first Redis's data
    assert "--hash-max-listpack-value" in services["redis-1"]["command"]
    workers = {name: svc for name, svc in services.items() if svc.get("command", [None])[0] == "worker"}
    assert sorted(int(svc["environment"]["SHARD_INDEX"]) for svc in workers.values()) == [0, 1]
    for svc in (services["intake"], *workers.values()):
        assert svc["environment"]["REDIS_SHARDS"] == ",".join(shards)
        assert svc["read_only"] is True  # the main file's hardening carried over


def test_the_containers_get_valid_settings() -> None:
    services = merged()["services"]
    for name in ("intake", "worker", "worker-1"):
        values = {k.lower(): v for k, v in services[name]["environment"].items() if v not in ("", None)}
        settings = make_settings(values)
        assert len(settings.redis_shards) == 2
        if name != "intake":
            assert settings.redis_url == settings.redis_shards[int(values["shard_index"])]


def test_prometheus_scrapes_every_shards_workers_as_the_worker_job() -> None:
    """The override's Prometheus reads prometheus.shards.yml: prometheus.yml but for the worker
    job's names, which list every worker service of the merged file. Without it shard 1's
    workers were never scraped (their sends missing from the dashboard, and BmwShardWithoutWorker
    firing for a shard that has workers)."""
    services = merged()["services"]
    command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.shards.yml" in command
    main_command = load_yaml(COMPOSE_FILE)["services"]["prometheus"]["command"]
    assert len(command) == len(main_command)  # only the file differs
    shards_config = load_yaml(PROMETHEUS_DIR / "prometheus.shards.yml")
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (worker_sd,) = next(j for j in shards_config["scrape_configs"] if j["job_name"] == "worker")[
        "dns_sd_configs"
    ]
    workers = sorted(name for name, svc in services.items() if svc.get("command", [None])[0] == "worker")
    assert sorted(worker_sd["names"]) == workers == ["worker", "worker-1"]
    worker_sd["names"] = ["worker"]
    assert shards_config == config, "keep prometheus.shards.yml equal to prometheus.yml but for the names"
    done = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.shards.yml"))
    assert done.returncode == 0, done.stdout + done.stderr

"""docker-compose.yml: valid against the Compose specification, and consistent with the service.

No Docker engine runs here, so nothing is started: the file is interpolated the way Compose does
it (with the values of deploy/env.example), validated against the vendored Compose schema, and
checked against the code it deploys (CLI subcommands, Settings fields and defaults).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tests.deploy.common import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    PROMETHEUS_DIR,
    ROOT,
    duration_seconds,
    load_yaml,
    make_settings,
    parse_cli,
    settings_env_names,
)

SCHEMA = ROOT / "tests" / "deploy" / "schemas" / "compose-spec.json"
APP_SERVICES = ("intake", "worker")
REQUIRED = {"INTAKE_TOKENS", "PAGE_ACCESS_TOKENS", "RECIPIENT_HASH_SALT"}
#: Compose defaults that differ from Settings on purpose.
DELIBERATE_DEFAULTS = {"REDIS_URL"}  # the redis service, not 127.0.0.1

_REF = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.S)


class MissingVariableError(Exception):
    pass


def _substitute(text: str, env: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("bare"):
            return env.get(match.group("bare"), "")
        parsed = _BRACED.match(match.group("braced"))
        assert parsed is not None, f"malformed interpolation {match.group(0)!r}"
        name, op, arg = parsed.group("name"), parsed.group("op"), parsed.group("arg") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?"):
            if value is None or (op == ":?" and not value):
                raise MissingVariableError(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return arg if (value if op == ":+" else value is not None) else ""
        return value or ""

    return _REF.sub(one, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation, applied to every string value of the parsed file."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return _substitute(node, env)
    return node


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node


def referenced_variables(node: Any) -> dict[str, set[str]]:
    """Variable name -> the operators it is used with ('' for plain ${VAR})."""
    found: dict[str, set[str]] = {}
    for text in _strings(node):
        for match in _REF.finditer(text):
            if match.group("escaped"):
                continue
            if match.group("bare"):
                found.setdefault(match.group("bare"), set()).add("")
                continue
            parsed = _BRACED.match(match.group("braced"))
            assert parsed is not None, match.group(0)
            found.setdefault(parsed.group("name"), set()).add(parsed.group("op") or "")
    return found


def defaults(node: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in _strings(node):
        for match in _REF.finditer(text):
            parsed = _BRACED.match(match.group("braced") or "")
            if parsed is not None and parsed.group("op") == ":-":
                out[parsed.group("name")] = parsed.group("arg")
    return out


def env_example() -> dict[str, str]:
    """Variables deploy/env.example lists, set (``VAR=x``) or commented out (``# VAR=x``)."""
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


@pytest.fixture(scope="module")
def filled_env() -> dict[str, str]:
    """env.example as a user would fill it in: required secrets set, optional ones left out."""
    env = {name: value for name, value in env_example().items() if value}
    env.update(
        INTAKE_TOKENS="intake-token-for-tests-0123456789abcdef",
        PAGE_ACCESS_TOKENS='{"100": "page-token-for-tests"}',
        RECIPIENT_HASH_SALT="recipient-hash-salt-for-tests",
        GRAFANA_ADMIN_PASSWORD="grafana-password-for-tests",
    )
    return env


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = interpolate(raw, filled_env)
    return config


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose["services"]
    assert name in services, f"service {name} missing"
    return services[name]


def environment(svc: dict[str, Any]) -> dict[str, Any]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", "KEY"]
        return {item.partition("=")[0]: item.partition("=")[2] or None for item in env}
    assert isinstance(env, dict)
    return env


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if isinstance(cmd, str):
        return cmd.split()
    assert isinstance(cmd, list), f"no command: {svc}"
    return [str(part) for part in cmd]


def uses_project_image(svc: dict[str, Any]) -> bool:
    return "build" in svc or str(svc.get("image", "")).startswith("braze-messenger-worker")


def test_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    # The schema names draft 2019-09 with a non-canonical $schema URI: choose the validator by hand.
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:20]
    )


def test_schema_check_is_not_vacuous() -> None:
    """The vendored schema refuses an unknown service key, so the test above means something."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]  # no type information shipped

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    assert not validator.is_valid({"services": {"x": {"image": "a", "stop_grace_periodd": "60s"}}})
    assert not validator.is_valid({"services": {"x": {"image": "a", "ports": "8080"}}})
    assert validator.is_valid({"services": {"x": {"image": "a", "ports": ["8080:8080"]}}})


def test_expected_services(compose: dict[str, Any]) -> None:
    assert {"redis", "intake", "worker", "flower", "prometheus", "grafana"} <= set(compose["services"])


def test_required_secrets_use_the_error_form(raw: dict[str, Any], filled_env: dict[str, str]) -> None:
    used = referenced_variables(raw)
    for name in REQUIRED:
        assert name in used, f"{name} is not used"
        assert used[name] <= {":?"}, f"{name} must be required everywhere: ${{{name}:?message}}"
        without = {k: v for k, v in filled_env.items() if k != name}
        with pytest.raises(MissingVariableError, match=name):
            interpolate(raw, without)
        with pytest.raises(MissingVariableError, match=name):  # an empty value counts as missing
            interpolate(raw, {**filled_env, name: ""})


def test_every_variable_is_listed_in_env_example(raw: dict[str, Any]) -> None:
    listed = env_example()
    used = set(referenced_variables(raw))
    # `KEY:` with no value passes KEY through from .env / the shell when it is set
    for svc in raw["services"].values():
        used |= {key for key, value in environment(svc).items() if value is None}
    missing = sorted(used - set(listed))
    assert not missing, f"not in deploy/env.example: {missing}"
    for name in REQUIRED:
        assert listed[name] == "", f"{name} must appear uncommented and empty in env.example"


def test_env_example_holds_no_secret_values() -> None:
    for name, value in env_example().items():
        if name.endswith(("_TOKENS", "_SECRET", "_PASSWORD", "_SALT", "_AUTH")):
            assert value == "", f"env.example must not carry a value for {name}"


def test_app_services_set_only_real_settings(raw: dict[str, Any]) -> None:
    fields = settings_env_names()
    for name in (*APP_SERVICES, "sandbox"):
        env = environment(raw["services"][name])
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{name}: not Settings fields (worker/config/__init__.py): {unknown}"


def test_compose_defaults_equal_the_settings_defaults(
    raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.config import Settings

    for name in settings_env_names():  # Settings must see only what we pass it
        monkeypatch.delenv(name, raising=False)
    fields = settings_env_names()
    checked = 0
    for name, default in defaults(raw).items():
        if name not in fields or name in DELIBERATE_DEFAULTS:
            continue
        field = name.lower()
        expected = Settings.model_fields[field].get_default(call_default_factory=True)
        actual = getattr(make_settings({field: default}), field)
        assert actual == expected, f"{name}: compose default {default!r} != Settings default {expected!r}"
        checked += 1
    assert checked >= 10


def test_commands_are_real_subcommands(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if not uses_project_image(svc):
            continue
        assert "entrypoint" not in svc, f"{name}: keep the image's ENTRYPOINT (messenger-worker)"
        parse_cli(command(svc))
    assert parse_cli(command(service(compose, "intake"))).command == "intake"
    worker_args = parse_cli(command(service(compose, "worker")))
    assert worker_args.command == "worker"
    assert worker_args.concurrency == 8


def test_intake_listens_on_all_interfaces_and_is_published(compose: dict[str, Any]) -> None:
    intake = service(compose, "intake")
    args = parse_cli(command(intake))
    assert args.host == "0.0.0.0"
    assert args.port == 8080
    assert any(str(p).endswith(":8080") for p in intake.get("ports", []))


def test_worker_is_scalable(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    assert "container_name" not in worker, "container_name breaks --scale worker=N"
    assert "ports" not in worker, "a published port breaks --scale worker=N"
    assert "hostname" not in worker, "a fixed hostname gives every replica the same Celery node name"


def test_health_checks(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    intake_check = " ".join(service(compose, "intake")["healthcheck"]["test"])
    assert "/readyz" in intake_check
    assert ":8080/" in intake_check
    worker_check = " ".join(service(compose, "worker")["healthcheck"]["test"])
    assert ":9808/healthz" in worker_check
    for name in ("intake", "worker"):
        test = service(compose, name)["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], "no curl in the slim image: use python"
        compile(test[3], f"{name}-healthcheck", "exec")  # valid Python


def test_app_containers_are_hardened(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        svc = service(compose, name)
        assert svc.get("read_only") is True, name
        assert "/tmp" in svc.get("tmpfs", []), f"{name}: /tmp must stay writable"
        assert svc.get("cap_drop") == ["ALL"], name
        assert "user" not in svc or svc["user"] not in ("root", "0"), name


def test_app_waits_for_a_healthy_redis(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = service(compose, name)["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name


def test_graceful_stop_periods(compose: dict[str, Any]) -> None:
    from worker.config import Settings

    intake = duration_seconds(service(compose, "intake")["stop_grace_period"])
    worker = duration_seconds(service(compose, "worker")["stop_grace_period"])
    assert intake >= 40, "uvicorn drains for 30 s (cli.py timeout_graceful_shutdown)"
    longest_send = (
        Settings.model_fields["graph_connect_timeout"].default
        + Settings.model_fields["graph_read_timeout"].default
    )
    assert worker >= 60
    assert worker > longest_send + 30, "the worker must outlive its longest Graph call"


def test_redis_is_durable(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    cmd = command(redis)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    named = str(redis["volumes"][0]).split(":")[0]
    assert named in compose["volumes"], "Redis data must live in a named volume"
    assert "ports" not in redis, "Redis stays on the compose network"


def test_worker_metrics_port_matches_the_scrape_config(compose: dict[str, Any]) -> None:
    port = int(environment(service(compose, "worker"))["METRICS_PORT"])
    intake_port = int(environment(service(compose, "intake"))["INTAKE_METRICS_PORT"])
    scrape = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {"intake", "worker"}
    worker_sd = jobs["worker"]["dns_sd_configs"][0]
    assert worker_sd == {**worker_sd, "names": ["worker"], "type": "A", "port": port}
    intake_sd = jobs["intake"]["dns_sd_configs"][0]
    assert intake_sd == {**intake_sd, "names": ["intake"], "type": "A", "port": intake_port}
    published = [str(p) for p in service(compose, "intake").get("ports", [])]
    assert not any(str(intake_port) in p for p in published), "the intake's /metrics is never published"


def test_monitoring_mounts_exist(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for volume in service(compose, name).get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), f"{name}: {source} does not exist"
    flower = service(compose, "flower")
    assert flower["image"].startswith("mher/flower")
    assert "CELERY_BROKER_URL" in environment(flower)
    for name in ("flower", "prometheus", "grafana"):
        for port in service(compose, name).get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} must be published on loopback only"


def test_interpolation_helper() -> None:
    env = {"A": "1", "E": ""}
    assert _substitute("${A}-${B:-x}-${E:-y}-${E-z}-$$-$A", env) == "1-x-y--$-1"
    with pytest.raises(MissingVariableError):
        _substitute("${B:?need B}", env)
    with pytest.raises(MissingVariableError):
        _substitute("${E:?need E}", env)
    assert _substitute("${E?fine}", env) == ""

"""worker.config.Settings: defaults, environment parsing, validation, secrecy, immutability."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from worker.config import (
    DEFAULT_RECIPIENT_HASH_SALT,
    MIN_SALT_LENGTH,
    DeprecatedTagPolicy,
    LogFormat,
    PageTokens,
    Settings,
    WindowPolicy,
    check_service,
)

PAGE_TOKEN = "tok-page-100-abcdef"
OTHER_TOKEN = "tok-page-200-ghijkl"
INTAKE = "intake-token-xyz-0123456789abcdefghij"
APP_SECRET = "app-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting may leak in from the developer's or CI's environment, nor from a .env file."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # a stray ./.env must not be read either


def from_env(**overrides: Any) -> Settings:
    return Settings(**overrides, _env_file=None)


def test_defaults() -> None:
    settings = from_env()
    assert settings.graph_api_version == "v25.0"
    assert settings.graph_api_url == "https://graph.facebook.com"
    assert settings.graph_base == "https://graph.facebook.com/v25.0"
    assert settings.message_ttl == 86_400
    assert settings.allow_token_passthrough is True
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.intake_tokens == []
    assert settings.page_access_tokens == {}
    assert settings.app_secret is None
    assert settings.fallback_tags == []
    assert settings.deprecated_tag_policy is DeprecatedTagPolicy.STRIP
    assert settings.window_policy is WindowPolicy.FAIL
    assert settings.log_format is LogFormat.JSON
    assert settings.log_raw_recipients is False


def test_dotenv_file_is_read_when_asked(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text(f"INTAKE_TOKENS={INTAKE}\nMAX_ATTEMPTS=3\n", encoding="utf-8")
    settings = Settings(_env_file=env_file)
    assert [t.get_secret_value() for t in settings.intake_tokens] == [INTAKE]
    assert settings.max_attempts == 3


def test_intake_tokens_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE_TOKENS", f" {INTAKE} ,, second-token-456-0123456789abcdefghij ,")
    settings = from_env()
    assert [t.get_secret_value() for t in settings.intake_tokens] == [
        INTAKE,
        "second-token-456-0123456789abcdefghij",
    ]
    assert settings.intake_token_values == (INTAKE.encode(), b"second-token-456-0123456789abcdefghij")


def test_page_access_tokens_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGE_ACCESS_TOKENS", json.dumps({"100": PAGE_TOKEN, "200": OTHER_TOKEN}))
    settings = from_env()
    assert settings.page_token("100") == PAGE_TOKEN
    assert settings.page_token("200") == OTHER_TOKEN
    assert settings.page_token("300") is None
    pages = PageTokens(settings, source="")
    assert (pages.page_of(PAGE_TOKEN), pages.page_of(OTHER_TOKEN), pages.page_of("x" * 40)) == (
        "100",
        "200",
        None,
    )


def test_page_access_tokens_as_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"100": PAGE_TOKEN}), encoding="utf-8")
    monkeypatch.setenv("PAGE_ACCESS_TOKENS", str(path))
    assert from_env().page_token("100") == PAGE_TOKEN


def test_empty_page_access_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGE_ACCESS_TOKENS", "  ")
    assert from_env().page_access_tokens == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"100": ', "not valid JSON"),
        ('{"100": 5}', "must map page ids to token strings"),
        ('{"100": ["a-token-value"]}', "must map page ids to token strings"),
        ("/nonexistent/tokens.json", "neither a JSON object nor a readable file"),
    ],
    ids=["invalid-json", "int-value", "list-value", "missing-file"],
)
def test_page_access_tokens_errors(monkeypatch: pytest.MonkeyPatch, value: str, message: str) -> None:
    monkeypatch.setenv("PAGE_ACCESS_TOKENS", value)
    with pytest.raises(ValidationError, match=message):
        from_env()


def test_page_access_tokens_file_with_a_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([PAGE_TOKEN]), encoding="utf-8")
    monkeypatch.setenv("PAGE_ACCESS_TOKENS", str(path))
    with pytest.raises(ValidationError, match="must map page ids to token strings"):
        from_env()


@pytest.mark.parametrize("placeholder", ["changeme", "CHANGE-ME", "xxxx", "TODO", "<token>", "your_token"])
@pytest.mark.parametrize("where", ["INTAKE_TOKENS", "PAGE_ACCESS_TOKENS", "APP_SECRET"])
def test_placeholder_secret_rejected(monkeypatch: pytest.MonkeyPatch, where: str, placeholder: str) -> None:
    value = json.dumps({"100": placeholder}) if where == "PAGE_ACCESS_TOKENS" else placeholder
    monkeypatch.setenv(where, value)
    with pytest.raises(ValidationError, match="placeholder"):
        from_env()


def test_empty_env_value_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``APP_SECRET=`` (as compose passes an unset optional variable) is not an empty secret."""
    monkeypatch.setenv("APP_SECRET", "")
    monkeypatch.setenv("GRAPH_API_VERSION", "")
    settings = from_env()
    assert settings.app_secret is None
    assert settings.graph_api_version == "v25.0"


def test_empty_app_secret_given_directly_rejected() -> None:
    with pytest.raises(ValidationError, match="empty or a placeholder"):
        Settings(app_secret="", _env_file=None)


def test_fallback_tags_parsed_and_upper_cased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_TAGS", "human_agent, CUSTOMER_FEEDBACK")
    assert from_env().fallback_tags == ["HUMAN_AGENT", "CUSTOMER_FEEDBACK"]


@pytest.mark.parametrize(
    ("tag", "date"), [("ACCOUNT_UPDATE", "2026-04-27"), ("SHIPPING_UPDATE", "2020-03-04")]
)
def test_fallback_tags_deprecated_rejected_with_date_under_reject(
    monkeypatch: pytest.MonkeyPatch, tag: str, date: str
) -> None:
    monkeypatch.setenv("FALLBACK_TAGS", f"HUMAN_AGENT,{tag}")
    assert from_env().fallback_tags == ["HUMAN_AGENT", tag]  # strip (default): skipped when used
    monkeypatch.setenv("DEPRECATED_TAG_POLICY", "reject")
    with pytest.raises(ValidationError) as caught:
        from_env()
    assert tag in str(caught.value)
    assert date in str(caught.value)


def test_fallback_tags_unknown_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_TAGS", "NOT_A_TAG")
    with pytest.raises(ValidationError, match="unknown tag NOT_A_TAG"):
        from_env()


@pytest.mark.parametrize("version", ["25.0", "v25", "v25.0.1", "latest"])
def test_bad_graph_api_version(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setenv("GRAPH_API_VERSION", version)
    with pytest.raises(ValidationError, match="GRAPH_API_VERSION"):
        from_env()


@pytest.mark.parametrize("url", ["rediss://cache:6380/1", "unix:///run/redis.sock"])
def test_redis_url_schemes_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    assert from_env().redis_url == url


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", "amqp://guest@rabbit//"])
def test_bad_redis_url_scheme(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(ValidationError, match="REDIS_URL"):
        from_env()


def test_env_parsing_of_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_TOKEN_PASSTHROUGH", "false")
    monkeypatch.setenv("MESSAGE_TTL", "3600")
    monkeypatch.setenv("deprecated_tag_policy", "reject")  # case-insensitive names
    monkeypatch.setenv("WINDOW_POLICY", "park")
    settings = from_env()
    assert settings.allow_token_passthrough is False
    assert settings.message_ttl == 3600.0
    assert settings.deprecated_tag_policy is DeprecatedTagPolicy.REJECT
    assert settings.window_policy is WindowPolicy.PARK


@pytest.mark.parametrize(
    ("name", "value"), [("MAX_ATTEMPTS", "0"), ("MESSAGE_TTL", "0"), ("BATCH_MAX", "501")]
)
def test_out_of_range_numbers_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        from_env()


def _full_settings() -> Settings:
    settings = from_env(
        intake_tokens=[INTAKE],
        page_access_tokens={"100": PAGE_TOKEN, "200": OTHER_TOKEN},
        app_secret=APP_SECRET,
        recipient_hash_salt="salt-value-98765",
    )
    # Populate the cached properties too: they hold raw token values.
    assert settings.intake_token_values == (INTAKE.encode(),)
    return settings


@pytest.mark.parametrize("render", [repr, str, format], ids=["repr", "str", "format"])
def test_repr_and_str_never_show_secrets(render: Any) -> None:
    text = render(_full_settings())
    for secret in (PAGE_TOKEN, OTHER_TOKEN, INTAKE, APP_SECRET, "salt-value-98765"):
        assert secret not in text
    assert "100" in text  # page ids are not secret


def test_model_dump_keeps_secrets_masked() -> None:
    dumped = json.dumps(_full_settings().model_dump(mode="json"))
    for secret in (PAGE_TOKEN, OTHER_TOKEN, INTAKE, APP_SECRET):
        assert secret not in dumped


@pytest.mark.parametrize("case", ["field-error", "model-error"])
def test_validation_errors_never_show_secrets(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    if case == "field-error":
        # One good token, one malformed entry: the error must not echo the good token.
        monkeypatch.setenv("PAGE_ACCESS_TOKENS", json.dumps({"100": PAGE_TOKEN, "200": 5}))
    else:
        # A placeholder intake token next to a real page token (model validator).
        monkeypatch.setenv("INTAKE_TOKENS", "changeme")
        monkeypatch.setenv("PAGE_ACCESS_TOKENS", json.dumps({"100": PAGE_TOKEN}))
    with pytest.raises(ValidationError) as caught:
        from_env()
    assert PAGE_TOKEN not in str(caught.value)
    assert PAGE_TOKEN not in repr(caught.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_attempts", 3), ("graph_api_version", "v24.0"), ("allow_token_passthrough", False)],
)
def test_settings_are_frozen(name: str, value: object) -> None:
    settings = from_env()
    before = getattr(settings, name)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(settings, name, value)
    assert getattr(settings, name) == before


LINK_SECRET = "link-secret-0123456789abcdef0123456789"


def test_link_settings_default_to_secure() -> None:
    """No LINK_SECRET: no ref links anything; a conflicting valid ref keeps the first link."""
    settings = from_env()
    assert settings.link_secret is None
    assert settings.link_conflict_policy == "keep"


def test_link_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINK_SECRET", LINK_SECRET)
    monkeypatch.setenv("LINK_CONFLICT_POLICY", "replace")
    settings = from_env()
    assert settings.link_secret is not None
    assert settings.link_secret.get_secret_value() == LINK_SECRET
    assert settings.link_conflict_policy == "replace"
    assert LINK_SECRET not in repr(settings)
    monkeypatch.setenv("LINK_SECRET", "")  # compose passes an unset optional variable as empty
    assert from_env().link_secret is None


@pytest.mark.parametrize(
    "placeholder", ["changeme", "<long-random-link-secret>", "your_link_secret_" + "x" * 20]
)
def test_link_secret_placeholder_rejected(placeholder: str) -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        from_env(link_secret=placeholder)


def test_short_link_secret_rejected_without_showing_it() -> None:
    """Anyone holding a ref of their own can try keys offline: a short key would be found."""
    with pytest.raises(ValidationError, match="at least 32 characters") as caught:
        from_env(link_secret="short-secret-123")
    assert "short-secret-123" not in str(caught.value)


def test_unknown_link_conflict_policy_rejected() -> None:
    with pytest.raises(ValidationError):
        from_env(link_conflict_policy="merge")


@pytest.mark.parametrize(
    "salt",
    [None, "braze-messenger-worker", "changeme", "<random-salt-for-recipient-hashes-in-logs>", "short-salt"],
)
def test_a_service_refuses_the_default_a_placeholder_or_a_short_recipient_hash_salt(salt: str | None) -> None:
    values: dict[str, Any] = {"_env_file": None}
    if salt is not None:
        values["recipient_hash_salt"] = salt
    settings = Settings(**values)  # Settings alone accepts it: tests and read-only commands
    with pytest.raises(ValueError, match="RECIPIENT_HASH_SALT") as refused:
        check_service(settings)
    if salt:
        assert salt not in str(refused.value)


def test_a_service_accepts_a_long_salt_or_raw_recipients() -> None:
    check_service(Settings(recipient_hash_salt="s" * MIN_SALT_LENGTH, _env_file=None))
    check_service(Settings(log_raw_recipients=True, _env_file=None))  # no hash, no salt needed


def test_the_default_salt_is_the_one_a_service_refuses() -> None:
    assert Settings(_env_file=None).recipient_hash_salt.get_secret_value() == DEFAULT_RECIPIENT_HASH_SALT


def test_load_shedding_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE_MAX_PENDING", "500")
    monkeypatch.setenv("INTAKE_DEADLINE_SECONDS", "2.5")
    monkeypatch.setenv("INTAKE_LIMIT_CONCURRENCY", "0")
    s = Settings(_env_file=None)
    assert (s.intake_max_pending, s.intake_deadline_seconds, s.intake_limit_concurrency) == (500, 2.5, 0)
    monkeypatch.setenv("INTAKE_DEADLINE_SECONDS", "90")  # past Braze's 90 s timeout
    with pytest.raises(ValueError, match="intake_deadline_seconds"):
        Settings(_env_file=None)


def test_fallback_order_and_utility_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env().fallback_order == ["utility", "tags"]
    monkeypatch.setenv("FALLBACK_ORDER", "TAGS, utility")
    monkeypatch.setenv("UTILITY_TEMPLATES", '{"order_update": {"language": "en_GB", "parameters": ["-"]}}')
    settings = from_env()
    assert settings.fallback_order == ["tags", "utility"]
    assert settings.utility_templates == {"order_update": {"language": "en_GB", "parameters": ["-"]}}
    for bad in ("utility,utility", "tags,HUMAN_AGENT"):
        monkeypatch.setenv("FALLBACK_ORDER", bad)
        with pytest.raises(ValidationError, match="FALLBACK_ORDER"):
            from_env()
    monkeypatch.setenv("FALLBACK_ORDER", "utility")
    monkeypatch.setenv("UTILITY_TEMPLATES", '{"Order Update": {}}')
    with pytest.raises(ValidationError, match="UTILITY_TEMPLATES"):
        from_env()


@pytest.mark.parametrize(
    ("idle", "lease", "interval", "wait"),
    [
        (1.0, 60, 0.1, 1.0),  # the default
        (30.0, 60, 0.1, 5.0),  # a quarter of the 20 s renewal: an outage that matters is seen
        (0.01, 60, 0.1, 0.1),  # never more often than the interval
        (5.0, 3, 0.1, 0.25),  # a short lease keeps rounds frequent
    ],
)
def test_the_idle_schedulers_wait_is_bounded(idle: float, lease: float, interval: float, wait: float) -> None:
    s = from_env(
        scheduler_idle_seconds=idle,
        delivery_lease_seconds=lease,
        graph_deadline_seconds=1,
        scheduler_interval_seconds=interval,
    )
    assert s.scheduler_idle_wait == pytest.approx(wait)

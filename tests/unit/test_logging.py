"""worker.logging: one JSON shape for structlog and stdlib records, secrets masked, recipients hashed."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import orjson
import pytest
import structlog

from worker import logging as wlog
from worker.config import PageTokens, Settings
from worker.logging import configure_logging, get_logger, recipient_ref

PAGE_TOKEN = "tok-page-100-abcdef"
INTAKE = "intake-token-xyz-0123456789abcdefghij"
APP_SECRET = "app-secret-0123456789"
SECRETS = (PAGE_TOKEN, INTAKE, APP_SECRET)
#: A token nobody configured: only the access_token= / Bearer patterns can catch it.
FOREIGN = "EAAForeignToken9876543210zz"
PSID = "2468013579135791"

_TOUCHED = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "httpx", "httpcore", "redis")
_QUIETED = ("celery.worker.strategy", "celery.app.trace")


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "page_access_tokens": {"100": PAGE_TOKEN},
        "intake_tokens": [INTAKE],
        "app_secret": APP_SECRET,
    }
    values.update(overrides)
    return Settings(**values, _env_file=None)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging mutates process-wide state: put everything back afterwards."""
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate)
        for name in (*_TOUCHED, *_QUIETED)
        for lg in [logging.getLogger(name)]
    }
    saved_secrets = list(wlog.REDACTOR._secrets)
    try:
        yield
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_root[0]:
            root.addHandler(handler)
        root.setLevel(saved_root[1])
        for name, (handlers, level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
        wlog.REDACTOR._secrets[:] = saved_secrets


@pytest.fixture
def capture(restore_logging: None) -> Callable[..., io.StringIO]:
    def configure(**overrides: Any) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(make_settings(**overrides), stream=stream)
        return stream

    return configure


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in stream.getvalue().splitlines():
        parsed = orjson.loads(line)  # every line is exactly one JSON document
        assert isinstance(parsed, dict)
        out.append(parsed)
    return out


def assert_clean(stream: io.StringIO, *values: str) -> None:
    text = stream.getvalue()
    assert text, "nothing was logged"
    for value in values or SECRETS:
        assert value not in text


def test_every_line_is_one_json_object(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    get_logger("worker.test").info("delivery.sent", delivery_id="d1", attempts=2)
    logging.getLogger("celery").warning("celery says %s", "hi")
    logging.getLogger("uvicorn.error").error("uvicorn says")
    records = lines(stream)
    assert [r["event"] for r in records] == ["delivery.sent", "celery says hi", "uvicorn says"]
    assert [r["level"] for r in records] == ["info", "warning", "error"]
    assert [r["logger"] for r in records] == ["worker.test", "celery", "uvicorn.error"]
    for record in records:
        assert {"event", "level", "timestamp"} <= set(record)
        assert record["timestamp"].endswith("Z")
    assert records[0]["delivery_id"] == "d1"
    assert records[0]["attempts"] == 2


def test_log_level_filters(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(log_level="warning")
    get_logger().info("hidden")
    logging.getLogger("celery").info("hidden too")
    get_logger().warning("shown")
    assert [r["event"] for r in lines(stream)] == ["shown"]


def test_httpx_request_lines_are_quieted(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    logging.getLogger("httpx").info("HTTP Request: POST https://graph/me/messages?access_token=x")
    logging.getLogger("httpx").warning("pool exhausted")
    assert [r["event"] for r in lines(stream)] == ["pool exhausted"]


def test_secrets_in_event_values_and_nested_structures(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    get_logger().info(
        f"event mentions {PAGE_TOKEN}",
        token=PAGE_TOKEN,
        header=f"Bearer {INTAKE}",
        nested={"a": [INTAKE, {"b": f"secret={APP_SECRET}"}], "c": (PAGE_TOKEN,)},
    )
    assert_clean(stream)
    (record,) = lines(stream)
    assert record["token"] == "***"
    assert record["nested"]["a"][0] == "***"
    assert record["nested"]["c"] == ["***"]
    assert record["header"] == "Bearer ***"
    assert record["event"] == "event mentions ***"
    assert record["nested"]["a"][1]["b"] == "secret=***"


def fail(exc: Exception) -> NoReturn:
    raise exc


def test_secrets_in_exception_messages(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    log = get_logger()
    try:
        fail(RuntimeError(f"graph refused {PAGE_TOKEN} for {INTAKE}"))
    except RuntimeError:
        log.exception("delivery.crashed")
    try:
        fail(ValueError(f"bad proof {APP_SECRET}"))
    except ValueError:
        logging.getLogger("celery").exception("task failed")
    assert_clean(stream)
    first, second = lines(stream)
    assert "RuntimeError: graph refused ***" in first["exception"]
    assert "ValueError: bad proof ***" in second["exception"]
    assert first["level"] == second["level"] == "error"


def test_secrets_in_stdlib_percent_formatted_messages(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    logging.getLogger("celery").info("connecting with %s and %r", PAGE_TOKEN, INTAKE)
    logging.getLogger("uvicorn.error").warning("secret %(s)s", {"s": APP_SECRET})
    logging.getLogger("celery").info("extra fields", extra={"proof": APP_SECRET})
    assert_clean(stream)
    records = lines(stream)
    assert records[0]["event"] == "connecting with *** and '***'"
    assert records[1]["event"] == "secret ***"
    assert records[2]["proof"] == "***"


@pytest.mark.parametrize(
    ("fragment", "masked"),
    [
        (
            f"POST /v25.0/me/messages?access_token={FOREIGN}&x=1",
            "POST /v25.0/me/messages?access_token=***&x=1",
        ),
        (f"ACCESS_TOKEN={FOREIGN} rest", "ACCESS_TOKEN=*** rest"),
        (f"appsecret_proof={FOREIGN}", "appsecret_proof=***"),
        (f"Authorization: Bearer {FOREIGN}", "Authorization: Bearer ***"),
        (f"authorization: bearer {FOREIGN}.sig/+=", "authorization: bearer ***"),
    ],
    ids=["query", "upper", "proof", "bearer", "bearer-lower"],
)
def test_token_fragments_masked_even_for_unknown_tokens(
    capture: Callable[..., io.StringIO], fragment: str, masked: str
) -> None:
    stream = capture()
    get_logger().info("structlog", url=fragment)
    logging.getLogger("uvicorn.error").info(fragment)
    logging.getLogger("celery").info("with arg %s", fragment)
    assert_clean(stream, FOREIGN)
    records = lines(stream)
    assert records[0]["url"] == masked
    assert records[1]["event"] == masked
    assert records[2]["event"] == f"with arg {masked}"


def test_contextvars_are_merged_and_masked(capture: Callable[..., io.StringIO]) -> None:
    stream = capture()
    wlog.bind(request_id="r-1", leaked=PAGE_TOKEN)
    get_logger().info("with context")
    wlog.clear()
    get_logger().info("without context")
    first, second = lines(stream)
    assert first["request_id"] == "r-1"
    assert first["leaked"] == "***"
    assert "request_id" not in second


@pytest.mark.parametrize(
    "value",
    [
        RuntimeError(f"refused {PAGE_TOKEN}"),
        httpx.URL(f"https://graph.facebook.com/v25.0/me/messages?access_token={FOREIGN}"),
        {PAGE_TOKEN},
        {PAGE_TOKEN: 1},
    ],
    ids=["exception", "url", "set", "dict-key"],
)
def test_secrets_in_non_string_values(capture: Callable[..., io.StringIO], value: object) -> None:
    stream = capture()
    get_logger().warning("graph.failed", error=value)
    assert_clean(stream, PAGE_TOKEN, FOREIGN)


def test_console_format_is_masked_too(capture: Callable[..., io.StringIO]) -> None:
    stream = capture(log_format="console")
    get_logger().info("console", token=PAGE_TOKEN)
    logging.getLogger("celery").info("celery %s", INTAKE)
    assert_clean(stream)
    assert "console" in stream.getvalue()


def test_recipient_ref_is_a_stable_salted_hash() -> None:
    settings = make_settings()
    ref = recipient_ref(settings, PSID)
    assert ref.startswith("h:")
    assert len(ref) == 18
    assert PSID not in ref
    assert ref == recipient_ref(make_settings(), PSID)
    assert ref != recipient_ref(settings, PSID + "0")
    assert ref != recipient_ref(make_settings(recipient_hash_salt="another-salt-value"), PSID)


def test_recipient_ref_raw_when_configured() -> None:
    assert recipient_ref(make_settings(log_raw_recipients=True), PSID) == PSID


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_secrets_that_renderers_escape_are_masked(
    capture: Callable[..., io.StringIO], log_format: str
) -> None:
    """A secret with a quote and a backslash appears escaped in a rendered line: still masked."""
    odd = 'intake"tok\\en-42-0123456789abcdefghij'
    stream = capture(intake_tokens=[odd], log_format=log_format)
    get_logger().info("odd", value=odd, nested={"k": [odd]})
    text = stream.getvalue()
    assert "odd" in text
    for form in (odd, orjson.dumps(odd).decode()[1:-1], repr(odd)[1:-1]):
        assert form not in text
    assert text.count("***") >= 2


def test_the_link_secret_is_masked(capture: Callable[..., io.StringIO]) -> None:
    link_secret = "link-secret-0123456789abcdef0123456789"
    stream = capture(link_secret=link_secret)
    get_logger().warning("oops", detail=f"key={link_secret}")
    assert_clean(stream, link_secret)
    assert lines(stream)[0]["detail"] == "key=***"


def test_admin_tokens_and_redis_passwords_are_masked(capture: Callable[..., io.StringIO]) -> None:
    admin = "admin-token-0123456789abcdef0123456789"
    stream = capture(
        admin_tokens=admin,
        redis_url="redis://:url-pass%40word-1@10.0.0.1:6379/0",
        redis_shards="redis://:shard-pass-0@h0:6379/0,rediss://user:shard-pass-1@h1:6380/0",
        recipient_hash_salt="salt-0123456789abcdef",
    )
    get_logger().warning(
        "oops",
        detail=f"Authorization={admin}",
        error="AuthenticationError: url-pass@word-1 shard-pass-0 shard-pass-1",
        salt="salt-0123456789abcdef",
    )
    assert_clean(stream, admin)
    for password in ("url-pass@word-1", "shard-pass-0", "shard-pass-1", "salt-0123456789abcdef"):
        assert_clean(stream, password)
    assert lines(stream)[0]["error"] == "AuthenticationError: *** *** ***"


def test_a_token_put_in_the_tokens_file_after_start_up_is_masked(
    capture: Callable[..., io.StringIO], tmp_path: Path
) -> None:
    """PAGE_ACCESS_TOKENS naming a file: a token rotated into it while the process runs is
    masked as the ones read at start-up are (before, only its access_token= form was)."""
    rotated = "EAArotatedPageToken0123456789abcdef"
    path = tmp_path / "tokens.json"
    path.write_text(orjson.dumps({"100": PAGE_TOKEN}).decode(), encoding="utf-8")
    stream = capture()
    tokens = PageTokens(make_settings(), source=str(path), check_every=0)
    path.write_text(orjson.dumps({"100": rotated}).decode(), encoding="utf-8")
    later = path.stat().st_mtime + 10
    os.utime(path, (later, later))
    assert tokens.get("100") == rotated
    get_logger().warning("graph.refused", detail=f"token {rotated} rejected")
    assert_clean(stream, rotated)
    assert lines(stream)[0]["detail"] == "token *** rejected"

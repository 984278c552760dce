"""Secrets: what the log redactor and the CLI's error line know to mask (review findings).

Redis passwords with a ``;`` (a redis:// URL is not a list of Sentinel nodes), percent-encoded
ones as written, ``?password=`` ones (redis-py reads them), and the ``appsecret_proof`` of every
page token (Graph, or a proxy, may echo it; it is derived from APP_SECRET).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json

import pytest

from worker.config import load_settings, urls
from worker.graph.errors import scrubbed
from worker.logging import REDACTOR, configure_logging, get_logger, redis_passwords

TOKEN = "masking-page-token-77aa"
SECRET = "masking-app-secret-88bb"


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("redis://:semi;colon-pass@h:1/0", "semi;colon-pass"),
        ("redis://u:pct%2Fencoded@h:1/0", "pct%2Fencoded"),
        ("redis://u:pct%2Fencoded@h:1/0", "pct/encoded"),
        ("unix:///run/redis.sock?db=1&password=query-pass-1", "query-pass-1"),
        ("sentinel://:sent-pass-1@a:26379;sentinel://:sent-pass-1@b:26379/0", "sent-pass-1"),
    ],
)
def test_every_redis_password_is_found_and_masked(url: str, password: str) -> None:
    settings = load_settings(redis_url=url)
    assert password in redis_passwords(settings)
    assert password not in urls.redacted(url)
    assert "***" in urls.redacted(url)


def test_redacted_keeps_what_is_no_password() -> None:
    assert urls.redacted("unix:///run/redis.sock?db=1") == "unix:///run/redis.sock?db=1"
    assert urls.redacted("redis://:p4ss@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert urls.redacted("rediss://h:6380/0?password=x1&db=2") == "rediss://h:6380/0?password=***&db=2"


@pytest.mark.parametrize("url", ["redis://:pw/rest@h:1/0", "redis://:pw#rest@h:1/0", "redis://:pw?x@h:1/0"])
def test_a_url_whose_authority_cannot_be_read_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ValueError, match="not a URL that can be read") as caught:
        load_settings(redis_url=url)
    assert "pw" not in str(caught.value).replace("password", "")


def test_page_token_proofs_are_masked_in_logs_and_graph_messages() -> None:
    proof = hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    settings = load_settings(page_access_tokens=json.dumps({"1": TOKEN}), app_secret=SECRET)
    stream = io.StringIO()
    configure_logging(settings, stream=stream)
    get_logger("test").warning("echo", message=f"bad proof {proof} for {TOKEN}")
    assert proof not in stream.getvalue()
    assert TOKEN not in stream.getvalue()
    assert REDACTOR.scrub(json.dumps({"appsecret_proof": proof})) == '{"appsecret_proof": "***"}'
    assert scrubbed(f"Malformed access token other-token-{proof}", ["other-token-"]) == (
        "Malformed access token ******"
    )

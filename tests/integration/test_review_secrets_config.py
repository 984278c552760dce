"""Secrets: an unlucky operator's configuration must not print a secret on the way out.

Real processes (``python -m worker intake|worker|status``), and a password-protected
redis-server for the CLI's error line. The review found:

* PAGE_ACCESS_TOKENS holding one raw long token (or a JSON object quoted once more by an env
  file) was taken for a file name: ``OSError: [Errno 36] File name too long: '<the token>'``, a
  traceback with the whole value;
* a Redis password with an unencoded ``/``, ``?`` or ``#`` (base64 passwords have ``/``) ends the
  URL's authority early: ``ValueError: Port could not be cast to integer value as '<the
  password's head>'``, from the settings (REDIS_SHARDS) or as a traceback (REDIS_URL: intake,
  worker and every CLI command);
* the CLI's "cannot reach Redis at <url>" line printed a password with a ``;`` in full (the URL
  was split as if it listed Sentinel nodes), and a ``?password=`` one (redis-py reads it) as is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HASH_SALT, RedisServer, free_port

pytestmark = pytest.mark.integration

INTAKE = "cfg-intake-token-0123456789abcdefghijklm"
ADMIN = "cfg-admin-token-0123456789abcdefghijklmn"
LONG_TOKEN = "EAAGcfgPageToken" + "Zx9" * 100  # 316 characters, no "/": longer than a file name
PASSWORD_HEAD = "Kq7wPass"  # a password whose "/" is not percent-encoded: its head is what leaked
SLASHED = f"{PASSWORD_HEAD}/Tail9Secret"
SEMICOLON = "semi8Pass;word7Secret"
QUERY_PASSWORD = "query5Password3Secret"
SECRETS = [LONG_TOKEN[:20], PASSWORD_HEAD, SLASHED, SEMICOLON, "semi8Pass", "word7Secret", QUERY_PASSWORD]


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m worker ARGS`` in an empty directory (no .env), to its end."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PAGE_", "INTAKE_", "ADMIN_"))
    }
    clean.update(
        INTAKE_TOKENS=INTAKE,
        ADMIN_TOKENS=ADMIN,
        RECIPIENT_HASH_SALT=HASH_SALT,
        KEY_PREFIX="cfg",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=clean,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def leaked(result: subprocess.CompletedProcess[str]) -> list[str]:
    out = result.stdout + result.stderr
    return [secret for secret in SECRETS if secret in out]


@pytest.mark.parametrize(
    "value",
    [LONG_TOKEN, f'\'{{"100": "{LONG_TOKEN}"}}\''],  # one raw token; JSON quoted by an env file
    ids=["raw-token", "quoted-json"],
)
def test_page_tokens_that_are_no_file_name_are_not_printed(tmp_path: Path, value: str) -> None:
    result = run(["intake", "--port", str(free_port())], tmp_path, PAGE_ACCESS_TOKENS=value)
    assert leaked(result) == [], result.stderr[-2000:]
    assert result.returncode != 0
    assert "PAGE_ACCESS_TOKENS is neither a JSON object nor a readable file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["intake", "--port", "0"], ["worker"], ["status"]])
def test_a_redis_password_with_a_slash_is_not_printed(tmp_path: Path, command: list[str]) -> None:
    result = run(command, tmp_path, REDIS_URL=f"redis://:{SLASHED}@127.0.0.1:1/0")
    assert leaked(result) == [], (result.stdout + result.stderr)[-2000:]
    assert result.returncode != 0
    assert "REDIS_URL is not a URL that can be read" in result.stdout + result.stderr


def test_a_shard_password_with_a_slash_is_not_printed(tmp_path: Path) -> None:
    shards = f"redis://:{SLASHED}@127.0.0.1:1/0,redis://127.0.0.1:2/0"
    result = run(["status"], tmp_path, REDIS_SHARDS=shards)
    assert leaked(result) == [], result.stderr
    assert result.returncode != 0
    assert "REDIS_SHARDS is not a URL that can be read" in result.stderr


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis", extra_args=["--requirepass", "the-right-one-1234"])
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:{semicolon}@127.0.0.1:{port}/0",  # a ";" in a redis:// password
        "redis://127.0.0.1:{port}/0?password={query}",  # redis-py's ?password=
        "redis://127.0.0.1:1/0?password={query}",  # and nothing listening
    ],
    ids=["semicolon", "query", "query-down"],
)
def test_the_cli_error_line_masks_every_redis_password(
    tmp_path: Path, locked_redis: RedisServer, url: str
) -> None:
    redis_url = url.format(semicolon=SEMICOLON, query=QUERY_PASSWORD, port=locked_redis.port)
    result = run(["status"], tmp_path, REDIS_URL=redis_url)
    assert leaked(result) == [], result.stderr
    assert result.returncode == 1
    assert "cannot reach Redis at" in result.stderr  # a wrong password: no shard answers
    assert "***" in result.stderr

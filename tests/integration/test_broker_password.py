"""A REDIS_URL whose password is in the query (``?password=``, which redis-py reads and the
settings accept) reaches Celery's broker too: real worker processes against a redis-server
started with ``--requirepass``.

kombu took each query key for a keyword argument of its Connection: the worker stopped at start
with ``TypeError: dict() got multiple values for keyword argument 'password'`` while the intake,
on redis-py, ran. A unix:// URL is no kombu transport at all: the broker gets kombu's
``redis+socket://`` form of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tests.conftest import HASH_SALT, RedisServer, Stack, _need_redis, free_port, start_process, wait_until

pytestmark = pytest.mark.integration

#: Every character a URL reserves but "%" (redis-py decodes a query value twice: a "%" would
#: have to be written as "%2525")
PASSWORD = "Br0ker-p@ss:w/rd?#&+;x"
#: The password as it may show: as is, percent-encoded (in a URL), and its parts around a ";"
#: (kombu split a URL there) or a "/" or "?" (where a URL's authority ended)
FORMS = [PASSWORD, quote(PASSWORD, safe=""), "Br0ker-p@ss", "rd?#&+"]


@pytest.fixture
def locked_redis() -> Iterator[tuple[RedisServer, Path]]:
    """A redis-server that wants PASSWORD, on a TCP port and a unix socket (in a short directory
    of its own: a socket path is at most 107 bytes)."""
    _need_redis()
    short = Path(tempfile.mkdtemp(prefix="bmw-broker-"))
    socket = short / "redis.sock"
    server = RedisServer(
        free_port(),
        short / "data",
        extra_args=["--requirepass", PASSWORD, "--unixsocket", str(socket), "--unixsocketperm", "700"],
    )
    server.start()
    yield server, socket
    server.stop()
    shutil.rmtree(short, ignore_errors=True)


def leaked(stack: Stack) -> list[str]:
    text = "".join(proc.log.read_text(encoding="utf-8", errors="replace") for proc in stack.procs)
    return [form for form in FORMS if form in text]


def round_trip(stack: Stack, psid: str) -> None:
    """One message through intake, queue and a real worker to the sandbox's Send API."""
    stack.start_intake()
    worker = stack.start_worker()
    resp = stack.post({"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}})
    assert resp.status_code == 202, resp.text
    delivery_id = resp.json()["delivery_id"]
    assert wait_until(lambda: stack.delivery(delivery_id)["status"] == "sent", 30), worker.tail()
    assert len(stack.sandbox.calls(psid=psid)) == 1


def kombu_bindings(client: Any, stack: Stack) -> int:
    """How many of the stack queue's kombu binding keys ``client``'s database holds."""
    return int(client.exists(f"_kombu.binding.{stack.queue}"))


@pytest.mark.parametrize("db", [None, 2], ids=["path-db", "query-db"])
def test_a_worker_given_a_query_password_delivers(
    make_stack: Any, locked_redis: tuple[RedisServer, Path], db: int | None
) -> None:
    """With redis-py's connection settings in the query too (kombu took them for keyword
    arguments of its Connection: TypeError at start)."""
    server, _ = locked_redis
    query = (f"db={db}&" if db is not None else "") + "password=" + quote(PASSWORD, safe="")
    query += "&socket_timeout=30&health_check_interval=10"
    stack: Stack = make_stack(redis_url=f"redis://127.0.0.1:{server.port}/0?{query}")
    round_trip(stack, f"broker-pw-{db}")
    assert leaked(stack) == []
    # the broker uses the database redis-py does (?db= wins over the path): the intake's queue
    for number in (0, 2):
        client = redis.Redis(port=server.port, password=PASSWORD, db=number)
        assert kombu_bindings(client, stack) == int(number == (db or 0)), number
        client.close()


def test_a_worker_on_a_unix_socket_with_a_query_password_delivers(
    make_stack: Any, locked_redis: tuple[RedisServer, Path]
) -> None:
    _, socket = locked_redis
    stack: Stack = make_stack(redis_url=f"unix://{socket}?db=1&password={quote(PASSWORD, safe='')}")
    round_trip(stack, "broker-pw-unix")
    assert leaked(stack) == []
    client = redis.Redis(unix_socket_path=str(socket), password=PASSWORD, db=1)
    assert kombu_bindings(client, stack) == 1
    client.close()


def test_a_wrong_query_password_is_not_printed_by_celery(
    make_stack: Any, locked_redis: tuple[RedisServer, Path]
) -> None:
    """Celery's "Cannot connect to <broker>" lines: the password is masked. (Started by hand:
    this worker never gets ready.)"""
    server, _ = locked_redis
    wrong = "Wr0ng-" + PASSWORD
    stack: Stack = make_stack(redis_url=f"redis://127.0.0.1:{server.port}/0?password={quote(wrong, safe='')}")
    proc = start_process("worker", ["worker", "--concurrency", "1"], stack.env, stack.log_dir)
    stack.procs.append(proc)
    assert wait_until(lambda: "Cannot connect to" in proc.tail(200), 30), proc.tail()
    proc.stop()
    text = proc.log.read_text(encoding="utf-8", errors="replace")
    assert f"redis://:**@127.0.0.1:{server.port}/0" in text
    assert [form for form in [wrong, quote(wrong, safe=""), *FORMS] if form in text] == []


def test_a_unix_url_the_broker_cannot_take_is_refused_in_one_line(tmp_path: Path) -> None:
    """kombu would pass a query key it has no use for (not a password, a db or one of redis-py's
    connection settings) to redis-py as a string: the worker says so and stops, without a
    traceback and without the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "PAGE_", "INTAKE_", "ADMIN_"))}
    env.update(
        REDIS_URL=f"unix://{tmp_path}/none.sock?foo=3&socket_timeout=3&password={quote(PASSWORD, safe='')}",
        INTAKE_TOKENS="broker-intake-token-0123456789abcdefghij",
        ADMIN_TOKENS="broker-admin-token-0123456789abcdefghijk",
        RECIPIENT_HASH_SALT=HASH_SALT,
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "worker", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "REDIS_URL: Celery's broker cannot take the query keys ['foo'] of a unix:// URL" in out
    assert "Traceback" not in out
    assert [form for form in FORMS if form in out] == []

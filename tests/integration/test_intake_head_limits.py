"""The intake's request heads, against a real ``messenger-worker intake`` (worker/intake/protocol.py):
a client that trickles its headers, or sends them without end, is answered and cut off before the
app, in JSON, and does not hold the connection; other requests go on meanwhile."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.integration


def _stack(make_stack: Any) -> Stack:
    stack: Stack = make_stack(
        INTAKE_HEADER_SECONDS="1", INTAKE_MAX_HEADER_BYTES="16384", INTAKE_KEEPALIVE_SECONDS="2"
    )
    stack.start_intake()
    return stack


def _connect(stack: Stack) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", stack.intake_port), timeout=10)
    conn.settimeout(10)
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict[str, Any], bytes]:
    """The status, the JSON body and what followed (b"" once the intake closed the connection)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        body += conn.recv(65536)
    assert "connection: close" in (line.lower() for line in lines)
    return int(lines[0].split()[1]), orjson.loads(body[:length]), conn.recv(1)


def test_headers_trickled_past_the_deadline_are_answered_408_and_cut_off(make_stack: Any) -> None:
    """Before, the intake waited for the headers as long as the client sent a byte now and then:
    a few hundred such clients held every slot of INTAKE_LIMIT_CONCURRENCY."""
    stack = _stack(make_stack)
    conn = _connect(stack)
    started = time.monotonic()
    conn.sendall(b"POST /v25.0/100/messages HTTP/1.1\r\nHost: x\r\n")
    try:
        for n in range(30):  # a header every 0.2 s: never a whole head
            conn.sendall(f"X-Slow-{n}: 1\r\n".encode())
            time.sleep(0.2)
    except OSError:
        pass  # the intake closed the connection: what is asserted below
    status, body, after = _answer(conn)
    assert (status, body["error"]["code"]) == (408, "header_timeout")
    assert after == b""
    assert time.monotonic() - started < 4
    assert httpx.get(f"{stack.intake_url}/healthz", timeout=5).status_code == 200  # others are served


def test_headers_over_the_limit_are_answered_431_before_the_app(make_stack: Any) -> None:
    stack = _stack(make_stack)
    conn = _connect(stack)
    head = b"POST /v25.0/100/messages HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"X-Big-{n}: {'a' * 1000}\r\n".encode() for n in range(40)
    )
    with contextlib.suppress(OSError):  # the intake may close the connection before it has all
        conn.sendall(head)
    status, body, after = _answer(conn)
    assert (status, body["error"]["code"]) == (431, "headers_too_large")
    assert after == b""
    # a head within the limit (15 headers of 1,000 bytes) reaches the app: its token is checked
    ok = _connect(stack)
    ok.sendall(
        b"GET /v1/deliveries/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"".join(f"X-Big-{n}: {'a' * 1000}\r\n".encode() for n in range(15))
        + b"\r\n"
    )
    status, body, _ = _answer(ok)
    assert status == 401, body


def test_a_connection_that_sends_nothing_is_closed_after_the_keep_alive(make_stack: Any) -> None:
    stack = _stack(make_stack)
    conn = _connect(stack)
    started = time.monotonic()
    assert conn.recv(1) == b""  # closed by the intake, not by this timeout (10 s)
    assert 1.5 < time.monotonic() - started < 6

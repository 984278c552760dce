"""Secrets: Graph echoes what it was sent, and its message must not carry a token out.

Graph's error messages can quote the call: "Malformed access token EAAB..." (code 190), a
gateway's or a proxy's error that names the request URL (its ``access_token`` and
``appsecret_proof`` query). That message is stored in the delivery's record in Redis (open, final
and dead letter), shown by ``GET /v1/deliveries/{id}`` and the dead-letter listing, and logged.
The review found the page token stored and served in clear, and an ``appsecret_proof`` quoted in
a template sync's error logged in clear (the log redactor knew the tokens, not their proofs).

A real intake and worker, a password-protected redis-server, and a Graph of our own (a thread of
this test) that quotes the token and the proof back in every error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from tests.conftest import RedisServer, Sandbox, Stack, base_env, free_port, wait_until

pytestmark = pytest.mark.integration

TOKENS = {page: f"echo-page-token-{page}-Zq81xWv" for page in ("100", "200", "300")}
APP_SECRET = "echo-app-secret-7c1f0b2e9d"
REDIS_PASSWORD = "echo-redis-password-4e5d"
INTAKE = "echo-intake-token-0123456789abcdefghijk"
ADMIN = "echo-admin-token-0123456789abcdefghijkl"


def proof(token: str) -> str:
    return hmac.new(APP_SECRET.encode(), token.encode(), hashlib.sha256).hexdigest()


SECRETS = [*TOKENS.values(), *(proof(t) for t in TOKENS.values()), APP_SECRET, REDIS_PASSWORD, INTAKE, ADMIN]


def leaks(text: str) -> list[str]:
    """Each secret (or its first 12 characters) found in ``text``."""
    return [secret for secret in SECRETS if secret[:12] in text]


class EchoingGraph(BaseHTTPRequestHandler):
    """Every error quotes the call's token and proof back, as Graph's own messages can."""

    def log_message(self, *_args: Any) -> None:
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _query(self) -> tuple[str, str]:
        query = parse_qs(urlsplit(self.path).query)
        return query.get("access_token", [""])[0], query.get("appsecret_proof", [""])[0]

    def do_GET(self) -> None:  # the template sync: /{page}/message_templates
        token, sent_proof = self._query()
        message = f"Malformed access token {token} (proof {sent_proof})"
        self._answer(400, {"error": {"message": message, "type": "OAuthException", "code": 190}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        psid = body.get("recipient", {}).get("id", "")
        token, sent_proof = self._query()
        if psid.startswith("malformed"):  # 190: the page pauses, the delivery waits (open record)
            error = {"message": f"Malformed access token {token}", "type": "OAuthException", "code": 190}
            self._answer(400, {"error": error})
        elif psid.startswith("unknown"):  # 1: retried, then a dead letter
            error = {"message": f"An unknown error occurred: {self.path}", "code": 1, "is_transient": True}
            self._answer(500, {"error": error, "fbtrace_id": sent_proof})
        elif psid.startswith("quoted"):  # 100: failed at once; the proof quoted as JSON, not as a query
            quoted = json.dumps({"appsecret_proof": sent_proof, "token": token})
            self._answer(400, {"error": {"message": f"(#100) Invalid parameter {quoted}", "code": 100}})
        else:
            self._answer(200, {"recipient_id": psid, "message_id": f"m_{psid}"})


@pytest.fixture
def echoing_graph() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingGraph)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis", extra_args=["--requirepass", REDIS_PASSWORD])
    server.start()
    yield server
    server.stop()


def redis_dump(client: Any) -> str:
    """Every key and value, as text (MessagePack and JSON values included, as their bytes' repr)."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        readers: dict[str, Any] = {
            "string": client.get,
            "hash": client.hgetall,
            "list": lambda k: client.lrange(k, 0, -1),
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "stream": client.xrange,
        }
        value = readers[kind](key) if kind in readers else kind
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def test_graph_echoing_a_token_or_proof_leaks_it_nowhere(
    tmp_path: Path, sandbox: Sandbox, echoing_graph: str, locked_redis: RedisServer
) -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    env = base_env(
        url,
        echoing_graph,
        INTAKE_TOKENS=INTAKE,
        ADMIN_TOKENS=ADMIN,
        PAGE_ACCESS_TOKENS=json.dumps(TOKENS),
        APP_SECRET=APP_SECRET,
        MAX_ATTEMPTS="2",
        TEMPLATE_SYNC_SECONDS="1",
    )
    stack = Stack(env, sandbox, url, tmp_path / "logs")
    try:
        stack.start_intake()
        stack.start_worker()
        sends = {"malformed-1": "100", "unknown-1": "200", "quoted-1": "300"}
        ids = {}
        for psid, page in sends.items():
            resp = httpx.post(
                f"{stack.intake_url}/v25.0/{page}/messages",
                json={"recipient": {"id": psid}, "message": {"text": "hi"}},
                headers={"Authorization": f"Bearer {INTAKE}"},
                timeout=10,
            )
            assert resp.status_code == 202, resp.text
            ids[psid] = resp.json()["delivery_id"]
        admin = {"Authorization": f"Bearer {ADMIN}"}

        def view(delivery_id: str) -> dict[str, Any]:
            resp = httpx.get(f"{stack.intake_url}/v1/deliveries/{delivery_id}", headers=admin, timeout=10)
            resp.raise_for_status()
            result: dict[str, Any] = resp.json()
            return result

        expected = {"malformed-1": "scheduled", "unknown-1": "dead", "quoted-1": "failed"}
        assert wait_until(
            lambda: all(
                view(ids[p]).get("status") == s and view(ids[p]).get("error") for p, s in expected.items()
            ),
            30,
        ), {p: view(ids[p]) for p in ids}
        views = {p: view(ids[p]) for p in ids}
        assert views["malformed-1"]["error"]["code"] == 190
        assert views["malformed-1"]["error"]["message"] == "Malformed access token ***"  # still telling
        for psid, shown in views.items():
            assert leaks(json.dumps(shown)) == [], (psid, shown)
        dead = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=admin, timeout=10)
        assert dead.status_code == 200
        assert ids["unknown-1"] in dead.text
        assert leaks(dead.text) == [], dead.text
        # the template sync (every second) failed with the token and proof quoted: logged, masked
        assert wait_until(lambda: any(e.get("event") == "templates.sync_failed" for e in stack.logs()), 20)
        stack.stop()
        dump = redis_dump(redis.Redis.from_url(url))
        assert ids["malformed-1"] in dump  # the open record is there to be read
        assert leaks(dump) == [], [line for line in dump.splitlines() if leaks(line)][:5]
        logs = "\n".join(proc.log.read_text(encoding="utf-8", errors="replace") for proc in stack.procs)
        assert leaks(logs) == [], [line for line in logs.splitlines() if leaks(line)][:5]
    finally:
        stack.stop()

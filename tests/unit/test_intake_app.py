"""The intake app without Redis: refusals in one JSON shape (raised by routes, answered by the
app's handlers, counted per route), and the memory gate's once-a-second admission."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from worker.config import Settings
from worker.intake import create_app, guard
from worker.intake.guard import MemoryGate
from worker.messenger.errors import InputError
from worker.status import MemoryGuard

TOKEN = "tok-intake-abcdef-0123456789abcdefghij"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = "tok-admin-abcdef-0123456789abcdefghij"
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
BODY = {"recipient": {"id": "1"}, "message": {"text": "hi"}}


def settings(**extra: Any) -> Settings:
    return Settings(
        page_access_tokens={"100": "tok-page-100-abcdef"},
        intake_tokens=[TOKEN],
        admin_tokens=[ADMIN],
        redis_url="redis://127.0.0.1:1/0",  # never reached: these requests need no Redis
        _env_file=None,
        **extra,
    )


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings())) as test_client:
        yield test_client


def counted(route: str, status: int) -> float:
    value = REGISTRY.get_sample_value("bmw_intake_requests_total", {"route": route, "status": str(status)})
    return value or 0.0


def error_of(response: Any) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body["error"]) == {"code", "message"}
    return response.status_code, body["error"]["code"]


def test_refusals_have_one_shape_and_are_counted(client: TestClient) -> None:
    before = {s: counted("send", s) for s in (401, 415, 422, 400)}
    assert error_of(client.post("/me/messages", json=BODY)) == (401, "unauthorized")
    assert error_of(client.post("/me/messages", content=b"{}", headers=AUTH)) == (
        415,
        "unsupported_media_type",
    )
    assert error_of(client.post("/v25.0/999/messages", json=BODY, headers=AUTH)) == (422, "no_page_token")
    bad_json = {**AUTH, "Content-Type": "application/json"}
    assert error_of(client.post("/me/messages", content=b"{nope", headers=bad_json)) == (400, "invalid_json")
    assert {s: counted("send", s) - before[s] for s in before} == {401: 1, 415: 1, 422: 1, 400: 1}


def test_unknown_routes_methods_and_actions(client: TestClient) -> None:
    assert error_of(client.get("/nope")) == (404, "not_found")
    assert error_of(client.get("/me/messages")) == (405, "method_not_allowed")
    assert error_of(client.post("/v1/dead-letters/explode", headers=ADMIN_AUTH)) == (404, "not_found")
    too_long = "x" * 65
    assert error_of(client.get(f"/v1/deliveries/{too_long}", headers=AUTH)) == (404, "not_found")


def test_a_replay_or_purge_body_must_say_what_it_selects(client: TestClient) -> None:
    """A misspelt key (``page_idd``), an empty page id or an empty body was read as no filter:
    every dead letter replayed or purged."""
    for body in ({}, {"page_idd": "9"}, {"limit": 5}, {"all": False}, {"dry_run": True}):
        assert error_of(client.post("/v1/dead-letters/purge", json=body, headers=ADMIN_AUTH)) == (
            422,
            "invalid_body",
        ), body
    for body in ({"all": "yes"}, {"dry_run": 1}, {"all": True, "extra": 1}):
        resp = client.post("/v1/dead-letters/replay", json=body, headers=ADMIN_AUTH)
        assert error_of(resp) == (422, "invalid_body"), body
    assert error_of(client.post("/v1/dead-letters/purge", content=b"", headers=ADMIN_AUTH)) == (
        422,
        "invalid_body",
    )
    resp = client.post("/v1/dead-letters/purge", json={"page_id": ""}, headers=ADMIN_AUTH)
    assert error_of(resp) == (422, "invalid_filter")
    resp = client.get("/v1/dead-letters", params={"page_id": ""}, headers=ADMIN_AUTH)
    assert error_of(resp) == (422, "invalid_filter")


def test_dead_letter_filters_must_be_finite_numbers(client: TestClient) -> None:
    for params in (
        {"older_than": "nan"},
        {"older_than": "inf"},
        {"code": "x"},
        {"limit": "1e400"},
        {"limit": "0"},  # was read as the default 1000
        {"limit": "-1"},  # was a slice of the ids given, dropping them without a word
    ):
        resp = client.get("/v1/dead-letters", params=params, headers=ADMIN_AUTH)
        assert error_of(resp) == (422, "invalid_filter"), params
    resp = client.post("/v1/dead-letters/purge", json={"older_than": "-inf"}, headers=ADMIN_AUTH)
    assert error_of(resp) == (422, "invalid_filter")
    # a body's page_id false, or a code 1.5, was read as "every page" or code 1
    for body in ({"page_id": False}, {"page_id": " "}, {"page_id": [1]}, {"code": 1.5}, {"code": True}):
        resp = client.post("/v1/dead-letters/purge", json=body, headers=ADMIN_AUTH)
        assert error_of(resp) == (422, "invalid_filter"), body
    assert error_of(client.post("/v1/dead-letters/purge", json=[1], headers=ADMIN_AUTH)) == (
        422,
        "invalid_body",
    )


def test_the_webhook_without_app_secret_is_not_configured(client: TestClient) -> None:
    assert error_of(client.post("/messenger/webhook", content=b"{}")) == (503, "not_configured")
    assert error_of(client.get("/messenger/webhook", params={"hub.mode": "subscribe"})) == (403, "forbidden")


def test_the_webhook_refuses_unsigned_and_badly_signed_events() -> None:
    with TestClient(create_app(settings(app_secret="app-secret-0123456789"))) as client:
        assert error_of(client.post("/messenger/webhook", content=b"{}")) == (401, "missing_signature")
        bad = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
        assert error_of(client.post("/messenger/webhook", content=b"{}", headers=bad)) == (
            403,
            "bad_signature",
        )


class FakeRedis:
    def __init__(self, used: int, maxmemory: int, latency: float = 0.0) -> None:
        self.used = used
        self.maxmemory = maxmemory
        self.latency = latency
        self.calls = 0

    async def info(self, section: str) -> dict[str, int]:
        assert section == "memory"
        self.calls += 1
        await asyncio.sleep(self.latency)
        return {"used_memory": self.used, "maxmemory": self.maxmemory}


def test_the_gate_asks_redis_at_most_once_a_second_and_opens_only_with_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guard, "OPEN_FOR_SECONDS", 0.05)

    async def scenario() -> None:
        redis = FakeRedis(used=95, maxmemory=100)
        gate = MemoryGate(MemoryGuard(0.9), redis)
        assert not gate.open
        assert not await gate.admit()
        assert await asyncio.gather(*(gate.admit() for _ in range(20))) == [False] * 20
        assert (redis.calls, gate.open, gate.accepting) == (1, False, False)
        redis.used = 10
        assert not await gate.admit()  # the guard's answer holds for a second
        gate.guard.checked_at = -1e9  # ... which has passed
        assert await gate.admit()
        assert (redis.calls, gate.open, gate.accepting) == (2, True, True)
        await asyncio.sleep(0.1)
        assert not gate.open  # shut again: the next request asks the guard
        gate.close()

    asyncio.run(scenario())


def test_a_headroom_of_one_keeps_the_gate_open_without_asking() -> None:
    gate = MemoryGate(MemoryGuard(1.0), FakeRedis(used=100, maxmemory=100))
    assert gate.open


def test_a_full_reading_shuts_the_gate_that_requests_during_the_read_opened() -> None:
    async def scenario() -> None:
        redis = FakeRedis(used=95, maxmemory=100, latency=0.01)
        gate = MemoryGate(MemoryGuard(0.9), redis)
        answers = await asyncio.gather(*(gate.admit() for _ in range(20)))
        assert redis.calls == 1
        assert answers[0] is False  # the request that read INFO; the others got the old answer
        assert (gate.open, gate.accepting) == (False, False)
        assert not await gate.admit()
        gate.close()

    asyncio.run(scenario())


WEBHOOK_SECRET = "app-secret-0123456789"


def webhook_call(
    headers: dict[str, str], chunks: int = 16, chunk: int = 64 * 1024, stall_after: int | None = None
) -> tuple[int, int]:
    """POST /messenger/webhook straight through the ASGI app with a body of ``chunks`` chunks
    (``stall_after``: the client sends that many, then nothing, as a slow-body attack does);
    returns (status, how many chunks the app pulled from the client)."""
    app = create_app(settings(app_secret=WEBHOOK_SECRET, intake_body_seconds=0.3))
    pulled = 0
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if stall_after is not None and pulled >= stall_after:
            await asyncio.sleep(3600)
        if pulled >= chunks:
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": b" " * chunk, "more_body": pulled < chunks}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/messenger/webhook",
        "raw_path": b"/messenger/webhook",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    asyncio.run(scenario())
    return status, pulled


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),  # no signature at all
        ({"X-Hub-Signature-256": "nonsense"}, 403),
        ({"X-Hub-Signature-256": "sha1=" + "a" * 40}, 403),
        ({"X-Hub-Signature-256": "sha256=" + "z" * 64}, 403),
        # a well-formed signature but a declared body over the limit
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64, "Content-Length": str(2 * 1024 * 1024)}, 413),
    ],
)
def test_the_webhook_refuses_before_reading_the_body(headers: dict[str, str], status: int) -> None:
    assert webhook_call(headers) == (status, 0)


def test_the_webhook_reads_no_more_than_its_limit() -> None:
    """A well-formed signature without Content-Length: the body is cut off at the limit (1 MiB)."""
    got, pulled = webhook_call({"X-Hub-Signature-256": "sha256=" + "0" * 64}, chunks=64)
    assert got == 413
    assert pulled == 17  # 16 x 64 KiB = the limit, the 17th crosses it


def test_a_body_that_stops_arriving_is_refused_at_the_body_deadline() -> None:
    """An unauthenticated sender trickling a body (a well-formed signature is all it needs to be
    read) gets 408 after INTAKE_BODY_SECONDS instead of holding the connection."""
    assert webhook_call({"X-Hub-Signature-256": "sha256=" + "0" * 64}, chunks=4, stall_after=1) == (408, 1)


def test_a_wrong_signature_is_refused_after_reading_the_body() -> None:
    assert webhook_call({"X-Hub-Signature-256": "sha256=" + "0" * 64}, chunks=2) == (403, 2)


def test_unreachable_redis_is_503_unavailable_and_a_missing_key_is_warned_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis refuses the connection: nothing can have been stored, 503 ``unavailable`` with
    Retry-After. A request without Idempotency-Key is warned about, once per interval."""
    from worker.intake import notices
    from worker.intake.routes import send

    lines: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

    monkeypatch.setattr(notices, "log", Recorder())
    monkeypatch.setattr(send, "NO_KEY_WARNING", notices.Throttled("intake.no_idempotency_key", every=60.0))
    with TestClient(create_app(settings(redis_memory_headroom=1))) as client:  # no INFO read
        for _ in range(3):
            resp = client.post("/v25.0/100/messages", json=BODY, headers=AUTH)
            assert error_of(resp) == (503, "unavailable")
            assert resp.headers["retry-after"].isdigit()
        keyed = client.post("/v25.0/100/messages", json=BODY, headers={**AUTH, "Idempotency-Key": "k-1"})
        assert error_of(keyed) == (503, "unavailable")
    assert [(event, fields["count"]) for event, fields in lines] == [("intake.no_idempotency_key", 1)]
    assert send.NO_KEY_WARNING.count == 2  # counted for the next line


def test_a_stalled_memory_read_is_answered_within_the_deadline() -> None:
    from worker.intake.committer import NotStored
    from worker.intake.routes.send import _admit

    async def scenario() -> float:
        gate = MemoryGate(MemoryGuard(0.9), FakeRedis(used=10, maxmemory=100, latency=30))
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(NotStored):
            await _admit(gate, 0.2)
        gate.close()
        return loop.time() - started

    assert asyncio.run(scenario()) < 1


# --- the send route's headers (checked before anything is stored) ----------------------------------
@pytest.fixture
def no_redis() -> Iterator[TestClient]:
    """Redis refuses the connection: a request that passes every check is 503 ``unavailable``."""
    with TestClient(create_app(settings(redis_memory_headroom=1))) as test_client:  # no INFO read
        yield test_client


def post_send(client: TestClient, headers: dict[str, str | bytes]) -> Any:
    return client.post(
        "/v25.0/100/messages",
        json=BODY,
        headers={**AUTH, "Content-Type": "application/json", "Idempotency-Key": "k-hdr", **headers},
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",  # Braze's webhook template
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        " application/json ",
        "application/vnd.api+json",
        "application/merge-patch+json; charset=utf-8",
    ],
)
def test_a_json_media_type_passes(content_type: str) -> None:
    from worker.intake.routes.send import is_json_media_type

    assert is_json_media_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        "",
        "multipart/form-data; boundary=json",
        "text/json",
        "application/jsonp",
        "application/json-seq",
        "application/x-www-form-urlencoded; note=json",
        "application/+json",
        "application/a b+json",
        "application/json/x",
        "application/vnd.a+json+x",
        "json",
    ],
)
def test_any_other_media_type_is_415(content_type: str) -> None:
    from worker.intake.routes.send import is_json_media_type

    assert not is_json_media_type(content_type)


def test_the_route_takes_only_a_json_media_type(no_redis: TestClient) -> None:
    multipart = post_send(no_redis, {"Content-Type": "multipart/form-data; boundary=json"})
    assert error_of(multipart) == (415, "unsupported_media_type")
    for braze in ("application/json", "application/json; charset=utf-8"):
        assert error_of(post_send(no_redis, {"Content-Type": braze})) == (503, "unavailable")


def test_x_request_id_is_bounded_and_printable_ascii() -> None:
    from worker.intake.routes.send import MAX_REQUEST_ID, request_id_of

    assert request_id_of({}) is None
    assert request_id_of({b"x-request-id": ""}) is None  # none is made up
    longest = "r-" + "9" * (MAX_REQUEST_ID - 2)
    assert request_id_of({b"x-request-id": longest}) == longest
    assert request_id_of({b"x-request-id": "req 1/a~!"}) == "req 1/a~!"
    for bad in (longest + "9", "r" * 1_000_000, "a\x00b", "a\tb", "a\x7fb", "Jos\xc3\xa9"):
        with pytest.raises(InputError) as caught:
            request_id_of({b"x-request-id": bad})
        assert (caught.value.status, caught.value.code) == (422, "invalid_request_id")


def test_a_bad_x_request_id_is_refused_before_anything_is_stored(no_redis: TestClient) -> None:
    for bad in ("r" * 201, "caf\xc3\xa9".encode("latin-1"), b"a\x01b"):
        assert error_of(post_send(no_redis, {"X-Request-Id": bad})) == (422, "invalid_request_id")
    assert error_of(post_send(no_redis, {"X-Request-Id": "r" * 200})) == (503, "unavailable")


def test_x_braze_external_id_is_read_as_utf8_and_counted_in_characters() -> None:
    from worker.intake.routes.send import MAX_EXTERNAL_ID, _send_headers, external_id_of

    def read(value: bytes) -> str:
        return external_id_of(_send_headers([(b"x-braze-external-id", value)]))

    assert external_id_of({}) == ""
    assert read("José".encode()) == "José"
    assert read(" Jà ".encode()) == "Jà"  # à is C3 A0: stripped after decoding, not before
    assert read(("é" * MAX_EXTERNAL_ID).encode()) == "é" * MAX_EXTERNAL_ID  # 400 bytes, 200 chars
    for bad in (("é" * (MAX_EXTERNAL_ID + 1)).encode(), "José".encode("latin-1"), b"\xff\xfe"):
        with pytest.raises(InputError) as caught:
            read(bad)
        assert (caught.value.status, caught.value.code) == (422, "invalid_external_id")


def test_the_route_counts_the_external_id_in_utf8_characters(no_redis: TestClient) -> None:
    """(The test client re-encodes header values as UTF-8: bytes that are not UTF-8 cannot be
    sent through it; the test above reads them.)"""
    longest = post_send(no_redis, {"X-Braze-External-Id": ("é" * 200).encode()})  # 400 bytes
    assert error_of(longest) == (503, "unavailable")
    too_long = post_send(no_redis, {"X-Braze-External-Id": ("é" * 201).encode()})
    assert error_of(too_long) == (422, "invalid_external_id")

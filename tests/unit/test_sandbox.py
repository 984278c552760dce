"""The Send API sandbox: Graph-like answers, reserved PSIDs, control endpoints, a real connection drop."""

from __future__ import annotations

import gc
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.testclient import TestClient

from worker.sandbox import (
    DEPRECATED_TAGS,
    SANDBOX_TOKEN_PREFIX,
    VALID_TAGS,
    ConnectionDropped,
    SandboxConfig,
    create_app,
    sandbox_token,
)

PAGE = "1001"
TOKEN = sandbox_token(PAGE)
ME = "/v25.0/me/messages"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def body(psid: str = "u1", **fields: Any) -> dict[str, Any]:
    """A valid text message to ``psid``; keyword arguments override or add fields (None removes)."""
    payload: dict[str, Any] = {
        "recipient": {"id": psid},
        "messaging_type": "RESPONSE",
        "message": {"text": "hello"},
    }
    for key, value in fields.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def send(
    client: TestClient, psid: str = "u1", *, token: str | None = TOKEN, path: str = ME, **fields: Any
) -> httpx.Response:
    params = {"access_token": token} if token is not None else {}
    response: httpx.Response = client.post(path, params=params, json=body(psid, **fields))
    return response


def graph_error(response: httpx.Response) -> dict[str, Any]:
    payload = response.json()
    assert set(payload) == {"error"}
    error: dict[str, Any] = payload["error"]
    assert error["type"] == "OAuthException"
    assert isinstance(error["fbtrace_id"], str)
    assert len(error["fbtrace_id"]) == 11
    assert isinstance(error["is_transient"], bool)
    return error


def calls(client: TestClient, **params: str | int) -> list[dict[str, Any]]:
    response = client.get("/__sandbox/calls", params=params)
    assert response.status_code == 200
    result: list[dict[str, Any]] = response.json()["calls"]
    return result


# ------------------------------------------------------------------------------------------------
# Success


def test_sandbox_token_convention() -> None:
    assert SANDBOX_TOKEN_PREFIX == "sandbox-token-"
    assert sandbox_token("42") == "sandbox-token-42"


def test_json_send_succeeds_with_unique_message_ids(client: TestClient) -> None:
    first = send(client, "psid-1")
    second = send(client, "psid-1")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.headers["facebook-api-version"] == "v25.0"
    payload = first.json()
    assert set(payload) == {"recipient_id", "message_id"}
    assert payload["recipient_id"] == "psid-1"
    assert payload["message_id"].startswith("m_")
    assert second.json()["message_id"] != payload["message_id"]


def test_form_encoded_send_like_metas_curl_samples(client: TestClient) -> None:
    strict = client.post(
        f"/v24.0/{PAGE}/messages",
        data={
            "recipient": json.dumps({"id": "f1"}),
            "messaging_type": "UPDATE",
            "message": json.dumps({"text": "hello, world"}),
            "access_token": TOKEN,
        },
    )
    assert strict.status_code == 200, strict.text
    assert strict.json()["recipient_id"] == "f1"
    assert strict.headers["facebook-api-version"] == "v24.0"
    # Meta's sample: -d "recipient={'id':'{PSID}'}" -d "message={'text':'hello, world'}"
    quoted = client.post(
        ME,
        params={"access_token": TOKEN},
        content=b"recipient={'id':'f2'}&messaging_type=RESPONSE&message={'text':'hello'}",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert quoted.status_code == 200, quoted.text
    recorded = calls(client, psid="f1")[0]
    assert recorded["body"]["recipient"] == {"id": "f1"}
    assert recorded["body"]["message"] == {"text": "hello, world"}
    assert recorded["messaging_type"] == "UPDATE"


def test_sender_action_answers_recipient_only(client: TestClient) -> None:
    response = send(client, "u9", message=None, messaging_type=None, sender_action="typing_on")
    assert response.status_code == 200
    assert response.json() == {"recipient_id": "u9"}
    assert client.get("/__sandbox/stats").json() == {"calls": 1, "sent": 0, "errors": 0}


# ------------------------------------------------------------------------------------------------
# Tokens


def test_missing_token(client: TestClient) -> None:
    response = send(client, token=None)
    assert response.status_code == 400
    assert response.headers["facebook-api-version"] == "v25.0"
    error = graph_error(response)
    assert error["code"] == 190
    assert "error_subcode" not in error
    assert (
        error["message"] == "An active access token must be used to query information about the current user."
    )
    assert error["is_transient"] is False


def test_unknown_token(client: TestClient) -> None:
    error = graph_error(send(client, token="EAAG-not-ours"))
    assert error["code"] == 190
    assert error["message"] == "Invalid OAuth access token - Cannot parse access token"


def test_expired_sandbox_token(client: TestClient) -> None:
    response = send(client, token="sandbox-token-expired-123")
    assert response.status_code == 400
    error = graph_error(response)
    assert (error["code"], error["error_subcode"]) == (190, 463)
    assert error["message"] == "Error validating access token: Session has expired"


def test_token_of_another_page(client: TestClient) -> None:
    error = graph_error(send(client, path="/v25.0/2002/messages"))
    assert error["code"] == 190
    assert error["message"] == "(#190) The access token does not belong to this page"
    assert send(client, path=f"/v25.0/{PAGE}/messages").status_code == 200


def test_bearer_header_and_explicit_token_map() -> None:
    with TestClient(create_app(SandboxConfig(tokens={"EAAB-real-looking": "777"}))) as client:
        response = client.post(
            "/v25.0/777/messages", json=body("b1"), headers={"Authorization": "Bearer EAAB-real-looking"}
        )
        assert response.status_code == 200, response.text
        assert send(client, "b2", token="EAAB-real-looking").status_code == 200
        assert calls(client, psid="b1")[0]["page_id"] == "777"
        # the sandbox-token- convention still works next to the explicit map
        assert send(client, "b3", token=sandbox_token("888")).status_code == 200
        assert calls(client, psid="b3")[0]["page_id"] == "888"


def test_appsecret_proof_is_accepted_and_recorded(client: TestClient) -> None:
    with_proof = client.post(ME, params={"access_token": TOKEN, "appsecret_proof": "abc123"}, json=body("p1"))
    assert with_proof.status_code == 200
    send(client, "p2")
    assert calls(client, psid="p1")[0]["appsecret_proof"] is True
    assert calls(client, psid="p2")[0]["appsecret_proof"] is False


# ------------------------------------------------------------------------------------------------
# Validation


def test_invalid_json(client: TestClient) -> None:
    response = client.post(
        ME, params={"access_token": TOKEN}, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 100
    assert error["message"] == "Invalid JSON"
    assert calls(client)[0]["body"] is None


@pytest.mark.parametrize(
    ("fields", "message", "subcode"),
    [
        ({"recipient": None}, "(#100) The parameter recipient is required", None),
        ({"recipient": {"name": "x"}}, "(#100) The parameter recipient is required", None),
        ({"messaging_type": None}, "(#100) Param messaging_type is required", None),
        (
            {"messaging_type": "PROMO"},
            "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG, UTILITY}",
            None,
        ),
        ({"tag": "HUMAN_AGENT"}, "(#100) Messaging type should be MESSAGE_TAG for tagged messages.", None),
        ({"messaging_type": "MESSAGE_TAG"}, "(#100) Tag is required for MESSAGE_TAG messaging type", None),
        ({"messaging_type": "MESSAGE_TAG", "tag": "SHIPPING_UPDATE"}, "(#100) Invalid tag.", None),
        ({"sender_action": "typing_on"}, "(#100) Cannot send both message and state", 2018014),
        ({"message": None}, "(#100) Must send either message or state", None),
        (
            {"message": {"text": "x" * 2000}},
            "(#100) Length of param message[text] must be less than or equal to 2000",
            None,
        ),
        (
            {"message": {"text": "pick", "quick_replies": [{"content_type": "text"}] * 14}},
            "(#100) param message[quick_replies] must have at most 13 items",
            None,
        ),
    ],
)
def test_validation_rules(
    client: TestClient, fields: dict[str, Any], message: str, subcode: int | None
) -> None:
    response = send(client, **fields)
    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 100
    assert error["message"] == message
    assert error.get("error_subcode") == subcode
    assert error["is_transient"] is False


def test_validation_order_recipient_before_messaging_type(client: TestClient) -> None:
    payload = {"message": {"text": "hi"}}
    error = graph_error(client.post(ME, params={"access_token": TOKEN}, json=payload))
    assert error["message"] == "(#100) The parameter recipient is required"


@pytest.mark.parametrize("tag", sorted(DEPRECATED_TAGS))
def test_deprecated_tags_are_refused(client: TestClient, tag: str) -> None:
    error = graph_error(send(client, messaging_type="MESSAGE_TAG", tag=tag))
    assert error["code"] == 100
    assert error["message"] == "(#100) Invalid parameter"
    assert "deprecated" in error["error_user_msg"]
    assert "2026-04-27" in error["error_user_msg"]


def test_tag_sets_and_valid_tags_succeed(client: TestClient) -> None:
    for tag in sorted(VALID_TAGS):
        assert send(client, messaging_type="MESSAGE_TAG", tag=tag).status_code == 200
    for tag in sorted(DEPRECATED_TAGS):
        assert send(client, messaging_type="MESSAGE_TAG", tag=tag).status_code == 400


def test_limits_accept_the_boundary(client: TestClient) -> None:
    assert send(client, message={"text": "x" * 1999}).status_code == 200
    replies = [{"content_type": "text", "title": str(i), "payload": str(i)} for i in range(13)]
    assert send(client, message={"text": "pick", "quick_replies": replies}).status_code == 200


def test_empty_message_is_refused(client: TestClient) -> None:
    error = graph_error(send(client, message={"text": ""}))
    assert (error["code"], error["error_subcode"]) == (100, 2018034)
    attachment = {"attachment": {"type": "image", "payload": {"url": "https://example.com/a.png"}}}
    assert send(client, message=attachment).status_code == 200


# ------------------------------------------------------------------------------------------------
# Reserved PSIDs


@pytest.mark.parametrize(
    ("psid", "status", "code", "subcode", "message", "transient"),
    [
        (
            "err-551-u1",
            400,
            551,
            None,
            "(#551) This person isn't receiving messages from you right now.",
            False,
        ),
        (
            "err-10_2018278-u2",
            400,
            10,
            2018278,
            "(#10) This message is sent outside of allowed window.",
            False,
        ),
        ("err-190_460-a", 400, 190, 460, None, False),
        ("err-2-a", 500, 2, None, "An unexpected error has occurred. Please retry your request later.", True),
        ("err-1200-a", 500, 1200, None, None, True),
        ("err-1_99-a", 500, 1, 99, "An unknown error occurred.", True),
        ("err-100_2018001-a", 400, 100, 2018001, "(#100) No matching user found", False),
        ("err-4-a", 400, 4, None, "(#4) Application request limit reached", True),
        ("err-80001-a", 400, 80001, None, None, True),
        ("err-613_2018338-x", 400, 613, 2018338, None, False),
        ("err-12345-a", 400, 12345, None, "(#12345) Sandbox error", False),
    ],
)
def test_err_psids(  # noqa: PLR0917 - the arguments come from pytest.mark.parametrize
    client: TestClient,
    psid: str,
    status: int,
    code: int,
    subcode: int | None,
    message: str | None,
    transient: bool,
) -> None:
    response = send(client, psid)
    assert response.status_code == status
    assert response.headers["facebook-api-version"] == "v25.0"
    error = graph_error(response)
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    if message is not None:
        assert error["message"] == message
    else:
        assert error["message"] != f"(#{code}) Sandbox error"  # a known code gets Meta's message
    assert error["is_transient"] is transient
    rate_limited = code in (4, 17, 32, 613, 80001, 80006)
    assert ("x-business-use-case-usage" in response.headers) is rate_limited


@pytest.mark.parametrize("psid", ["err-abc-x", "err-551", "err-10_-x", "flaky-1-x", "flakyx-1-x", "slowly-x"])
def test_unparsable_fault_psids_are_ordinary(client: TestClient, psid: str) -> None:
    response = send(client, psid)
    assert response.status_code == 200
    assert response.json()["recipient_id"] == psid


def test_flaky_psid_fails_first_n_calls_then_succeeds(client: TestClient) -> None:
    statuses = [send(client, "flaky2-1200-u").status_code for _ in range(4)]
    assert statuses == [500, 500, 200, 200]
    with_subcode = send(client, "flaky1-10_2018108-v")
    error = graph_error(with_subcode)
    assert (error["code"], error["error_subcode"]) == (10, 2018108)
    assert send(client, "flaky1-10_2018108-v").status_code == 200
    # counters are per exact PSID, and DELETE /__sandbox/calls resets them
    assert send(client, "flaky2-1200-other").status_code == 500
    assert client.delete("/__sandbox/calls").status_code == 200
    assert send(client, "flaky2-1200-u").status_code == 500


def test_outside_window_without_and_with_tag(client: TestClient) -> None:
    for mtype in ("RESPONSE", "UPDATE"):
        response = send(client, "outside-u1", messaging_type=mtype)
        assert response.status_code == 400
        error = graph_error(response)
        assert (error["code"], error["error_subcode"]) == (10, 2018278)
        assert error["message"] == "(#10) This message is sent outside of allowed window."
    tagged = send(client, "outside-u1", messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    assert tagged.status_code == 200
    assert tagged.json()["recipient_id"] == "outside-u1"
    deprecated = graph_error(send(client, "outside-u1", messaging_type="MESSAGE_TAG", tag="ACCOUNT_UPDATE"))
    assert (deprecated["code"], deprecated["message"]) == (100, "(#100) Invalid parameter")
    invalid = graph_error(send(client, "outside-u1", messaging_type="MESSAGE_TAG", tag="NOPE"))
    assert invalid["message"] == "(#100) Invalid tag."


@pytest.mark.parametrize("minutes", [0, 7])
def test_throttle_psid_carries_buc_header(client: TestClient, minutes: int) -> None:
    response = send(client, f"throttle{minutes}-u1")
    assert response.status_code == 400
    error = graph_error(response)
    assert error["code"] == 80006
    assert "error_subcode" not in error
    assert error["is_transient"] is True
    assert error["message"].startswith("(#80006) There have been too many messages sent to this user.")
    usage = json.loads(response.headers["x-business-use-case-usage"])
    assert list(usage) == [PAGE]
    (entry,) = usage[PAGE]
    assert entry["type"] == "messenger"
    assert entry["estimated_time_to_regain_access"] == minutes
    assert {"call_count", "total_cputime", "total_time"} <= set(entry)


def test_a_throttle_psid_is_throttled_for_its_minutes_then_sent(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Graph's estimate says: throttled until M minutes after the first throttled call (the
    README's quick start: the page pauses, then the message is sent once the minute is over)."""
    clock = [1000.0]
    monkeypatch.setattr("worker.sandbox.rules.time.monotonic", lambda: clock[0])

    def regain(psid: str) -> int:
        response = send(client, psid)
        assert response.status_code == 400, response.text
        usage = json.loads(response.headers["x-business-use-case-usage"])
        return int(usage[PAGE][0]["estimated_time_to_regain_access"])

    assert regain("throttle2-u1") == 2
    clock[0] += 61
    assert regain("throttle2-u1") == 1  # the minutes left, rounded up
    assert regain("throttle2-u2") == 2  # each PSID's own clock
    clock[0] += 59
    assert send(client, "throttle2-u1").status_code == 200
    assert regain("throttle0-u1") == 0  # M = 0: the first call only
    assert send(client, "throttle0-u1").status_code == 200
    assert client.delete("/__sandbox/calls").status_code in (200, 204)
    assert regain("throttle0-u1") == 0  # a reset starts the clocks again


def test_http5xx_psid_returns_html_bad_gateway(client: TestClient) -> None:
    response = send(client, "http5xx-u1")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == "<html><body>Bad Gateway</body></html>"
    assert calls(client)[0]["status"] == 502


def test_slow_psid_adds_latency(client: TestClient) -> None:
    started = time.monotonic()
    response = send(client, "slow150-u1")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed >= 0.15


def test_drop_psid_without_a_closable_connection_raises(client: TestClient) -> None:
    with pytest.raises(ConnectionDropped):
        send(client, "drop-u1")
    (recorded,) = calls(client)
    assert recorded["psid"] == "drop-u1"
    assert recorded["status"] == 0
    assert client.get("/__sandbox/stats").json() == {"calls": 1, "sent": 0, "errors": 1}


# ------------------------------------------------------------------------------------------------
# Control endpoints


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


def test_calls_record_filters_and_clear(client: TestClient) -> None:
    before = time.time()
    send(client, "a", messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT")
    send(client, "b", token=sandbox_token("2002"))
    send(client, "err-551-c")
    send(client, "a", token="bogus")
    records = calls(client)
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    assert len({r["seq"] for r in records}) == 4
    first = records[0]
    assert set(first) == {
        "seq",
        "at",
        "page_id",
        "psid",
        "messaging_type",
        "tag",
        "status",
        "code",
        "subcode",
        "message_id",
        "appsecret_proof",
        "body",
    }
    assert first["page_id"] == PAGE
    assert first["psid"] == "a"
    assert (first["messaging_type"], first["tag"]) == ("MESSAGE_TAG", "HUMAN_AGENT")
    assert (first["status"], first["code"], first["subcode"]) == (200, None, None)
    assert first["message_id"].startswith("m_")
    assert first["body"]["message"] == {"text": "hello"}
    assert before <= first["at"] <= time.time()
    assert (records[2]["status"], records[2]["code"], records[2]["message_id"]) == (400, 551, None)
    assert (records[3]["code"], records[3]["page_id"]) == (190, None)

    assert [r["psid"] for r in calls(client, page_id="2002")] == ["b"]
    assert [r["status"] for r in calls(client, psid="a")] == [200, 400]
    assert [r["psid"] for r in calls(client, since=records[1]["seq"])] == ["err-551-c", "a"]
    assert calls(client, page_id=PAGE, psid="a", since=records[0]["seq"]) == []
    assert client.get("/__sandbox/stats").json() == {"calls": 4, "sent": 2, "errors": 2}

    assert client.delete("/__sandbox/calls").status_code == 200
    assert calls(client) == []
    assert client.get("/__sandbox/stats").json() == {"calls": 0, "sent": 0, "errors": 0}
    send(client, "d")
    (after_clear,) = calls(client)
    assert after_clear["seq"] > records[-1]["seq"]  # seqs keep increasing so `since` stays valid
    assert client.get("/__sandbox/calls", params={"since": "x"}).status_code == 400


def test_record_limit_keeps_newest_calls() -> None:
    with TestClient(create_app(SandboxConfig(record_limit=3))) as client:
        for i in range(5):
            send(client, f"r{i}")
        assert [r["psid"] for r in calls(client)] == ["r2", "r3", "r4"]
        assert client.get("/__sandbox/stats").json()["calls"] == 5


def test_kept_calls_stay_out_of_the_garbage_collectors_walks() -> None:
    """What the sandbox keeps per call is a tuple of strings and numbers, which the cyclic
    collector stops tracking after one pass: a full collection does not walk a million kept calls
    (a tracked object each made the sandbox stall and stamp a queue of arrivals at once)."""
    app = create_app()
    with TestClient(app) as client:
        for i in range(3):
            send(client, f"g{i}", message={"text": f"hello {i}"})
        gc.collect()
        state = app.state.sandbox
        assert len(state.records) == 3
        assert not any(gc.is_tracked(kept) for kept in state.records)
        listed = calls(client)
        assert [(r["psid"], r["status"], r["body"]["message"]["text"]) for r in listed] == [
            ("g0", 200, "hello 0"),
            ("g1", 200, "hello 1"),
            ("g2", 200, "hello 2"),
        ]
        assert all(r["message_id"].startswith("m_sandbox.") for r in listed)


def test_page_fault_with_count(client: TestClient) -> None:
    fault = {"page_id": PAGE, "code": 80001, "subcode": None, "count": 2, "regain_minutes": 3}
    assert client.post("/__sandbox/faults", json=fault).status_code == 200
    other_page = send(client, "x", token=sandbox_token("2002"))
    assert other_page.status_code == 200
    for _ in range(2):
        response = send(client, "y")
        assert response.status_code == 400
        assert graph_error(response)["code"] == 80001
        usage = json.loads(response.headers["x-business-use-case-usage"])
        assert usage[PAGE][0]["estimated_time_to_regain_access"] == 3
    assert send(client, "y").status_code == 200
    assert client.get("/__sandbox/faults").json() == {"faults": []}


def test_page_fault_without_count_lasts_until_deleted(client: TestClient) -> None:
    revoke = {"page_id": PAGE, "code": 190, "subcode": 460, "count": None, "regain_minutes": None}
    assert client.post("/__sandbox/faults", json=revoke).status_code == 200
    for _ in range(3):
        error = graph_error(send(client, message=None, messaging_type=None, sender_action="mark_seen"))
        assert (error["code"], error["error_subcode"]) == (190, 460)
    (listed,) = client.get("/__sandbox/faults").json()["faults"]
    assert (listed["page_id"], listed["code"], listed["remaining"]) == (PAGE, 190, None)
    assert client.delete("/__sandbox/faults").status_code == 200
    assert send(client).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"code": 4},
        {"page_id": PAGE},
        {"page_id": PAGE, "code": "4"},
        {"page_id": PAGE, "code": 4, "count": 0},
        [1, 2],
    ],
)
def test_bad_fault_payloads_are_rejected(client: TestClient, payload: object) -> None:
    response = client.post("/__sandbox/faults", json=payload)
    assert response.status_code == 400
    assert "error" in response.json()
    assert client.get("/__sandbox/faults").json() == {"faults": []}


def test_config_latency_can_change_at_runtime() -> None:
    # 1.2 s, then none: the difference shows whatever the machine's load (a bound of a few ms did not)
    with TestClient(create_app(SandboxConfig(latency_ms=1200))) as client:
        assert client.get("/__sandbox/config").json() == {"latency_ms": 1200.0}
        started = time.monotonic()
        assert send(client).status_code == 200
        assert time.monotonic() - started >= 1.2

        assert client.post("/__sandbox/config", json={"latency_ms": 0}).json() == {"latency_ms": 0.0}
        started = time.monotonic()
        assert send(client).status_code == 200
        assert time.monotonic() - started < 1.0

        assert client.post("/__sandbox/config", json={"latency_ms": 60.5}).status_code == 200
        started = time.monotonic()
        error = graph_error(send(client, token=None))  # errors are delayed too
        assert error["code"] == 190
        assert time.monotonic() - started >= 0.06
        for bad in ({"latency_ms": -1}, {"latency_ms": "fast"}, {"latency_ms": True}):
            assert client.post("/__sandbox/config", json=bad).status_code == 400


# ------------------------------------------------------------------------------------------------
# A real server: drop- closes the connection without any HTTP response


@pytest.mark.timeout(10)
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_drop_psid_closes_a_real_uvicorn_connection(http: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(),
        http=http,
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 3
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert thread.is_alive(), "uvicorn stopped"
            time.sleep(0.01)
        timeout = httpx.Timeout(2.0)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as http_client:
            url, params = ME, {"access_token": TOKEN}
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                http_client.post(url, params=params, json=body("drop-u1"))
            ok = http_client.post(url, params=params, json=body("u2"))
            assert ok.status_code == 200
            recorded = http_client.get("/__sandbox/calls", params={"psid": "drop-u1"}).json()["calls"]
            assert [r["status"] for r in recorded] == [0]
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
    assert not thread.is_alive()

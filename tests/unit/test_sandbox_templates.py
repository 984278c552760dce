"""The sandbox's utility templates: the catalogue listing (Graph's shape, paging), the UTILITY
send's refusals (the sandbox's error convention), the window, and /__sandbox/templates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from worker.messenger.utility import UtilityTemplate, utility_body
from worker.sandbox import create_app, sandbox_token

PAGE = "4242"
TOKEN = sandbox_token(PAGE)
SEND = f"/v25.0/{PAGE}/messages"
LIST = f"/v25.0/{PAGE}/message_templates"


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def utility(template: str, /, *positional: str, psid: str = "u1", **named: str) -> dict[str, Any]:
    """A UTILITY send built by the product's one builder (worker/messenger/utility.py)."""
    t = UtilityTemplate(template, "en_US", positional, tuple(named.items()))
    return utility_body({"recipient": {"id": psid}}, t)


def send(client: TestClient, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = client.post(SEND, params={"access_token": TOKEN}, json=body)
    answer: dict[str, Any] = resp.json()
    return resp.status_code, answer


def error_of(answer: dict[str, Any]) -> tuple[int, int | None, str]:
    error = answer["error"]
    return error["code"], error.get("error_subcode"), error["message"]


def test_every_page_starts_with_the_default_catalogue(client: TestClient) -> None:
    resp = client.get(LIST, params={"access_token": TOKEN})
    assert resp.status_code == 200
    assert resp.headers["facebook-api-version"] == "v25.0"
    rows = {t["name"]: t for t in resp.json()["data"]}
    assert set(rows) == {
        "appointment_reminder",
        "order_update",
        "paused_template",
        "pending_template",
        "quick_reply_template",
    }
    assert rows["order_update"]["components"][0] == {
        "type": "BODY",
        "text": "Update {{1}} {{2}}",
        "example": {"body_text": [["<1>", "<2>"]]},
    }
    assert rows["appointment_reminder"]["parameter_format"] == "NAMED"
    assert rows["quick_reply_template"]["components"][1]["buttons"][0]["type"] == "QUICK_REPLY"
    assert (rows["paused_template"]["status"], rows["pending_template"]["status"]) == ("PAUSED", "PENDING")
    assert "paging" in resp.json()
    assert "next" not in resp.json()["paging"]


def test_the_listing_pages_with_an_after_cursor(client: TestClient) -> None:
    names: list[str] = []
    params = {"access_token": TOKEN, "limit": "2"}
    for _ in range(5):  # 5 templates, 2 a page: 3 pages
        answer = client.get(LIST, params=params).json()
        names += [t["name"] for t in answer["data"]]
        if "next" not in answer["paging"]:
            break
        assert "after=" in answer["paging"]["next"]
        params = {**params, "after": answer["paging"]["cursors"]["after"]}
    assert names == sorted(names)
    assert len(names) == 5


@pytest.mark.parametrize(
    ("token", "path", "code"),
    [
        (None, LIST, 190),
        (sandbox_token("999"), LIST, 190),
        ("sandbox-token-expired-x", LIST, 190),
    ],
)
def test_the_listing_checks_the_token(client: TestClient, token: str | None, path: str, code: int) -> None:
    resp = client.get(path, params={"access_token": token} if token else {})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == code


def test_a_bad_cursor_or_limit_is_refused(client: TestClient) -> None:
    for params in ({"after": "!!"}, {"limit": "0"}, {"limit": "x"}):
        resp = client.get(LIST, params={"access_token": TOKEN, **params})
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == 100


def test_an_approved_template_is_sent_and_recorded(client: TestClient) -> None:
    status, answer = send(client, utility("order_update", "A-1", "Tuesday"))
    assert status == 200
    assert answer["message_id"].startswith("m_sandbox.")
    named_status, _ = send(client, utility("appointment_reminder", time="9:00", name="Ann"))
    assert named_status == 200
    calls = client.get("/__sandbox/calls").json()["calls"]
    assert [c["messaging_type"] for c in calls] == ["UTILITY", "UTILITY"]
    assert calls[0]["body"]["message"]["template"]["name"] == "order_update"


def test_a_utility_send_is_not_bound_by_the_window(client: TestClient) -> None:
    status, _ = send(client, utility("order_update", "a", "b", psid="outside-u9"))
    assert status == 200
    text = {"recipient": {"id": "outside-u9"}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    assert error_of(send(client, text)[1])[:2] == (10, 2018278)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            utility("no_such_template"),
            (132001, None, "(#132001) Template name does not exist in the translation"),
        ),
        (utility("pending_template", "a"), (132001, None, "not approved: status PENDING")),
        (utility("paused_template", "a"), (132015, None, "(#132015) Template is paused")),
        (utility("quick_reply_template", "a"), (100, 2018416, "QUICK_REPLY")),
        (
            utility("order_update", "a"),
            (132000, None, "(#132000) Number of parameters does not match the expected number of params"),
        ),
        (utility("order_update", x="1", y="2"), (132000, None, "Number of parameters")),
        (utility("appointment_reminder", name="A"), (132000, None, "Number of parameters")),
        (utility("appointment_reminder", "a", "b"), (132000, None, "Number of parameters")),
    ],
)
def test_refusals_follow_the_sandbox_convention(
    client: TestClient, body: dict[str, Any], expected: tuple[int, int | None, str]
) -> None:
    status, answer = send(client, body)
    code, subcode, message = error_of(answer)
    assert status == 400
    assert answer["error"]["is_transient"] is False
    assert (code, subcode) == expected[:2]
    assert expected[2] in message


def test_a_malformed_utility_body_or_a_tag_is_code_100(client: TestClient) -> None:
    bad = {"recipient": {"id": "u1"}, "messaging_type": "UTILITY", "message": {"text": "hi"}}
    assert error_of(send(client, bad)[1])[0] == 100
    tagged = {**utility("order_update", "a", "b"), "tag": "HUMAN_AGENT"}
    assert "MESSAGE_TAG" in error_of(send(client, tagged)[1])[2]
    nobody = {**utility("order_update", "a", "b"), "recipient": {}}
    assert "recipient" in error_of(send(client, nobody)[1])[2]


def test_control_changes_a_template_and_deletes_back_to_the_defaults(client: TestClient) -> None:
    changed = client.post(
        "/__sandbox/templates", json={"page_id": PAGE, "name": "order_update", "status": "DISABLED"}
    )
    row = next(t for t in changed.json()["templates"] if t["name"] == "order_update")
    assert (row["status"], row["parameters"]) == ("DISABLED", 2)  # omitted fields kept
    assert error_of(send(client, utility("order_update", "a", "b"))[1])[:2] == (132016, None)
    client.post(
        "/__sandbox/templates",
        json={"page_id": PAGE, "name": "new_one", "language": "fr_FR", "parameters": ["who"]},
    ).raise_for_status()
    body = utility_body(
        {"recipient": {"id": "u1"}}, UtilityTemplate("new_one", "fr_FR", named=(("who", "Ann"),))
    )
    assert send(client, body)[0] == 200
    client.delete("/__sandbox/templates", params={"page_id": PAGE}).raise_for_status()
    assert send(client, utility("order_update", "a", "b"))[0] == 200
    assert error_of(send(client, body)[1])[0] == 132001


def test_control_replaces_a_catalogue(client: TestClient) -> None:
    rows = [{"name": f"t{i:03d}", "parameters": 1} for i in range(30)]
    resp = client.post("/__sandbox/templates", json={"page_id": PAGE, "templates": rows})
    assert len(resp.json()["templates"]) == 30
    listing = client.get(LIST, params={"access_token": TOKEN}).json()
    assert len(listing["data"]) == 25
    assert "next" in listing["paging"]
    assert error_of(send(client, utility("order_update", "a", "b"))[1])[0] == 132001
    everything = client.get("/__sandbox/templates").json()["pages"]
    assert [p["page_id"] for p in everything] == [PAGE]


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x"},
        {"page_id": PAGE},
        {"page_id": PAGE, "name": "x", "parameters": -1},
        {"page_id": PAGE, "name": "x", "parameters": [1]},
        {"page_id": PAGE, "name": "x", "buttons": "URL"},
        {"page_id": PAGE, "name": "x", "status": 3},
        {"page_id": PAGE, "templates": "x"},
        {"page_id": PAGE, "templates": [{"status": "APPROVED"}]},
    ],
)
def test_control_refuses_a_malformed_request(client: TestClient, payload: dict[str, Any]) -> None:
    resp = client.post("/__sandbox/templates", json=payload)
    assert resp.status_code == 400
    assert resp.json()["error"]
    assert client.post("/__sandbox/templates", content=b"[1]").status_code == 400

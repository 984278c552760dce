"""The trust boundary at the intake: who may send as which page, who may read what, who may
administer, and what a request can learn or leave in Redis (a real intake and redis-server)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, PAGE, PAGE_TOKEN, Stack

pytestmark = pytest.mark.integration
OTHER_PAGE = "200"
OTHER_PAGE_TOKEN = "sandbox-token-200"
#: one token for every page, one limited to the other page
EVERY = "intake-token-every-page-0123456789abcdef"
LIMITED = "intake-token-page-200-only-0123456789abc"


def body(psid: str) -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def stack(make_stack: Any) -> Stack:
    s: Stack = make_stack(
        INTAKE_TOKENS=json.dumps({EVERY: "*", LIMITED: [OTHER_PAGE]}),
        PAGE_ACCESS_TOKENS=json.dumps({PAGE: PAGE_TOKEN, OTHER_PAGE: OTHER_PAGE_TOKEN}),
    )
    s.start_intake()
    return s


def send(
    stack: Stack, token: str, path: str, psid: str, extra: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    headers = {**auth(token), **(extra or {})}
    return httpx.post(f"{stack.intake_url}{path}", json=body(psid), headers=headers, timeout=10, **kw)


def test_roles_are_separate(stack: Stack) -> None:
    refused = send(stack, ADMIN_TOKEN, f"/v25.0/{PAGE}/messages", "r-1")  # an admin token cannot send
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    for token in (EVERY, LIMITED):  # intake tokens cannot administer
        resp = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=auth(token), timeout=10)
        assert (resp.status_code, resp.json()["error"]["code"]) == (403, "forbidden")
        resp = httpx.post(
            f"{stack.intake_url}/v1/dead-letters/purge", json={}, headers=auth(token), timeout=10
        )
        assert resp.status_code == 403
    assert (
        httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=ADMIN_HEADERS, timeout=10).status_code == 200
    )
    wrong = httpx.get(f"{stack.intake_url}/v1/dead-letters", headers=auth("x" * 40), timeout=10)
    assert (wrong.status_code, wrong.headers["www-authenticate"]) == (401, "Bearer")


def test_a_token_sends_only_as_its_pages(stack: Stack) -> None:
    refused = send(stack, LIMITED, f"/v25.0/{PAGE}/messages", "p-1")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "page_not_allowed")
    assert send(stack, LIMITED, f"/v25.0/{OTHER_PAGE}/messages", "p-2").status_code == 202
    by_url_token = send(stack, LIMITED, "/v25.0/me/messages", "p-3", params={"access_token": PAGE_TOKEN})
    assert by_url_token.json()["error"]["code"] == "page_not_allowed"  # the URL's token selected PAGE
    assert send(stack, EVERY, f"/v25.0/{PAGE}/messages", "p-4").status_code == 202


def test_a_sender_reads_only_its_own_deliveries(stack: Stack) -> None:
    mine = send(stack, EVERY, f"/v25.0/{OTHER_PAGE}/messages", "o-1").json()["delivery_id"]
    theirs = send(stack, LIMITED, f"/v25.0/{OTHER_PAGE}/messages", "o-2").json()["delivery_id"]
    url = f"{stack.intake_url}/v1/deliveries/"
    assert httpx.get(url + mine, headers=auth(EVERY), timeout=10).json()["delivery_id"] == mine
    hidden = httpx.get(url + theirs, headers=auth(EVERY), timeout=10)
    assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "not_found")  # as if unknown
    assert httpx.get(url + theirs, headers=ADMIN_HEADERS, timeout=10).status_code == 200


def test_an_idempotency_key_is_scoped_to_its_caller_and_page(stack: Stack) -> None:
    key = {"Idempotency-Key": "campaign-1:dispatch-1:user-1"}
    first = send(stack, EVERY, f"/v25.0/{OTHER_PAGE}/messages", "i-1", extra=key)
    again = send(stack, EVERY, f"/v25.0/{OTHER_PAGE}/messages", "i-1", extra=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["delivery_id"] == first.json()["delivery_id"]
    guess = send(stack, LIMITED, f"/v25.0/{OTHER_PAGE}/messages", "i-1", extra=key)
    assert guess.status_code == 202  # another caller's key is not theirs: a new delivery
    assert guess.json()["delivery_id"] != first.json()["delivery_id"]
    other_page = send(stack, EVERY, f"/v25.0/{PAGE}/messages", "i-1", extra=key)
    assert other_page.json()["delivery_id"] != first.json()["delivery_id"]


def test_page_tokens_select_pages_and_are_never_stored(stack: Stack) -> None:
    unknown = send(stack, EVERY, "/v25.0/me/messages", "t-1", params={"access_token": "EAAB" + "x" * 60})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (403, "unknown_page_token")
    mismatch = send(stack, EVERY, f"/v25.0/{PAGE}/messages", "t-2", params={"access_token": OTHER_PAGE_TOKEN})
    assert (mismatch.status_code, mismatch.json()["error"]["code"]) == (403, "page_token_mismatch")
    ok = send(stack, EVERY, "/v25.0/me/messages", "t-3", params={"access_token": OTHER_PAGE_TOKEN})
    assert ok.status_code == 202
    record = stack.record(ok.json()["delivery_id"])
    assert record["page_id"] == OTHER_PAGE
    assert "token" not in record
    assert OTHER_PAGE_TOKEN not in json.dumps(record)
    assert EVERY not in json.dumps(record)


def test_metrics_are_not_on_the_public_port(stack: Stack) -> None:
    public = httpx.get(f"{stack.intake_url}/metrics", timeout=10)
    assert public.status_code == 404
    private = httpx.get(stack.intake_metrics_url, timeout=10)
    assert private.status_code == 200
    assert "bmw_queue_depth" in private.text


def test_delivery_ids_are_not_guessable(stack: Stack) -> None:
    ids = [send(stack, EVERY, f"/v25.0/{PAGE}/messages", f"g-{i}").json()["delivery_id"] for i in range(4)]
    assert len({i[:16] for i in ids}) == 4  # no shared process prefix
    assert all(len(i) == 32 for i in ids)

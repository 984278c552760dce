"""Graph answers the review found mishandled, with a real worker against the sandbox (and a real
redis-server): 1/1357046 is not retried (messenger-platform.md §3.3 "DO NOT blind-retry"), an
OAuth session error 102 pauses the page like 190 (§3.2), a gateway's 5xx is a possible duplicate."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import Stack, wait_until
from tests.integration.test_errors import calls, final, send, stack
from worker.states import State

pytestmark = pytest.mark.integration
__all__ = ["stack"]  # the module-scoped fixture of test_errors, used here as is


def test_invalid_json_reply_is_a_dead_letter_after_one_call(stack: Stack) -> None:
    psid = "err-1_1357046-rv1"
    delivery_id = send(stack, psid)
    view = final(stack, delivery_id)
    assert view["status"] == "dead"
    assert (view["error"]["code"], view["error"]["subcode"]) == (1, 1357046)
    assert len(calls(stack, psid)) == 1  # the old code called Graph MAX_ATTEMPTS (3) times
    attempts = [
        e
        for e in stack.logs()
        if e.get("event") == "delivery.attempt" and e.get("delivery_id") == delivery_id
    ]
    assert [e.get("possible_duplicate") for e in attempts] == [True]


def test_oauth_session_error_102_pauses_the_page(stack: Stack) -> None:
    page = "601"  # a configured test page no other error test pauses
    stack.sandbox.fault(page, 102, None, count=1)
    first = send(stack, "sess-1", page=page)
    assert wait_until(lambda: stack.record(first).get("status") == State.SCHEDULED, 20)  # not failed
    assert any(
        e.get("event") == "page.paused" and e.get("page_id") == page and e.get("reason") == "token_invalid"
        for e in stack.logs()
    )
    out = stack.cli("pages", "resume", page)
    assert orjson.loads(out.stdout.splitlines()[-1])["released"] == 1
    assert final(stack, first)["status"] == "sent"
    assert len(calls(stack, "sess-1")) == 2


def test_a_gateway_5xx_is_logged_as_a_possible_duplicate(stack: Stack) -> None:
    psid = "http5xx-rv3"
    delivery_id = send(stack, psid)
    assert final(stack, delivery_id)["status"] == "dead"
    attempts = [
        e
        for e in stack.logs()
        if e.get("event") == "delivery.attempt" and e.get("delivery_id") == delivery_id
    ]
    assert len(attempts) == 3
    assert all(e.get("possible_duplicate") for e in attempts)

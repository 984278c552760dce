"""A message waiting on a utility template Meta paused goes as soon as the template is approved
again, not TEMPLATE_PAUSE_RETRY_SECONDS later (worker/templates/waits.py): black-box, through a
real intake, a real Celery worker, the sandbox's Graph and redis-server.

TEMPLATE_PAUSE_RETRY_SECONDS is an hour here, so only the release explains a send within the
test. Before, a ``REINSTATED`` status event (or a sync reading the template APPROVED) changed
the catalogue and nothing else: the message waited out its full wait. Messages waiting on
another template of the page, or on the same template of another page, keep waiting."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Sandbox, Stack, wait_until
from worker.sandbox import sandbox_token

pytestmark = pytest.mark.integration
APP_SECRET = "reinstated-app-secret-0123456789"
#: Long: a message sent within the test was released, not due.
PAUSE_WAIT = 3600
#: How long a released message may take to be sent (claim, Graph call, record): far below PAUSE_WAIT.
SENT_WITHIN = 30.0
PAUSED = "paused_template"  # the sandbox's default catalogue has it PAUSED, with one parameter
OTHER = "second_paused"


@pytest.fixture
def pages(sandbox: Sandbox) -> Iterator[tuple[str, str]]:
    """Two pages of the test's own in the shared sandbox, each with PAUSED_TEMPLATE paused, the
    first also with OTHER paused; reset to the default catalogue afterwards."""
    found = tuple(str(800_000_000 + uuid.uuid4().int % 100_000_000) for _ in range(2))
    first, second = found
    set_template(sandbox, first, OTHER, "PAUSED")
    yield first, second
    for page in found:
        httpx.delete(f"{sandbox.url}/__sandbox/templates", params={"page_id": page}, timeout=10)


def set_template(sandbox: Sandbox, page: str, name: str, status: str) -> None:
    httpx.post(
        f"{sandbox.url}/__sandbox/templates",
        json={"page_id": page, "name": name, "status": status, "parameters": 1},
        timeout=10,
    ).raise_for_status()


def start(make_stack: Any, pages: tuple[str, str], **extra: str) -> Stack:
    stack: Stack = make_stack(
        APP_SECRET=APP_SECRET,
        TEMPLATE_PAUSE_RETRY_SECONDS=str(PAUSE_WAIT),
        PAGE_ACCESS_TOKENS=json.dumps({page: sandbox_token(page) for page in pages}),
        **extra,
    )
    stack.start_intake()
    stack.start_worker()
    client = stack.redis()
    for page in pages:  # the worker syncs every page's catalogue when it starts
        assert wait_until(lambda p=page: client.zscore(stack.keys.templates_synced, p) is not None, 30), (
            stack.logs()[-5:]
        )
    return stack


def send(stack: Stack, page: str, template: str) -> tuple[str, str]:
    """A text outside the window with ``template`` as its route: (delivery id, PSID)."""
    psid = "outside-reinstated-" + uuid.uuid4().hex[:8]
    body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    headers = {"X-Utility-Template": template, "X-Utility-Parameters": '["A-1"]'}
    resp = stack.post(body, path=f"/v25.0/{page}/messages", headers=headers)
    assert resp.status_code == 202, resp.text
    return resp.json()["delivery_id"], psid


def waiting_on_template(stack: Stack, delivery_id: str) -> bool:
    """Scheduled for about PAUSE_WAIT, because its template is paused."""
    record = stack.record(delivery_id)
    error = record.get("error")
    due = stack.redis().zscore(stack.keys.sched, delivery_id)
    return (
        record.get("status") == "scheduled"
        and error is not None
        and orjson.loads(error)["reason"] == "template_paused"
        and due is not None
        and due > time.time() + PAUSE_WAIT - 600
    )


def utility_sends(stack: Stack, psid: str) -> int:
    return sum(1 for c in stack.sandbox.calls(psid=psid) if c["body"].get("messaging_type") == "UTILITY")


def status_event(stack: Stack, page: str, event: str, name: str) -> None:
    """A signed ``message_template_status_update`` event through the intake's webhook."""
    change = {
        "field": "message_template_status_update",
        "value": {
            "event": event,
            "message_template_id": 123,
            "message_template_name": name,
            "message_template_language": "en_US",
            "reason": "NONE",
        },
    }
    body = orjson.dumps(
        {"object": "page", "entry": [{"id": page, "time": int(time.time()), "changes": [change]}]}
    )
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=body,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        timeout=10,
    )
    assert resp.json() == {"status": "EVENT_RECEIVED", "events": 1}


def log_lines(stack: Stack, event: str, page: str, template: str) -> list[dict[str, Any]]:
    return [
        line
        for line in stack.logs()
        if line.get("event") == event and line.get("page_id") == page and line.get("template") == template
    ]


def sent_soon(stack: Stack, delivery_id: str) -> dict[str, str]:
    """Its final record, which must come within SENT_WITHIN seconds."""
    started = time.monotonic()
    record = stack.wait_final([delivery_id], timeout=SENT_WITHIN)[delivery_id]
    assert time.monotonic() - started < SENT_WITHIN
    return record


def test_a_reinstated_event_releases_the_messages_waiting_on_that_template_only(
    make_stack: Any, sandbox: Sandbox, pages: tuple[str, str]
) -> None:
    page, other_page = pages
    stack = start(make_stack, pages)
    keys = stack.keys
    released_id, released_psid = send(stack, page, PAUSED)
    other_template_id, _ = send(stack, page, OTHER)
    other_page_id, _ = send(stack, other_page, PAUSED)
    for delivery_id in (released_id, other_template_id, other_page_id):
        assert wait_until(lambda i=delivery_id: waiting_on_template(stack, i), 20), stack.record(delivery_id)

    set_template(sandbox, page, PAUSED, "APPROVED")  # Meta lifts the pause, and says so
    status_event(stack, page, "REINSTATED", PAUSED)
    record = sent_soon(stack, released_id)
    assert (record["status"], record["delivered_via"]) == ("sent", f"utility:{PAUSED}")
    assert utility_sends(stack, released_psid) == 1
    (line,) = log_lines(stack, "templates.waits_released", page, PAUSED)
    assert (line["released"], line["language"]) == (1, "en_US")
    # another template of the page, and the same template of another page: still waiting
    assert waiting_on_template(stack, other_template_id)
    assert waiting_on_template(stack, other_page_id)
    assert not stack.redis().exists(keys.template_waits(page, f"{PAUSED}|en_US"))
    assert stack.redis().zscore(keys.template_waits(page, f"{OTHER}|en_US"), other_template_id) is not None
    assert stack.redis().zscore(keys.template_waits(other_page, f"{PAUSED}|en_US"), other_page_id) is not None

    # the same event again (Meta retries webhooks): applied, and nothing is released twice
    status_event(stack, page, "REINSTATED", PAUSED)
    assert wait_until(lambda: len(log_lines(stack, "templates.status_changed", page, PAUSED)) == 2, 20)
    time.sleep(1.0)  # a second send would take a claim and a Graph call: give it the time
    assert len(log_lines(stack, "templates.waits_released", page, PAUSED)) == 1
    assert utility_sends(stack, released_psid) == 1
    assert stack.record(released_id)["status"] == "sent"
    assert waiting_on_template(stack, other_template_id)
    assert waiting_on_template(stack, other_page_id)


def test_a_sync_that_reads_the_template_approved_releases_its_messages(
    make_stack: Any, sandbox: Sandbox, pages: tuple[str, str]
) -> None:
    """The worker's periodic sync (every 2 s here): no event, Graph's listing says APPROVED."""
    page, other_page = pages
    stack = start(make_stack, pages, TEMPLATE_SYNC_SECONDS="2")
    released_id, released_psid = send(stack, page, OTHER)
    other_template_id, _ = send(stack, page, PAUSED)
    other_page_id, _ = send(stack, other_page, PAUSED)
    for delivery_id in (released_id, other_template_id, other_page_id):
        assert wait_until(lambda i=delivery_id: waiting_on_template(stack, i), 20), stack.record(delivery_id)

    set_template(sandbox, page, OTHER, "APPROVED")
    record = sent_soon(stack, released_id)
    assert (record["status"], record["delivered_via"]) == ("sent", f"utility:{OTHER}")
    assert utility_sends(stack, released_psid) == 1
    (line,) = log_lines(stack, "templates.waits_released", page, OTHER)
    assert line["released"] == 1
    # later syncs read it APPROVED again: nothing left to release
    synced = len([line for line in stack.logs() if line.get("event") == "templates.synced"])
    assert wait_until(
        lambda: len([line for line in stack.logs() if line.get("event") == "templates.synced"]) >= synced + 4,
        20,
    )
    assert len(log_lines(stack, "templates.waits_released", page, OTHER)) == 1
    assert utility_sends(stack, released_psid) == 1
    assert waiting_on_template(stack, other_template_id)
    assert waiting_on_template(stack, other_page_id)


def test_an_approved_event_releases_the_messages_waiting_on_a_pending_template(
    make_stack: Any, sandbox: Sandbox, pages: tuple[str, str]
) -> None:
    """A template the catalogue holds pending approval: its message waits a minute, again and
    again (policy.TEMPLATE_PENDING_WAIT). Meta's APPROVED event releases it at once, within
    far less than that minute (it waited out the minute before)."""
    page, _ = pages
    pending = "pending_" + uuid.uuid4().hex[:6]
    set_template(sandbox, page, pending, "PENDING")
    stack = start(make_stack, pages)
    delivery_id, psid = send(stack, page, pending)

    def waiting_pending() -> bool:
        record = stack.record(delivery_id)
        error = record.get("error")
        return (
            record.get("status") == "scheduled"
            and error is not None
            and orjson.loads(error)["reason"] == "template_pending"
        )

    assert wait_until(waiting_pending, 20), stack.record(delivery_id)
    set_template(sandbox, page, pending, "APPROVED")
    status_event(stack, page, "APPROVED", pending)
    started = time.monotonic()
    record = stack.wait_final([delivery_id], timeout=45)[delivery_id]
    assert time.monotonic() - started < 20  # released: not at the end of its minute
    assert (record["status"], record["delivered_via"]) == ("sent", f"utility:{pending}")
    assert utility_sends(stack, psid) == 1
    (line,) = log_lines(stack, "templates.waits_released", page, pending)
    assert line["released"] == 1

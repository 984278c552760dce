"""A stop is kept CAMPAIGN_RETENTION after the campaign's last activity (README, Configuration),
like its counters: a stopped campaign that Braze keeps sending to (a recurring campaign, a Canvas
left running) stays stopped. Before, ``P:campstop`` was pruned by the stop's own time: the
stop vanished CAMPAIGN_RETENTION after it was made, however active the campaign was since, and
its next requests were queued and sent. Black-box: a real redis-server, the intake, a worker and
the sandbox."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_HEADERS, Stack, wait_until
from worker.states import State

pytestmark = pytest.mark.integration
RETENTION = 4


def post(stack: Stack, psid: str, campaign: str) -> httpx.Response:
    body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    return stack.post(body, headers={"X-Braze-Campaign-Id": campaign})


def show(stack: Stack, campaign: str) -> dict[str, Any]:
    resp = httpx.get(f"{stack.intake_url}/v1/campaigns/{campaign}", headers=ADMIN_HEADERS, timeout=10)
    assert resp.status_code == 200, resp.text
    view: dict[str, Any] = resp.json()
    return view


def test_a_stopped_campaign_that_keeps_receiving_requests_stays_stopped(make_stack: Any) -> None:
    stack: Stack = make_stack(CAMPAIGN_RETENTION=str(RETENTION))
    stack.start_intake()
    stack.start_worker()
    run = uuid.uuid4().hex[:6]
    camp = f"camp-s-{run}"
    first = post(stack, f"s{run}-0", camp)
    assert first.status_code == 202, first.text
    stack.wait_final([first.json()["delivery_id"]])
    stop = httpx.post(f"{stack.intake_url}/v1/campaigns/{camp}/stop", headers=ADMIN_HEADERS, timeout=10)
    assert stop.status_code == 200, stop.text
    stopped_at = show(stack, camp)["stopped_at"]
    # Braze keeps sending it, one request a second, for twice the retention: every one is
    # answered cancelled, and each is activity that keeps the stop
    answers = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 2 * RETENTION + 1:
        n += 1
        resp = post(stack, f"s{run}-{n}", camp)
        answers.append((round(time.monotonic() - started, 1), resp.status_code, resp.json()["status"]))
        time.sleep(0.5)
    assert {(code, status) for _, code, status in answers} == {(200, State.CANCELLED.value)}, answers
    view = show(stack, camp)
    assert view["stopped"] is True, view
    assert view["stopped_at"] == stopped_at  # the stop's time is still the stop's
    assert (view["accepted"], view["sent"], view["cancelled"], view["open"]) == (1 + n, 1, n, 0), view
    calls = [c for c in stack.sandbox.calls() if (c["psid"] or "").startswith(f"s{run}-")]
    assert [c["psid"] for c in calls] == [f"s{run}-0"]
    # once the campaign has been quiet for the retention, the stop goes with its counters (pruned
    # when some counter is written: another campaign's request)
    redis = stack.redis()
    assert wait_until(lambda: not redis.exists(stack.keys.campaign(camp)), RETENTION + 5)
    assert post(stack, f"o{run}-0", f"camp-o-{run}").status_code == 202
    assert redis.zscore(stack.keys.campaigns_stopped, camp) is None
    gone = httpx.get(f"{stack.intake_url}/v1/campaigns/{camp}", headers=ADMIN_HEADERS, timeout=10)
    assert gone.status_code == 404, gone.text

"""bmw_deliveries_total counts every cancel once, in the process that made it: the intake for what
an operator's stop or cancel ends there (cancel.lua), a worker for what its claims cancel
(claim.lua: a stopped campaign's, an operator's, no Graph call) and for what its recorder writes
cancelled instead (record.lua answering 3). Before, only the last was counted: a dashboard's
cancelled rate missed every cancel the Redis scripts made alone.

Black-box: a real redis-server, the sandbox, the intake and real Celery workers, each read on its
own /metrics."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_HEADERS, PAGE, Stack, free_port, wait_port, wait_until
from worker.states import State

pytestmark = pytest.mark.integration
CANCELLED = State.CANCELLED.value


def admin(stack: Stack, method: str, path: str) -> httpx.Response:
    resp = httpx.request(method, f"{stack.intake_url}{path}", headers=ADMIN_HEADERS, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp


def post(stack: Stack, psid: str, *, page: str = PAGE, campaign: str | None = None) -> str:
    headers = {"X-Braze-Campaign-Id": campaign, "X-Braze-Send-Id": "s1"} if campaign else {}
    body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    resp = stack.post(body, path=f"/v25.0/{page}/messages", headers=headers)
    assert resp.status_code == 202, resp.text
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def cancels(url: str) -> Counter[tuple[str, str]]:
    """bmw_deliveries_total{outcome="cancelled"} of one process's /metrics: (reason, page_id) ->
    count (a cancel is never a Graph answer: its codes are none)."""
    found: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "bmw_deliveries_total" and sample.labels["outcome"] == CANCELLED:
                assert (sample.labels["error_code"], sample.labels["error_subcode"]) == ("none", "none")
                found[(sample.labels["reason"], sample.labels["page_id"])] += int(sample.value)
    return found


def start_worker(stack: Stack, name: str = "worker") -> str:
    """A worker serving its /metrics on a port of its own; that /metrics' URL."""
    port = free_port()
    stack.env["METRICS_PORT"] = str(port)
    stack.start_worker(name=name)
    assert wait_port(port)
    return f"http://127.0.0.1:{port}/metrics"


def held(stack: Stack, delivery_id: str) -> bool:
    return stack.record(delivery_id).get("status") == State.IN_FLIGHT.value


def test_a_stopped_campaigns_queued_deliveries_are_counted_once_each_by_the_intake(make_stack: Any) -> None:
    """No worker yet: the admin API's stop cancels the queued deliveries itself (cancel.lua). The
    intake counts each once, cancelled/campaign_stopped on its page; a second stop finds none; the
    worker started afterwards finds them cancelled and counts nothing."""
    stack: Stack = make_stack()
    stack.start_intake()
    run = uuid.uuid4().hex[:6]
    camp = f"camp-q-{run}"
    ids = [post(stack, f"q{run}-{i}", campaign=camp) for i in range(6)]
    ids += [post(stack, f"q{run}-{i}", page="501", campaign=camp) for i in range(6, 8)]
    assert admin(stack, "POST", f"/v1/campaigns/{camp}/stop").json()["cancelled"] == 8
    expected = {("campaign_stopped", PAGE): 6, ("campaign_stopped", "501"): 2}
    assert {stack.record(i)["status"] for i in ids} == {CANCELLED}
    assert cancels(stack.intake_metrics_url) == expected

    assert admin(stack, "POST", f"/v1/campaigns/{camp}/stop").json()["cancelled"] == 0
    worker = start_worker(stack)
    redis = stack.redis()
    assert wait_until(lambda: redis.llen(stack.queue) == 0 and redis.zcard(stack.keys.pending) == 0, 30)
    assert cancels(stack.intake_metrics_url) == expected
    assert cancels(worker) == {}
    view = admin(stack, "GET", f"/v1/campaigns/{camp}").json()
    assert (view["accepted"], view["cancelled"]) == (8, 8)  # the campaign counters agree


def test_a_request_of_a_stopped_campaign_answered_cancelled_is_counted_by_the_intake(make_stack: Any) -> None:
    """A stopped campaign's new request is ended at once (accept.lua: 200 ``cancelled``, so
    Braze does not retry it): an outcome like the stop's, counted once; its repeat (the same
    Idempotency-Key) is not another."""
    stack: Stack = make_stack()
    stack.start_intake()
    run = uuid.uuid4().hex[:6]
    camp = f"camp-n-{run}"
    admin(stack, "POST", f"/v1/campaigns/{camp}/stop")
    body = {"recipient": {"id": f"n{run}"}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    headers = {"X-Braze-Campaign-Id": camp, "Idempotency-Key": f"k-{run}"}
    first = stack.post(body, path=f"/v25.0/{PAGE}/messages", headers=headers)
    assert (first.status_code, first.json()["status"]) == (200, CANCELLED), first.text
    again = stack.post(body, path=f"/v25.0/{PAGE}/messages", headers=headers)
    assert again.json() == {"delivery_id": first.json()["delivery_id"], "status": "duplicate"}
    assert cancels(stack.intake_metrics_url) == {("campaign_stopped", PAGE): 1}
    assert admin(stack, "GET", f"/v1/campaigns/{camp}").json()["cancelled"] == 1


def test_an_operator_cancel_through_the_admin_api_is_counted_once_by_the_intake(make_stack: Any) -> None:
    """A delivery waiting behind its paused page is cancelled by the admin API (cancel.lua):
    counted once, cancelled/operator, by the intake; asking again cancels nothing more."""
    stack: Stack = make_stack()
    stack.start_intake()
    worker = start_worker(stack)
    page, run = "777", uuid.uuid4().hex[:6]
    admin(stack, "POST", f"/v1/pages/{page}/pause")
    try:
        waiting = [post(stack, f"p{run}-{i}", page=page) for i in range(2)]
        assert wait_until(lambda: stack.record(waiting[0]).get("status") == State.SCHEDULED.value, 20)
        assert admin(stack, "POST", f"/v1/deliveries/{waiting[0]}/cancel").json()["cancelled"] is True
        assert admin(stack, "POST", f"/v1/deliveries/{waiting[0]}/cancel").json()["cancelled"] is False
    finally:
        admin(stack, "POST", f"/v1/pages/{page}/resume")
    records = stack.wait_final(waiting, 30)
    assert [records[i]["status"] for i in waiting] == [CANCELLED, State.SENT.value]
    assert cancels(stack.intake_metrics_url) == {("operator", page): 1}
    assert cancels(worker) == {}


def test_deliveries_a_claim_cancels_are_counted_once_by_the_worker_that_claimed(make_stack: Any) -> None:
    """Two deliveries held by a worker mid-call: one an operator cancels, the other's campaign is
    stopped (neither is cancelled by the intake: held). Their worker is killed; once their lease
    ends the sweeper hands them to a second worker, whose claim ends them cancelled without a
    Graph call (claim.lua): that worker counts each once, with the reason the record keeps."""
    # a call's window (GRAPH_READ_TIMEOUT) long enough to stop and cancel during it
    stack: Stack = make_stack(DELIVERY_LEASE_SECONDS="8", GRAPH_DEADLINE_SECONDS="4", GRAPH_READ_TIMEOUT="4")
    stack.start_intake()
    start_worker(stack, "first")
    run = uuid.uuid4().hex[:6]
    camp = f"camp-c-{run}"
    operator = post(stack, f"slow20000-o{run}")
    stopped = post(stack, f"slow20000-s{run}", page="200", campaign=camp)
    assert wait_until(lambda: held(stack, operator) and held(stack, stopped), 20)
    assert admin(stack, "POST", f"/v1/deliveries/{operator}/cancel").json()["cancelled"] is False
    assert admin(stack, "POST", f"/v1/campaigns/{camp}/stop").json()["cancelled"] == 0
    assert held(stack, operator)  # still mid-call: nothing recorded
    assert held(stack, stopped)
    next(p for p in stack.procs if p.name == "first").stop(signal.SIGKILL)

    second = start_worker(stack, "second")
    records = stack.wait_final([operator, stopped], 40)
    assert {records[i]["status"] for i in (operator, stopped)} == {CANCELLED}
    assert '"operator"' in records[operator]["error"]
    assert '"campaign_stopped"' in records[stopped]["error"]
    assert cancels(second) == {("operator", PAGE): 1, ("campaign_stopped", "200"): 1}
    assert cancels(stack.intake_metrics_url) == {}
    lines = [e for e in stack.logs() if e.get("event") == "deliveries.cancelled_at_claim"]
    assert sorted((e["page_id"], e["reason"], e["count"]) for e in lines) == sorted(
        [("200", "campaign_stopped", 1), (PAGE, "operator", 1)]
    )
    # the first worker's call at most: the second made none
    assert len([c for c in stack.sandbox.calls(page_id="200") if c["psid"] == f"slow20000-s{run}"]) <= 1
    view = admin(stack, "GET", f"/v1/campaigns/{camp}").json()
    assert (view["accepted"], view["cancelled"]) == (1, 1)


def test_a_held_delivery_cancelled_at_its_outcome_is_counted_once(make_stack: Any) -> None:
    """Held mid-call when its campaign is stopped, or when an operator cancels it: its call times
    out (a retry), and the recorder writes it cancelled instead (record.lua answering 3 or 4). Its
    worker counts it once, by its reason; the intake, which did not cancel it, not at all."""
    stack: Stack = make_stack()
    stack.start_intake()
    worker = start_worker(stack)
    run = uuid.uuid4().hex[:6]
    camp = f"camp-h-{run}"
    stopped = post(stack, f"slow3000-h{run}", page="501", campaign=camp)
    operator = post(stack, f"slow3000-o{run}", page="601")
    assert wait_until(lambda: held(stack, stopped) and held(stack, operator), 20)
    assert admin(stack, "POST", f"/v1/campaigns/{camp}/stop").json()["cancelled"] == 0
    assert admin(stack, "POST", f"/v1/deliveries/{operator}/cancel").json()["cancelled"] is False
    records = stack.wait_final([stopped, operator], 30)
    assert {records[i]["status"] for i in (stopped, operator)} == {CANCELLED}
    time.sleep(0.5)  # the outcomes are counted once written
    # once each, by its reason (record.lua answers 3 or 4: the recorder labelled both
    # campaign_stopped), and without the error of the retry it replaced
    assert cancels(worker) == {("campaign_stopped", "501"): 1, ("operator", "601"): 1}
    assert cancels(stack.intake_metrics_url) == {}


def test_a_campaign_stopped_mid_flight_counts_each_cancel_once_across_the_processes(make_stack: Any) -> None:
    """Stopped while its deliveries are queued, held and sent: whichever process cancelled each
    (the intake's stop, a claim, the recorder), the counts add up to the deliveries recorded
    cancelled, which is the campaign's counter. The worker holds at most 10 at a time, so the
    stop usually finds some held (the recorder or a claim cancels them) and some queued (the
    intake does)."""
    stack: Stack = make_stack(PAGE_RATE_LIMIT="20", ENGINE_MAX_CLAIMED="10")
    stack.start_intake()
    worker = start_worker(stack)
    run = uuid.uuid4().hex[:6]
    camp = f"camp-m-{run}"
    ids = [post(stack, f"m{run}-{i}", campaign=camp) for i in range(60)]

    def sent() -> int:
        return len([c for c in stack.sandbox.calls(page_id=PAGE) if c["psid"].startswith(f"m{run}-")])

    assert wait_until(lambda: sent() >= 10, 30)
    admin(stack, "POST", f"/v1/campaigns/{camp}/stop")
    records = stack.wait_final(ids, 60)
    cancelled = [i for i in ids if records[i]["status"] == CANCELLED]
    assert cancelled
    assert {records[i]["status"] for i in ids} <= {CANCELLED, State.SENT.value}
    time.sleep(0.5)  # the last outcomes are counted once written
    by_intake, by_worker = cancels(stack.intake_metrics_url), cancels(worker)
    # which process cancelled how many depends on what the worker held at the stop; together,
    # each once
    assert by_intake + by_worker == {("campaign_stopped", PAGE): len(cancelled)}
    assert admin(stack, "GET", f"/v1/campaigns/{camp}").json()["cancelled"] == len(cancelled)

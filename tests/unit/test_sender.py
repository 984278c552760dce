"""One delivery's round (worker/delivery/attempt.py) without Redis: Graph faked at the transport
(httpx.MockTransport), pacing by a limiter that always has a slot, the lease held locally."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from worker.config import PageTokens, Settings
from worker.delivery.attempt import BatchContext, Released, Sender
from worker.delivery.leases import Leases
from worker.delivery.model import Delivery, Outcome
from worker.delivery.observers import Observer
from worker.graph import GraphClient, GraphError, SendResult
from worker.messenger.utility import UtilityTemplate
from worker.ratelimit import Grant, Limiter
from worker.states import State

PAGE = "100"


class FreeLimiter(Limiter):
    """Every send's slot is now (or every send gets ``answer``); slow-downs are counted."""

    def __init__(self, settings: Settings, answer: Grant | None = None) -> None:
        super().__init__(aioredis.Redis(), settings)  # never connected: no method here touches it
        self.slowed: list[str] = []
        self.answer = answer

    async def wait_for_slot(
        self, page_id: str, kind: str, psid: str, reserved: float = 0.0, *, reserved_free: bool = False
    ) -> Grant:
        return self.answer or Grant(True, 0.0, False, time.time(), time.time())

    async def slow_down(self, page_id: str) -> float:
        self.slowed.append(page_id)
        return 0.5


class Attempts(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    def attempted(
        self,
        delivery: Delivery,
        route: str | None,
        result: SendResult | None,
        error: GraphError | None,
        latency_s: float,
    ) -> None:
        self.calls.append((route, "sent" if error is None else error.reason))


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "page_access_tokens": {PAGE: "page-token-0123456789"},
        "delivery_lease_seconds": 10,
        "graph_deadline_seconds": 0.5,
        "max_attempts": 3,
        "_env_file": None,
    }
    base.update(kw)
    return Settings(**base)


def graph_error(code: int, subcode: int | None = None, message: str = "(#0) error") -> httpx.Response:
    error: dict[str, Any] = {"message": message, "code": code, "fbtrace_id": "trace"}
    if subcode is not None:
        error["error_subcode"] = subcode
    return httpx.Response(400, json={"error": error})


Handler = Callable[[httpx.Request], Any]


def run(
    handler: Handler,
    d: Delivery,
    *,
    s: Settings | None = None,
    draining: bool = False,
    lease_left: float = 10.0,
    ctx: BatchContext | None = None,
    grant: Grant | None = None,
    limiter: FreeLimiter | None = None,
) -> tuple[Outcome | Released, Attempts, FreeLimiter]:
    s = s or settings()
    observer = Attempts()
    limiter = limiter or FreeLimiter(s, grant)

    async def go() -> Outcome | Released:
        graph = GraphClient("https://graph.test/v25.0", transport=httpx.MockTransport(handler))
        leases = Leases(aioredis.Redis(), s, lambda _lost: None)
        leases.hold(d.claim, [d], time.time() - s.delivery_lease_seconds + lease_left)
        sender = Sender(
            s, PageTokens(s, source=""), limiter=limiter, graph=graph, leases=leases, observer=observer
        )
        sender.draining = draining
        try:
            return await sender.deliver(d, ctx or BatchContext())
        except Released as released:
            return released
        finally:
            await graph.aclose()

    return asyncio.run(go()), observer, limiter


def recording(calls: list[httpx.Request]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"message_id": "m"})

    return handler


def delivery(**kw: Any) -> Delivery:
    base: dict[str, Any] = {
        "id": "d1",
        "claim": "w.1",
        "page_id": PAGE,
        "psid": "p1",
        "body": {"recipient": {"id": "p1"}, "messaging_type": "UPDATE", "message": {"text": "hi"}},
        "created_at": time.time(),
    }
    base.update(kw)
    return Delivery(**base)


def test_sent_on_the_first_call() -> None:
    outcome, observer, _ = run(lambda _r: httpx.Response(200, json={"message_id": "m_1"}), d := delivery())
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.SENT
    assert outcome.result is not None
    assert outcome.result.message_id == "m_1"
    assert (d.attempts, d.failures) == (1, 0)
    assert observer.calls == [(None, "sent")]


class RedisDownAfterTheCall(FreeLimiter):
    """Redis fails just as Graph answers: the usage note and the slow-down raise."""

    async def note_usage(self, page_id: str, pct: int) -> None:
        self.noted = pct
        raise redis.exceptions.ConnectionError("Redis went away")

    async def slow_down(self, page_id: str) -> float:
        self.slowed.append(page_id)
        raise redis.exceptions.ConnectionError("Redis went away")


def test_a_redis_error_after_graph_accepted_keeps_the_send() -> None:
    """The usage header's bookkeeping is best effort: before, its Redis error escaped, and the
    engine handed the sent delivery back to be sent again."""
    usage = orjson.dumps({PAGE: [{"type": "pages", "call_count": 95, "total_cputime": 3, "total_time": 4}]})
    limiter = RedisDownAfterTheCall(settings())

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json={"message_id": "m_1"}, headers={"x-business-use-case-usage": usage.decode()}
        )

    outcome, observer, _ = run(handler, d := delivery(), limiter=limiter)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, d.attempts) == (State.SENT, 1)
    assert outcome.result is not None
    assert outcome.result.message_id == "m_1"
    assert (limiter.noted, limiter.slowed) == (95, [PAGE])  # both were tried, and failed
    assert observer.calls == [(None, "sent")]


def test_closed_window_retags_at_once_and_each_tag_is_tried_once() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        bodies.append(body)
        if body.get("tag") == "HUMAN_AGENT":
            return httpx.Response(200, json={"message_id": "m_tagged"})
        return graph_error(10, 2018278, "(#10) outside of allowed window")

    d = delivery(fallbacks=["tag:HUMAN_AGENT"])
    outcome, observer, _ = run(handler, d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.delivered_via) == (State.SENT, "tag:HUMAN_AGENT")
    assert [b.get("tag") for b in bodies] == [None, "HUMAN_AGENT"]
    assert d.window_closed_seen
    assert observer.calls == [(None, "outside_window"), ("tag:HUMAN_AGENT", "sent")]


ORDER_UPDATE = UtilityTemplate("order_update", "en_US", ("Ada", "#42"))


def test_closed_window_sends_the_utility_template_before_the_tags() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        bodies.append(body)
        if body.get("messaging_type") == "UTILITY":
            return httpx.Response(200, json={"message_id": "m_utility"})
        return graph_error(10, 2018278, "(#10) outside of allowed window")

    d = delivery(fallbacks=["utility:order_update", "tag:HUMAN_AGENT"], utility=ORDER_UPDATE)
    outcome, observer, _ = run(handler, d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.delivered_via) == (State.SENT, "utility:order_update")
    assert bodies[1] == {
        "recipient": {"id": "p1"},
        "messaging_type": "UTILITY",
        "message": {
            "template": {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#42"}],
                    }
                ],
            }
        },
    }
    assert observer.calls == [(None, "outside_window"), ("utility:order_update", "sent")]


def test_a_rejected_template_moves_on_to_the_next_route() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if body.get("messaging_type") == "UTILITY":
            return graph_error(132000, None, "(#132000) Number of parameters does not match")
        if body.get("tag") == "HUMAN_AGENT":
            return httpx.Response(200, json={"message_id": "m_tagged"})
        return graph_error(10, 2018278, "(#10) outside of allowed window")

    d = delivery(fallbacks=["utility:order_update", "tag:HUMAN_AGENT"], utility=ORDER_UPDATE)
    outcome, observer, _ = run(handler, d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.delivered_via) == (State.SENT, "tag:HUMAN_AGENT")
    assert d.routes_tried == ["utility:order_update"]
    assert [call[0] for call in observer.calls] == [None, "utility:order_update", "tag:HUMAN_AGENT"]


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [(132016, State.FAILED, "template_rejected"), (132015, State.SCHEDULED, "template_paused")],
)
def test_a_template_with_no_route_left_fails_or_waits_when_paused(
    code: int, status: State, reason: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if orjson.loads(request.content).get("messaging_type") == "UTILITY":
            return graph_error(code, None, f"(#{code}) Template")
        return graph_error(10, 2018278, "(#10) outside of allowed window")

    d = delivery(fallbacks=["utility:order_update"], utility=ORDER_UPDATE)
    outcome, _, _ = run(handler, d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.reason) == (status, reason)
    if status is State.SCHEDULED:
        assert outcome.delay == settings().template_pause_retry_seconds
        assert d.failures == 0  # a paused template burns no attempt


def test_a_transient_error_burns_an_attempt_and_retries() -> None:
    d = delivery()
    outcome, _, _ = run(lambda _r: graph_error(2, None, "(#2) Service temporarily unavailable"), d)
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.RETRYING
    assert outcome.delay > 0
    assert (d.attempts, d.failures) == (1, 1)
    assert outcome.error is not None
    assert outcome.error.info.code == 2


def test_throttling_waits_pauses_the_page_and_burns_nothing() -> None:
    d = delivery()
    outcome, _, limiter = run(lambda _r: graph_error(613, None, "(#613) Calls exceeded the rate limit"), d)
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.SCHEDULED
    assert outcome.pause is not None
    assert outcome.pause.reason == "rate_limited"
    assert d.failures == 0
    assert limiter.slowed == [PAGE]


def test_no_answer_within_the_deadline_is_ambiguous() -> None:
    async def slow(_request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json={"message_id": "late"})

    d = delivery()
    started = time.monotonic()
    outcome, observer, _ = run(slow, d, s=settings(graph_deadline_seconds=0.2))
    assert time.monotonic() - started < 2
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.RETRYING
    assert outcome.possible_duplicate
    assert observer.calls == [(None, "ambiguous")]


def test_out_of_attempts_is_a_dead_letter() -> None:
    d = delivery(failures=2)
    outcome, _, _ = run(lambda _r: graph_error(1200), d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.reason) == (State.DEAD, "max_attempts")


def test_a_draining_engine_hands_the_delivery_back_without_a_call() -> None:
    calls: list[httpx.Request] = []
    outcome, _, _ = run(recording(calls), delivery(), draining=True)
    assert isinstance(outcome, Released)
    assert outcome.reason == "shutdown"
    assert calls == []


def test_no_call_starts_when_the_lease_would_end_before_the_deadline() -> None:
    """The lease was last renewed long ago (Redis unreachable): the call could outlive it, and
    another worker could claim the delivery meanwhile. No call; handed back."""
    calls: list[httpx.Request] = []
    s = settings(delivery_lease_seconds=0.9, graph_deadline_seconds=0.4)
    outcome, _, _ = run(recording(calls), delivery(), s=s, lease_left=0.3)
    assert isinstance(outcome, Released)
    assert outcome.reason == "lease_at_risk"
    assert calls == []


def test_prechecks_decide_without_a_call() -> None:
    s = settings(message_ttl=60)
    sender = Sender(
        s,
        PageTokens(s, source=""),
        limiter=FreeLimiter(s),
        graph=GraphClient("https://graph.test/v25.0"),
        leases=Leases(aioredis.Redis(), s, lambda _lost: None),
        observer=Observer(),
    )
    old = time.time() - 120
    expired = sender.precheck(delivery(created_at=old), BatchContext())
    assert expired is not None
    assert (expired.status, expired.reason) == (State.EXPIRED, "ttl")
    # waiting for its page when the TTL passed: a dead letter, replayable once the page is fixed
    dead = sender.precheck(delivery(created_at=old, last_reason="token_invalid"), BatchContext())
    assert dead is not None
    assert dead.status is State.DEAD
    ctx = BatchContext(suppressed={"d1": True})
    suppressed = sender.precheck(delivery(), ctx)
    assert suppressed is not None
    assert (suppressed.status, suppressed.reason) == (State.FAILED, "suppressed")
    no_token = sender.precheck(delivery(page_id="999"), BatchContext())
    assert no_token is not None
    assert (no_token.status, no_token.reason) == (State.FAILED, "no_page_token")
    window = BatchContext(window_closed={"d1": True})
    closed = sender.precheck(delivery(), window)
    assert closed is not None
    assert (closed.status, closed.reason) == (State.FAILED, "outside_window")
    assert sender.precheck(delivery(), BatchContext()) is None  # nothing stops it: it calls Graph


def test_a_ttl_that_passes_while_waiting_for_a_connection_sends_nothing() -> None:
    """The TTL is checked again just before the call (the precheck ran at the claim; the slot or
    a free connection may take a while)."""
    calls: list[httpx.Request] = []
    s = settings(message_ttl=60)
    outcome, observer, _ = run(recording(calls), delivery(created_at=time.time() - 61), s=s)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.reason) == (State.EXPIRED, "ttl")
    assert calls == []
    assert observer.calls == []


@pytest.mark.parametrize(
    ("state", "status", "reason", "calls"),
    [
        ("pending", State.SCHEDULED, "template_pending", ["UPDATE"]),
        ("disabled", State.SENT, None, ["UPDATE", "MESSAGE_TAG"]),
        ("approved", State.SENT, None, ["UPDATE", "UTILITY"]),
    ],
)
def test_the_catalogue_decides_a_utility_route_before_any_call(
    state: str, status: State, reason: str | None, calls: list[str]
) -> None:
    sent: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        sent.append(body["messaging_type"])
        if body["messaging_type"] == "UPDATE":
            return graph_error(10, 2018278, "(#10) outside of allowed window")
        return httpx.Response(200, json={"message_id": "m"})

    d = delivery(fallbacks=["utility:order_update", "tag:HUMAN_AGENT"], utility=ORDER_UPDATE)
    ctx = BatchContext(template_state={d.id: state})
    outcome, _, _ = run(handler, d, ctx=ctx)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, sent) == (status, calls)
    if reason is not None:
        assert outcome.reason == reason
    if state == "disabled":
        assert (outcome.delivered_via, d.routes_tried) == ("tag:HUMAN_AGENT", ["utility:order_update"])


@pytest.mark.parametrize(("paused", "reason"), [(True, "page_paused"), (False, "paced")])
def test_a_limiter_refusal_waits_for_the_page_when_the_page_is_paused(paused: bool, reason: str) -> None:
    """The page paused between the precheck and the limiter: the same wait for the page as the
    precheck's (indexed: resuming the page releases it), not a pacing deferral until the pause's
    end; a probe's answer awaited or a recipient's pace stays a pacing deferral."""
    calls: list[httpx.Request] = []
    outcome, _, _ = run(recording(calls), delivery(), grant=Grant(False, 599.0, paused=paused))
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.reason, outcome.delay) == (State.SCHEDULED, reason, 599.0)
    assert outcome.paced is (not paused)
    assert calls == []  # no Graph call, no attempt

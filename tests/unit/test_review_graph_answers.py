"""Graph answers the §3 tables name but the classification missed, and answers Graph's tables do
not cover (a gateway's 5xx, a 2xx that is not Graph's success body, a proxy's 429/408), through
``from_response`` / ``GraphClient.send`` (Graph faked at the transport) and ``policy.decide``,
and one delivery's round (:class:`worker.delivery.attempt.Sender`) where the outcome matters.
References are to /work/shared/reference/messenger-platform.md."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from tests.unit.test_graph import graph_response, run_send, run_send_error
from tests.unit.test_sender import delivery, run, settings
from worker.delivery import policy
from worker.delivery.model import Outcome
from worker.delivery.policy import Action
from worker.graph import (
    AmbiguousError,
    GraphError,
    PermanentError,
    RateLimitedError,
    RecipientUnreachableError,
    TokenInvalidError,
    TransientError,
    UnconfirmedSendError,
    from_response,
)
from worker.states import State


def decide(error: GraphError, *, failures: int = 1, age: float = 0.0) -> policy.Decision:
    return policy.decide(
        settings(), error, failures=failures, age=age, fallbacks=[], tried=[], tag_suppressed=False
    )


# --- §3.2: Graph-wide codes ---------------------------------------------------------------------


@pytest.mark.parametrize("subcode", [None, 458, 463, 467], ids=["bare", "458", "463", "467"])
def test_oauth_session_code_102_is_an_invalid_token(subcode: int | None) -> None:
    """§3.2: 102 (session), "token expired/revoked/invalid -> get new token". It failed every
    message of the page one by one (permanent) instead of pausing the page."""
    error = from_response(graph_response(102, subcode, "Session key invalid or no longer valid"))
    assert type(error) is TokenInvalidError
    decision = decide(error)
    assert (decision.action, decision.pause_page) == (Action.WAIT, settings().token_pause_seconds)


def test_oauth_session_code_102_pauses_the_page_in_a_round() -> None:
    d = delivery()
    outcome, _, _ = run(lambda _r: graph_response(102, None, "Session key invalid"), d)
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.SCHEDULED
    assert outcome.pause is not None
    assert outcome.pause.reason == "token_invalid"
    assert d.failures == 0


@pytest.mark.parametrize(
    ("code", "subcode"), [(2, 1234567), (1, 2018001), (1200, 42)], ids=["2/unlisted", "1/unlisted", "1200/x"]
)
def test_temporary_codes_with_an_unlisted_subcode_are_retried(code: int, subcode: int) -> None:
    """§3.2: 1 "possibly a temporary issue ... wait and retry", 2 "temporary issue due to
    downtime. Wait and retry": a subcode the table does not name changed that into a failure."""
    error = from_response(
        graph_response(code, subcode, "An unexpected error has occurred.", is_transient=False)
    )
    assert type(error) is TransientError
    assert decide(error).action is Action.RETRY


def test_the_named_subcodes_of_1_and_2_keep_their_rows() -> None:
    assert type(from_response(graph_response(2, 2018344))) is PermanentError
    assert type(from_response(graph_response(1, 1357046))) is UnconfirmedSendError


def test_application_limit_341_waits_without_burning_an_attempt() -> None:
    """§3.2: 341 "Application limit reached: temporary (downtime/throttling) - wait and retry"."""
    error = from_response(graph_response(341, None, "(#341) Application limit reached"))
    assert type(error) is RateLimitedError
    decision = decide(error, failures=0)
    assert decision.action is Action.WAIT
    assert decision.pause_page is not None


# --- §3.3: 1/1357046 ----------------------------------------------------------------------------


def test_invalid_json_reply_is_not_blindly_retried() -> None:
    """§3.3 1/1357046: "DO NOT blind-retry (messages may already be delivered)". It was retried
    up to MAX_ATTEMPTS times, each call a likely second copy; now one call, then a dead letter
    (replayable by an operator) counted as a possible duplicate."""
    calls: list[httpx.Request] = []

    def graph(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return graph_response(1, 1357046, "Received invalid JSON reply.")

    d = delivery()
    outcome, observer, _ = run(graph, d)
    assert isinstance(outcome, Outcome)
    assert (outcome.status, outcome.reason) == (State.DEAD, "unconfirmed")
    assert outcome.possible_duplicate
    assert observer.calls == [(None, "ambiguous")]  # logged and counted as a possible duplicate
    assert len(calls) == 1


# --- answers outside Graph's tables (§3.3 notes, §1.4) ------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_without_a_graph_error_is_a_possible_duplicate(status: int) -> None:
    """A gateway's 5xx: the request reached Meta and may have been sent (a 504 is the gateway's
    own read timeout). It was retried like a refused connection, never counted as a possible
    duplicate, where a read timeout on our side was."""
    error = from_response(httpx.Response(status, text="<html><body>Gateway</body></html>"))
    assert type(error) is AmbiguousError
    decision = decide(error)
    assert (decision.action, decision.possible_duplicate) == (Action.RETRY, True)


def test_5xx_in_a_round_is_logged_as_a_possible_duplicate() -> None:
    d = delivery()
    outcome, observer, _ = run(lambda _r: httpx.Response(504, text="Gateway Timeout"), d)
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.RETRYING
    assert outcome.possible_duplicate
    assert observer.calls == [(None, "ambiguous")]


def test_a_2xx_carrying_a_graph_error_is_that_error() -> None:
    """A 200 whose body is Graph's error object was recorded as sent (message_id None)."""
    body = {"error": {"message": "(#551) This person isn't available", "code": 551, "fbtrace_id": "t"}}
    error = run_send_error(lambda _r: httpx.Response(200, json=body))
    assert type(error) is RecipientUnreachableError
    assert error.info.code == 551


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>captive portal</html>"),
        httpx.Response(200, json={}),
        httpx.Response(200, json=["m_1"]),
        httpx.Response(200, json={"recipient_id": "p1"}),
        httpx.Response(200, json={"recipient_id": "p1", "message_id": ""}),
        httpx.Response(204),
    ],
    ids=["html", "empty-object", "array", "no-message-id", "empty-message-id", "204"],
)
def test_a_2xx_without_a_message_id_is_not_recorded_as_sent(answer: httpx.Response) -> None:
    """§1.4: Graph's success answer names the message. Anything else was recorded ``sent``
    with no message id: a message possibly never sent, reported delivered to Braze."""
    error = run_send_error(lambda _r: answer)
    assert type(error) is AmbiguousError
    assert decide(error).possible_duplicate


def test_a_2xx_without_a_message_id_is_retried_in_a_round() -> None:
    d = delivery()
    outcome, _, _ = run(lambda _r: httpx.Response(200, text="OK"), d)
    assert isinstance(outcome, Outcome)
    assert outcome.status is State.RETRYING
    assert outcome.possible_duplicate


def test_a_sender_action_needs_no_message_id() -> None:
    """A sender action's success body names only the recipient (the sandbox answers the same)."""
    body: dict[str, Any] = {"recipient": {"id": "p1"}, "sender_action": "typing_on"}
    result = run_send(lambda _r: httpx.Response(200, json={"recipient_id": "p1"}), body=body)
    assert (result.http_status, result.message_id, result.recipient_id) == (200, None, "p1")


@pytest.mark.parametrize(
    ("status", "expected"), [(429, RateLimitedError), (408, TransientError)], ids=["429", "408"]
)
def test_a_proxys_429_and_408_are_not_permanent(status: int, expected: type[GraphError]) -> None:
    """Without a Graph error body these failed the message for good (PermanentError)."""
    error = from_response(httpx.Response(status, text="Too Many Requests"))
    assert type(error) is expected


# --- waits Graph asks for (§4.3) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "minutes", ["1e308", "1" + "0" * 30, "52560000"], ids=["1e308-to-inf-seconds", "10^30", "a-century"]
)
def test_a_huge_regain_estimate_is_capped(minutes: str) -> None:
    """Guard (held before this review too): an absurd ``estimated_time_to_regain_access`` pauses
    the page at most RATE_LIMIT_CAP_SECONDS, even when minutes*60 overflows to inf."""
    usage = f'{{"100": [{{"type": "messenger", "estimated_time_to_regain_access": {minutes}}}]}}'
    error = from_response(graph_response(80006, headers={"x-business-use-case-usage": usage}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is not None
    decision = decide(error, failures=0)
    cap = settings().rate_limit_cap_seconds
    assert decision.action is Action.WAIT
    assert decision.delay == decision.pause_page == cap
    assert math.isfinite(decision.delay)


@pytest.mark.parametrize("retry_after", ["99999999999999999999", "-5", "soon", "nan", "inf"])
def test_graph_retry_after_header_is_not_obeyed(retry_after: str) -> None:
    """Guard: Meta documents no ``Retry-After`` (§4.3); the service does not read it, so no value
    of it parks a page or a delivery: the wait is the capped backoff."""
    response = graph_response(
        4, None, "(#4) Application request limit reached", headers={"Retry-After": retry_after}
    )
    error = from_response(response)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after is None
    decision = decide(error, failures=1)
    assert 1.0 <= decision.delay <= settings().retry_cap_seconds


@pytest.mark.parametrize(
    ("code", "subcode"),
    [(2, 2018344), (4, 2018354), (613, 1893016), (9, 2018352), (2022, None), (2018300, None)],
    ids=["2/2018344", "4/2018354", "613/1893016", "9/2018352", "2022", "2018300"],
)
def test_is_transient_does_not_override_a_failing_row_of_the_table(code: int, subcode: int | None) -> None:
    """§3.3 says FAIL / DROP for these; Graph flags code 2 and throttling codes ``is_transient``
    (§3.1), and the sandbox does too: the flag turned them into retries (MAX_ATTEMPTS calls,
    then a dead letter), e.g. a Marketing Message Meta says to drop, or a page whose admin must
    accept the terms first."""
    error = from_response(
        graph_response(code, subcode, "x", status=500 if code == 2 else 400, is_transient=True)
    )
    assert type(error) is PermanentError
    assert decide(error).action is Action.FAIL


def test_is_transient_still_rescues_an_unknown_code() -> None:
    assert type(from_response(graph_response(3, None, "x", is_transient=True))) is TransientError

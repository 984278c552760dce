"""worker.delivery.policy.decide and backoff: one decision per error class (pure, deterministic with a seeded RNG)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from worker.config import Settings
from worker.delivery.policy import Action, Decision, backoff, decide
from worker.graph import (
    AmbiguousError,
    ErrorInfo,
    GraphError,
    PageRestrictedError,
    PermanentError,
    RateLimitedError,
    RecipientUnreachableError,
    TagAbuseError,
    TagRejectedError,
    TokenInvalidError,
    TransientError,
    WindowClosedError,
)

SETTINGS = Settings(
    page_access_tokens={"100": "tok-page-100-abcdef"},
    max_attempts=5,
    retry_base_seconds=2.0,
    retry_cap_seconds=60.0,
    message_ttl=86_400.0,
    rate_limit_cap_seconds=3_600.0,
    token_pause_seconds=900.0,
    restricted_pause_seconds=21_600.0,
    _env_file=None,
)


def err(cls: type[GraphError], code: int | None = 1, *, retry_after: float | None = None) -> GraphError:
    return cls(ErrorInfo(code=code, subcode=None, message="x"), retry_after=retry_after)


def run(
    error: GraphError,
    *,
    settings: Settings = SETTINGS,
    failures: int = 1,
    age: float = 0.0,
    fallbacks: list[str] | None = None,
    tried: list[str] | None = None,
    tag_suppressed: bool = False,
    seed: int = 0,
) -> Decision:
    return decide(
        settings,
        error,
        failures=failures,
        age=age,
        fallbacks=fallbacks or [],
        tried=tried or [],
        tag_suppressed=tag_suppressed,
        rng=random.Random(seed),
    )


def step(failures: int, settings: Settings = SETTINGS) -> float:
    return min(settings.retry_cap_seconds, settings.retry_base_seconds * float(2 ** (failures - 1)))


# ------------------------------------------------------------------------------------------------
# Transient / ambiguous


@pytest.mark.parametrize("failures", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_transient_retries_with_jittered_backoff(failures: int, seed: int) -> None:
    decision = run(err(TransientError, 2), failures=failures, seed=seed)
    assert decision.action is Action.RETRY
    assert decision.reason == "transient"
    assert step(failures) / 2 <= decision.delay <= step(failures)
    assert decision.possible_duplicate is False
    assert decision.pause_page is None
    assert not decision.suppress
    assert not decision.suppress_tagged


def test_transient_at_max_attempts_is_dead() -> None:
    decision = run(err(TransientError, 2), failures=SETTINGS.max_attempts)
    assert decision == Decision(Action.DEAD, "max_attempts")
    assert run(err(TransientError, 2), failures=SETTINGS.max_attempts + 3).action is Action.DEAD


def test_transient_past_the_ttl_is_dead() -> None:
    # failures=3: delay in [4, 8] s, but only 3 s of the message's TTL remain.
    decision = run(err(TransientError, 2), failures=3, age=SETTINGS.message_ttl - 3)
    assert decision.action is Action.DEAD
    assert decision.reason == "ttl_while_retrying"
    # With plenty of TTL left the same failure is retried.
    assert run(err(TransientError, 2), failures=3, age=SETTINGS.message_ttl - 100).action is Action.RETRY


def test_ambiguous_is_retried_as_possible_duplicate() -> None:
    decision = run(err(AmbiguousError, None), failures=2)
    assert decision.action is Action.RETRY
    assert decision.reason == "ambiguous"
    assert decision.possible_duplicate is True
    assert step(2) / 2 <= decision.delay <= step(2)
    dead = run(err(AmbiguousError, None), failures=SETTINGS.max_attempts)
    assert (dead.action, dead.possible_duplicate) == (Action.DEAD, True)


# ------------------------------------------------------------------------------------------------
# Rate limits


def test_rate_limited_waits_the_server_estimate_without_burning_an_attempt() -> None:
    # failures == max_attempts: a transient error would be dead, a rate limit still waits.
    decision = run(err(RateLimitedError, 80006, retry_after=120.0), failures=SETTINGS.max_attempts)
    assert decision.action is Action.WAIT
    assert decision.reason == "rate_limited"
    assert decision.delay == 120.0
    assert decision.pause_page == 120.0


@pytest.mark.parametrize("failures", [0, 1, 3])
def test_rate_limited_without_estimate_uses_backoff(failures: int) -> None:
    decision = run(err(RateLimitedError, 4), failures=failures)
    assert decision.action is Action.WAIT
    effective = max(failures, 1)
    assert max(1.0, step(effective) / 2) <= decision.delay <= step(effective)
    assert decision.pause_page == decision.delay


def test_rate_limited_wait_is_capped() -> None:
    decision = run(err(RateLimitedError, 80006, retry_after=10 * 3_600.0))
    assert decision.action is Action.WAIT
    assert decision.delay == SETTINGS.rate_limit_cap_seconds
    assert decision.pause_page == SETTINGS.rate_limit_cap_seconds


def test_rate_limited_wait_is_at_least_one_second() -> None:
    assert run(err(RateLimitedError, 80006, retry_after=0.2)).delay == 1.0


def test_rate_limited_past_the_ttl_is_dead() -> None:
    decision = run(err(RateLimitedError, 80006, retry_after=600.0), age=SETTINGS.message_ttl - 60)
    assert decision.action is Action.DEAD
    assert decision.reason == "ttl_while_rate_limited"


# ------------------------------------------------------------------------------------------------
# Window closed / tag rejected


@pytest.mark.parametrize("cls", [WindowClosedError, TagRejectedError])
def test_untried_fallback_tag_is_used(cls: type[GraphError]) -> None:
    decision = run(err(cls, 10), fallbacks=["tag:HUMAN_AGENT"])
    assert decision.action is Action.RETAG
    assert decision.next_route == "tag:HUMAN_AGENT"
    assert decision.reason == cls.reason
    assert decision.delay == 0.0


@pytest.mark.parametrize("cls", [WindowClosedError, TagRejectedError])
def test_next_fallback_tag_in_order(cls: type[GraphError]) -> None:
    decision = run(
        err(cls, 100),
        fallbacks=["tag:CUSTOMER_FEEDBACK", "tag:HUMAN_AGENT", "tag:NON_PROMOTIONAL_SUBSCRIPTION"],
        tried=["tag:CUSTOMER_FEEDBACK"],
    )
    assert (decision.action, decision.next_route) == (Action.RETAG, "tag:HUMAN_AGENT")


@pytest.mark.parametrize("cls", [WindowClosedError, TagRejectedError])
@pytest.mark.parametrize(
    "state",
    [
        {"fallbacks": []},
        {"fallbacks": ["tag:HUMAN_AGENT"], "tried": ["tag:HUMAN_AGENT"]},
        {"fallbacks": ["tag:HUMAN_AGENT"], "tag_suppressed": True},
    ],
    ids=["no-fallback", "all-tried", "tag-suppressed"],
)
def test_no_fallback_left_fails_outside_window(cls: type[GraphError], state: dict[str, Any]) -> None:
    decision = run(err(cls, 10), **state)
    assert decision.action is Action.FAIL
    assert decision.reason == "outside_window"
    assert decision.next_route is None


def test_window_policy_park() -> None:
    park = SETTINGS.model_copy(update={"window_policy": "park"})
    decision = run(err(WindowClosedError, 10), settings=park)
    assert decision.action is Action.PARK
    assert decision.reason == "outside_window"
    # A fallback tag still comes first.
    assert (
        run(err(WindowClosedError, 10), settings=park, fallbacks=["tag:HUMAN_AGENT"]).action is Action.RETAG
    )


# ------------------------------------------------------------------------------------------------
# Failures and page pauses


def test_unreachable_fails_and_suppresses() -> None:
    decision = run(err(RecipientUnreachableError, 551), failures=1)
    assert decision == Decision(Action.FAIL, "unreachable", suppress=True)


def test_tag_abuse_fails_and_suppresses_tagged_sends() -> None:
    decision = run(err(TagAbuseError, 613), fallbacks=["tag:HUMAN_AGENT"])
    assert decision == Decision(Action.FAIL, "tag_abuse", suppress_tagged=True)


def test_token_invalid_waits_and_pauses_the_page() -> None:
    decision = run(err(TokenInvalidError, 190), failures=SETTINGS.max_attempts)
    assert decision.action is Action.WAIT
    assert decision.reason == "token_invalid"
    assert decision.delay == SETTINGS.token_pause_seconds
    assert decision.pause_page == SETTINGS.token_pause_seconds


def test_page_restricted_waits_and_pauses_the_page_longer() -> None:
    decision = run(err(PageRestrictedError, 368))
    assert decision.action is Action.WAIT
    assert decision.reason == "page_restricted"
    assert decision.delay == SETTINGS.restricted_pause_seconds
    assert decision.pause_page == SETTINGS.restricted_pause_seconds


def test_permanent_fails() -> None:
    decision = run(err(PermanentError, 100), fallbacks=["tag:HUMAN_AGENT"])
    assert decision == Decision(Action.FAIL, "permanent")


def test_decide_is_deterministic_with_a_seeded_rng() -> None:
    first = run(err(TransientError, 2), failures=4, seed=7)
    assert first == run(err(TransientError, 2), failures=4, seed=7)


# ------------------------------------------------------------------------------------------------
# backoff


def test_backoff_bounds_and_cap() -> None:
    rng = random.Random(0)
    for failures in range(0, 20):
        expected = step(max(failures, 1))
        for _ in range(50):
            delay = backoff(SETTINGS, failures, rng)
            assert expected / 2 <= delay <= expected
            assert delay <= SETTINGS.retry_cap_seconds


def test_backoff_is_monotone_in_expectation() -> None:
    rng = random.Random(0)
    attempts = range(1, 12)
    means = [sum(backoff(SETTINGS, failures, rng) for _ in range(400)) / 400 for failures in attempts]
    # Equal jitter: the expected delay is 3/4 of the (doubling, then capped) step.
    for failures, mean in zip(attempts, means, strict=True):
        assert mean == pytest.approx(0.75 * step(failures), rel=0.05)
    uncapped = [m for f, m in zip(attempts, means, strict=True) if step(f) < SETTINGS.retry_cap_seconds]
    assert len(uncapped) == 5
    assert uncapped == sorted(uncapped)
    assert means[-1] == pytest.approx(0.75 * SETTINGS.retry_cap_seconds, rel=0.05)


def test_backoff_without_rng_uses_the_module_random() -> None:
    for _ in range(50):
        assert step(3) / 2 <= backoff(SETTINGS, 3) <= step(3)

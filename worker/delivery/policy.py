"""What to do with each outcome of a Send API call: send, retry, wait, re-tag, pause the page, fail.

:func:`decide` is pure: it takes the delivery's state and the error class from
:func:`worker.graph.classify` and returns a :class:`Decision`. The engine carries it out.

======================  ==========================================================================
class                   action
======================  ==========================================================================
TransientError          retry after capped, jittered exponential backoff; burns an attempt;
                        ``dead`` when MAX_ATTEMPTS is used up or the wait would pass MESSAGE_TTL
AmbiguousError          the same, and the attempt is logged/counted as a possible duplicate
UnconfirmedSendError    ``dead`` at once (replayable), as a possible duplicate: Graph's answer says
                        the message most likely went out (1/1357046), so it is never retried
RateLimitedError        wait (server estimate, else backoff) without burning an attempt; page paused
WindowClosedError       next untried fallback route (tag:<TAG>, utility:<name>), sent at once;
                        none left -> window policy
TagRejectedError        next untried fallback route; none left -> window policy (never a loop)
TemplateRejectedError   next untried fallback route; none left -> ``failed`` (template_rejected)
TemplatePausedError     next untried fallback route; none left -> wait
                        TEMPLATE_PAUSE_RETRY_SECONDS (no attempt burnt), dead at MESSAGE_TTL
RecipientUnreachable    ``failed``; PSID suppressed for SUPPRESSION_TTL
TagAbuseError           ``failed``; tagged sends to the PSID suppressed 24 h
TokenInvalidError       page paused until its token changes or an operator resumes it; message waits
PageRestrictedError     page paused RESTRICTED_PAUSE_SECONDS; message waits
PermanentError          ``failed`` with the Graph error recorded
======================  ==========================================================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from worker.config import Settings, WindowPolicy
from worker.delivery import routes
from worker.graph import (
    AmbiguousError,
    GraphError,
    PageRestrictedError,
    RateLimitedError,
    RecipientUnreachableError,
    TagAbuseError,
    TagRejectedError,
    TemplatePausedError,
    TemplateRejectedError,
    TokenInvalidError,
    TransientError,
    UnconfirmedSendError,
    WindowClosedError,
)


class Action(StrEnum):
    RETRY = "retry"  # back to the schedule; status retrying
    WAIT = "wait"  # like retry, but no attempt burnt (rate limit, paused page)
    RETAG = "retag"  # send again now with the next fallback tag
    FAIL = "fail"
    DEAD = "dead_letter"
    PARK = "park"  # outside the window with WINDOW_POLICY=park: until the user writes
    EXPIRE = "expire"  # MESSAGE_TTL passed before it could be sent


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay: float = 0.0
    #: RETAG: the fallback route to send at once (routes.py)
    next_route: str | None = None
    suppress: bool = False
    suppress_tagged: bool = False
    pause_page: float | None = None  # seconds; None = no page pause
    possible_duplicate: bool = False


def backoff(settings: Settings, failures: int, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with equal jitter: half fixed, half random."""
    step = min(settings.retry_cap_seconds, settings.retry_base_seconds * (2 ** max(0, failures - 1)))
    jitter = rng.uniform(0, step / 2) if rng is not None else random.uniform(0, step / 2)  # noqa: S311
    return float(step / 2 + jitter)


#: Waits that are the page's trouble, not the message's: a message whose TTL passes in one of them
#: is a dead letter (replayable once the page is fixed), not merely expired.
PAGE_WAITS = frozenset(
    {"page_paused", "token_invalid", "page_restricted", "rate_limited", "template_pending", "template_paused"}
)
#: The wait of a message whose utility template Meta paused (no other route left): indexed per
#: page and template by the recorder, released once the catalogue holds the template approved
#: again (worker/templates/waits.py), else due after TEMPLATE_PAUSE_RETRY_SECONDS.
TEMPLATE_PAUSED = TemplatePausedError.reason
#: A utility template the catalogue holds as pending approval: the message waits this long, again
#: and again (no attempt burnt), until it is approved (released then, as a paused one's) or
#: MESSAGE_TTL makes it a dead letter.
TEMPLATE_PENDING_WAIT = 60.0
TEMPLATE_PENDING = "template_pending"
#: The waits on a utility template: indexed per page and template by the recorder, released when
#: the catalogue holds the template approved (worker/templates/waits.py).
TEMPLATE_WAITS = frozenset({TEMPLATE_PAUSED, TEMPLATE_PENDING})


def past_ttl(failures: int, last_reason: str) -> Decision:
    """MESSAGE_TTL passed before the message could be sent: ``dead`` (replayable) when it was
    retrying or waiting for its page, ``expired`` otherwise (it just waited too long, e.g. parked)."""
    if failures or last_reason in PAGE_WAITS:
        return Decision(Action.DEAD, "ttl")
    return Decision(Action.EXPIRE, "ttl")


def window_outcome(settings: Settings) -> Decision:
    if settings.window_policy == WindowPolicy.PARK:
        return Decision(Action.PARK, "outside_window")
    return Decision(Action.FAIL, "outside_window")


def decide(
    settings: Settings,
    error: GraphError,
    *,
    failures: int,
    age: float,
    fallbacks: list[str],
    tried: list[str],
    tag_suppressed: bool,
    rng: random.Random | None = None,
) -> Decision:
    """``failures`` counts attempts burnt so far including this one; ``age`` is seconds since
    accept; ``tried`` the fallback routes tried, this round's included."""
    remaining_ttl = settings.message_ttl - age
    if isinstance(error, UnconfirmedSendError):  # §3.3: "DO NOT blind-retry"; an operator decides
        return Decision(Action.DEAD, "unconfirmed", possible_duplicate=True)
    if isinstance(error, TransientError):
        dup = isinstance(error, AmbiguousError)
        if failures >= settings.max_attempts:
            return Decision(Action.DEAD, "max_attempts", possible_duplicate=dup)
        delay = backoff(settings, failures, rng)
        if delay >= remaining_ttl:
            return Decision(Action.DEAD, "ttl_while_retrying", possible_duplicate=dup)
        return Decision(Action.RETRY, error.reason, delay=delay, possible_duplicate=dup)
    if isinstance(error, RateLimitedError):
        wait = error.retry_after if error.retry_after else backoff(settings, max(failures, 1), rng)
        wait = max(1.0, min(wait, settings.rate_limit_cap_seconds))
        if wait >= remaining_ttl:
            return Decision(Action.DEAD, "ttl_while_rate_limited")
        return Decision(Action.WAIT, error.reason, delay=wait, pause_page=wait)
    if isinstance(error, WindowClosedError | TagRejectedError | TemplateRejectedError):
        route = routes.next_route(fallbacks, tried, tag_suppressed=tag_suppressed)
        if route is not None:
            return Decision(Action.RETAG, error.reason, next_route=route)
        if isinstance(error, TemplatePausedError):
            wait = settings.template_pause_retry_seconds
            if wait >= remaining_ttl:
                return Decision(Action.DEAD, "ttl_while_template_paused")
            return Decision(Action.WAIT, error.reason, delay=wait)
        if isinstance(error, TemplateRejectedError):
            return Decision(Action.FAIL, error.reason)
        return window_outcome(settings)
    if isinstance(error, RecipientUnreachableError):
        return Decision(Action.FAIL, error.reason, suppress=True)
    if isinstance(error, TagAbuseError):
        return Decision(Action.FAIL, error.reason, suppress_tagged=True)
    if isinstance(error, TokenInvalidError):
        return Decision(
            Action.WAIT,
            error.reason,
            delay=settings.token_pause_seconds,
            pause_page=settings.token_pause_seconds,
        )
    if isinstance(error, PageRestrictedError):
        return Decision(
            Action.WAIT,
            error.reason,
            delay=settings.restricted_pause_seconds,
            pause_page=settings.restricted_pause_seconds,
        )
    return Decision(Action.FAIL, error.reason)

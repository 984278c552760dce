"""The delivery state machine: every status a delivery can have and every allowed transition.

This module is the only place where a status is spelled. Policy decides what should happen
(:mod:`worker.delivery.policy`), this table says whether it may happen and which status results
(:func:`apply`), and the store persists it (the Lua scripts get the same names from
:func:`lua_prelude`, so they never spell a status either).

::

      QUEUED ────┐                     ┌─ send_ok ─────> SENT
      SCHEDULED ─┤ claim               ├─ fail ────────> FAILED
      RETRYING ──┼───────> IN_FLIGHT ──┼─ expire ──────> EXPIRED
      PARKED ────┘          │     ^    └─ dead_letter ─> DEAD ── replay ──> QUEUED
        │ unpark            │     └── reclaim: its lease ended (the holder stopped renewing it)
        └──> QUEUED         └─ retry -> RETRYING, wait -> SCHEDULED, park -> PARKED,
                               release -> QUEUED (handed back unsent)

      any open state ── cancel ──> CANCELLED   (an operator: campaign stopped, delivery cancelled)

* **Open** states are in the ``pending`` index (the sweeper's safety net) and counted in their
  acceptance second unless parked (the backlog's age: worker/store/ages.py); **final** states
  have left both.
* Only ``IN_FLIGHT`` is held by a worker. A claim hands out a fence token; every write that
  changes a claimed delivery carries it, and a worker whose lease ended (it stopped renewing:
  dead, or cut off from Redis) can no longer write (``store/lua/record.lua``).
* ``CANCELLED`` is final: an operator stopped its campaign (``messenger-worker campaigns stop``)
  or cancelled it (``deliveries cancel``); it never reaches Graph after that (a claimed delivery
  is cancelled by its worker before the call: worker/campaigns.py says where the window is).
* ``DEAD`` is final but replayable: a dead letter keeps its body until replayed or purged.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from types import MappingProxyType
from typing import Final


class State(StrEnum):
    QUEUED = "queued"  # accepted; a Celery message names it (or will: released, swept)
    SCHEDULED = "scheduled"  # waiting for a due time: a pacing slot, a paused page, a rate limit
    RETRYING = "retrying"  # waiting for a due time after a failed attempt (backoff)
    PARKED = "parked"  # outside the 24-hour window until the user writes (WINDOW_POLICY=park)
    IN_FLIGHT = "in_flight"  # claimed by a worker: paced, sent, answered
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"
    DEAD = "dead"
    CANCELLED = "cancelled"  # an operator stopped its campaign or cancelled it: never sent


class Event(StrEnum):
    CLAIM = "claim"  # a worker takes it (open, due, not held)
    RECLAIM = "reclaim"  # the holder's lease ended without an outcome: another claim takes it
    SEND_OK = "send_ok"
    FAIL = "fail"  # refused for good (or a precheck: suppressed, no token, closed window)
    EXPIRE = "expire"  # MESSAGE_TTL passed before it was sent
    DEAD_LETTER = "dead_letter"  # out of attempts, or its TTL passed while it was retrying
    RETRY = "retry"  # a failed attempt: try again after a backoff
    WAIT = "wait"  # not sent, nothing burnt: a pacing slot later, a paused page, a rate limit
    PARK = "park"  # outside the window, WINDOW_POLICY=park
    RELEASE = "release"  # handed back unsent (shutdown, an engine error in its group)
    UNPARK = "unpark"  # the user wrote: parked deliveries go back to the queue
    REPLAY = "replay"  # an operator replays a dead letter
    CANCEL = "cancel"  # an operator stopped its campaign or cancelled it (any open state)


_OPEN_WAITING = (State.QUEUED, State.SCHEDULED, State.RETRYING, State.PARKED)
_OUTCOMES_OF_A_CLAIM = {
    Event.SEND_OK: State.SENT,
    Event.FAIL: State.FAILED,
    Event.EXPIRE: State.EXPIRED,
    Event.DEAD_LETTER: State.DEAD,
    Event.RETRY: State.RETRYING,
    Event.WAIT: State.SCHEDULED,
    Event.PARK: State.PARKED,
    Event.RELEASE: State.QUEUED,
    Event.RECLAIM: State.IN_FLIGHT,
    Event.CANCEL: State.CANCELLED,
}

#: (state, event) -> next state. Anything not in this table is illegal.
TRANSITIONS: Final = MappingProxyType(
    {
        **{(state, Event.CLAIM): State.IN_FLIGHT for state in _OPEN_WAITING},
        **{(State.IN_FLIGHT, event): target for event, target in _OUTCOMES_OF_A_CLAIM.items()},
        (State.PARKED, Event.UNPARK): State.QUEUED,
        (State.DEAD, Event.REPLAY): State.QUEUED,
        **{(state, Event.CANCEL): State.CANCELLED for state in (*_OPEN_WAITING, State.IN_FLIGHT)},
    }
)

FINAL: Final = frozenset({State.SENT, State.FAILED, State.EXPIRED, State.DEAD, State.CANCELLED})
OPEN: Final = frozenset(State) - FINAL
#: States a claim may take (IN_FLIGHT only once its lease has ended: RECLAIM).
CLAIMABLE: Final = frozenset(s for (s, e) in TRANSITIONS if e in (Event.CLAIM, Event.RECLAIM))
#: Final states whose record keeps its body (replayable); the others are compacted.
KEEPS_BODY: Final = frozenset({State.DEAD})


class IllegalTransition(ValueError):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


def apply(state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``; IllegalTransition when the table has none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


def parse(value: str) -> State:
    """A stored status. Records written before ``in_flight``/``scheduled`` existed hold only
    names that are still states, so every stored value parses."""
    return State(value)


def lua_set(names: Iterable[str]) -> str:
    """A Lua table keyed by ``names`` (each ``= true``): a set the scripts test with ``SET[x]``."""
    return "{" + ", ".join(f"{name}=true" for name in sorted(names)) + "}"


def lua_prelude() -> str:
    """The state names for the Lua scripts (prepended to every script by the store's loader):
    ``S.QUEUED`` ... and the sets ``OPEN``, ``FINAL``, ``CLAIMABLE`` and ``KEEPS_BODY`` as Lua
    tables keyed by status."""

    def table(states: frozenset[State]) -> str:
        return lua_set(s.value for s in states)

    names = ", ".join(f"{s.name}='{s.value}'" for s in State)
    return (
        f"local S = {{{names}}}\n"
        f"local OPEN = {table(OPEN)}\n"
        f"local FINAL = {table(FINAL)}\n"
        f"local CLAIMABLE = {table(CLAIMABLE)}\n"
        f"local KEEPS_BODY = {table(KEEPS_BODY)}\n"
    )

"""The delivery state machine (worker/states.py), walked as data: no Redis, no processes."""

from __future__ import annotations

import re
from collections import deque

import pytest

from worker import states
from worker.delivery.attempt import EVENT_OF
from worker.delivery.model import Delivery, Outcome
from worker.delivery.policy import Action
from worker.states import CLAIMABLE, FINAL, OPEN, TRANSITIONS, Event, IllegalTransition, State, apply


def reachable(start: State) -> set[State]:
    seen = {start}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        for (source, _event), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_every_state_is_reachable_from_acceptance() -> None:
    assert reachable(State.QUEUED) == set(State)


def test_every_open_state_can_end() -> None:
    for state in OPEN:
        assert reachable(state) & FINAL, state


def test_final_states_stay_final_except_a_replayed_dead_letter() -> None:
    outgoing = {(s, e): t for (s, e), t in TRANSITIONS.items() if s in FINAL}
    assert outgoing == {(State.DEAD, Event.REPLAY): State.QUEUED}


def test_only_a_claimed_delivery_gets_an_outcome() -> None:
    outcome_events = {Event.SEND_OK, Event.FAIL, Event.EXPIRE, Event.DEAD_LETTER, Event.RETRY, Event.WAIT}
    for (source, event), _target in TRANSITIONS.items():
        if event in outcome_events:
            assert source is State.IN_FLIGHT, (source, event)
    # and a claimed delivery can end in, or go back to, any state (reclaim included)
    assert {t for (s, _e), t in TRANSITIONS.items() if s is State.IN_FLIGHT} == set(State)


def test_claims_take_every_waiting_state_and_an_abandoned_claim() -> None:
    assert {State.QUEUED, State.SCHEDULED, State.RETRYING, State.PARKED, State.IN_FLIGHT} == CLAIMABLE
    assert apply(State.IN_FLIGHT, Event.RECLAIM) is State.IN_FLIGHT
    assert all(apply(s, Event.CLAIM) is State.IN_FLIGHT for s in CLAIMABLE - {State.IN_FLIGHT})


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_anything_outside_the_table_is_refused(state: State, event: Event) -> None:
    if (state, event) in TRANSITIONS:
        assert apply(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition):
            apply(state, event)


def test_cancel_ends_every_open_state_and_nothing_final() -> None:
    """An operator's cancel (a stopped campaign, `deliveries cancel`) takes any open delivery,
    held ones included (by their worker), to CANCELLED, which is final; a final one stays."""
    for state in OPEN:
        assert apply(state, Event.CANCEL) is State.CANCELLED
    for state in FINAL:
        with pytest.raises(IllegalTransition):
            apply(state, Event.CANCEL)
    assert State.CANCELLED in FINAL
    assert State.CANCELLED not in CLAIMABLE


def test_stored_values_parse_and_are_the_public_status_names() -> None:
    assert [s.value for s in State] == [
        "queued",
        "scheduled",
        "retrying",
        "parked",
        "in_flight",
        "sent",
        "failed",
        "expired",
        "dead",
        "cancelled",
    ]
    assert all(states.parse(s.value) is s for s in State)
    with pytest.raises(ValueError, match="'bogus'"):
        states.parse("bogus")


def test_the_lua_prelude_names_the_same_sets() -> None:
    prelude = states.lua_prelude()

    def table(name: str) -> set[str]:
        match = re.search(rf"local {name} = \{{(.*)\}}", prelude)
        assert match is not None, name
        return {item.split("=")[0].strip() for item in match.group(1).split(",") if item.strip()}

    assert table("OPEN") == {s.value for s in OPEN}
    assert table("FINAL") == {s.value for s in FINAL}
    assert table("CLAIMABLE") == {s.value for s in CLAIMABLE}
    assert table("KEEPS_BODY") == {State.DEAD.value}
    for state in State:
        assert f"{state.name}='{state.value}'" in prelude


def test_every_policy_action_but_retag_is_an_event_of_a_claim() -> None:
    assert set(EVENT_OF) == set(Action) - {Action.RETAG}
    for event in EVENT_OF.values():
        apply(State.IN_FLIGHT, event)  # raises if the table had no such outcome


def test_an_outcome_takes_its_status_from_the_table() -> None:
    d = Delivery("d1", "c1", "100", "p1", {})
    assert Outcome(d, Event.RETRY).status is State.RETRYING
    assert Outcome(d, Event.WAIT).status is State.SCHEDULED
    assert Outcome(d, Event.RELEASE).status is State.QUEUED
    assert Outcome(d, Event.SEND_OK).final
    with pytest.raises(IllegalTransition):
        Outcome(d, Event.REPLAY)  # not something that happens to a claimed delivery

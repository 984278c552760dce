"""The template catalogue's pure parts: Graph's template objects, the intake's refusals, the
sender's states, and message_template_status_update webhook events."""

from __future__ import annotations

from typing import Any

import pytest

from worker.messenger.utility import UtilityTemplate
from worker.templates import TemplateInfo, from_graph, parse_status_events, refusal, template_state
from worker.templates.events import TEMPLATE_STATUS, StatusEvent


def graph_template(**fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": "1234",
        "name": "order_update",
        "language": "en_US",
        "status": "APPROVED",
        "category": "UTILITY",
        "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} shipped"}],
    }
    out.update(fields)
    return out


def test_positional_parameters_are_read_from_the_body_placeholders() -> None:
    info = from_graph(graph_template(), at=5.0)
    assert info is not None
    assert (info.name, info.language, info.status) == ("order_update", "en_US", "APPROVED")
    assert (info.parameter_count, info.parameter_names, info.template_id) == (2, (), "1234")
    assert info.updated_at == 5.0


def test_named_parameters_keep_their_order_and_appear_once() -> None:
    body = {"type": "BODY", "text": "Hi {{name}}, see you at {{ time }}, {{name}}"}
    info = from_graph(graph_template(components=[body]))
    assert info is not None
    assert (info.parameter_count, info.parameter_names) == (2, ("name", "time"))


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ({"body_text": [["Ann", "A-1", "x"]]}, (3, ())),
        ({"body_text_named_params": [{"param_name": "code", "example": "1"}]}, (1, ("code",))),
    ],
)
def test_parameters_fall_back_to_the_example_values(
    example: dict[str, Any], expected: tuple[int, tuple[str, ...]]
) -> None:
    info = from_graph(graph_template(components=[{"type": "BODY", "example": example}]))
    assert info is not None
    assert (info.parameter_count, info.parameter_names) == expected


def test_buttons_status_and_reason() -> None:
    buttons = {"type": "BUTTONS", "buttons": [{"type": "quick_reply", "text": "Yes"}, {"type": "URL"}]}
    info = from_graph(
        graph_template(status="rejected", rejected_reason="INVALID_FORMAT", components=[buttons])
    )
    assert info is not None
    assert info.buttons == ("QUICK_REPLY", "URL")
    assert (info.status, info.reason) == ("REJECTED", "INVALID_FORMAT")
    assert info.parameter_count is None  # no BODY: parameters are not checked
    approved = from_graph(graph_template(rejected_reason="NONE"))
    assert approved is not None
    assert approved.reason is None


@pytest.mark.parametrize("item", [{"name": "x"}, {"language": "en_US"}, {"name": "", "language": "en"}])
def test_an_object_without_name_or_language_is_skipped(item: dict[str, Any]) -> None:
    assert from_graph(item) is None


def test_the_stored_json_round_trips() -> None:
    info = TemplateInfo(
        "appointment_reminder",
        "en_US",
        "PAUSED",
        2,
        ("name", "time"),
        ("URL",),
        "low quality",
        "77",
        "UTILITY",
        12.5,
    )
    back = TemplateInfo.from_json(info.to_json())
    assert back == info
    assert back.updated_at == 12.5
    assert info.as_dict()["state"] == "paused"


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("APPROVED", "approved"),
        ("PENDING", "pending"),
        ("IN_APPEAL", "pending"),
        ("PAUSED", "paused"),
        ("DISABLED", "disabled"),
        ("PENDING_DELETION", "disabled"),
        ("REJECTED", "rejected"),
        ("SOMETHING_NEW", "unknown"),
    ],
)
def test_template_state(status: str, state: str) -> None:
    assert template_state(TemplateInfo("t", "en_US", status)) == state


def test_no_template_is_unknown() -> None:
    assert template_state(None) == "unknown"


POSITIONAL = TemplateInfo("order_update", "en_US", "APPROVED", 2)
NAMED = TemplateInfo("appointment_reminder", "en_US", "APPROVED", 2, ("name", "time"))


def test_an_unknown_catalogue_refuses_nothing() -> None:
    assert refusal(None, UtilityTemplate("anything", "en_US", ("a",)), known=False) is None


def test_a_known_catalogue_refuses_a_template_it_does_not_hold() -> None:
    code, message = refusal(None, UtilityTemplate("nope", "pt_BR"), known=True) or ("", "")
    assert code == "unknown_utility_template"
    assert "'nope'" in message
    assert "pt_BR" in message


@pytest.mark.parametrize("status", ["DISABLED", "REJECTED", "PENDING_DELETION", "DELETED", "ARCHIVED"])
def test_a_template_that_is_not_approved_is_refused_with_its_status(status: str) -> None:
    info = TemplateInfo("order_update", "en_US", status, 2, reason="because")
    code, message = refusal(info, UtilityTemplate("order_update", "en_US", ("a", "b")), True) or ("", "")
    assert code == "utility_template_not_approved"
    assert status in message
    assert "'order_update'" in message
    assert "because" in message


@pytest.mark.parametrize(
    ("info", "sent", "expected"),
    [
        (POSITIONAL, UtilityTemplate("order_update", "en_US", ("a",)), "expects 2 parameters; given 1"),
        (POSITIONAL, UtilityTemplate("order_update", "en_US", ("a", "b", "c")), "given 3"),
        (POSITIONAL, UtilityTemplate("order_update", "en_US", named=(("x", "1"), ("y", "2"))), "named: x, y"),
        (NAMED, UtilityTemplate("appointment_reminder", "en_US", named=(("name", "A"),)), "name, time"),
        (NAMED, UtilityTemplate("appointment_reminder", "en_US", ("a", "b")), "2 positional"),
        (NAMED, UtilityTemplate("appointment_reminder", "en_US"), "given: 0 positional"),
    ],
)
def test_parameters_that_do_not_fit_are_refused(
    info: TemplateInfo, sent: UtilityTemplate, expected: str
) -> None:
    code, message = refusal(info, sent, True) or ("", "")
    assert code == "utility_template_parameters"
    assert expected in message
    assert repr(info.name) in message


@pytest.mark.parametrize(
    ("info", "sent"),
    [
        (POSITIONAL, UtilityTemplate("order_update", "en_US", ("a", "b"))),
        (NAMED, UtilityTemplate("appointment_reminder", "en_US", named=(("time", "9"), ("name", "A")))),
        (TemplateInfo("t", "en_US", "APPROVED", None), UtilityTemplate("t", "en_US", ("any",))),
        (TemplateInfo("t", "en_US", "APPROVED", 0), UtilityTemplate("t", "en_US")),
    ],
)
def test_fitting_parameters_pass(info: TemplateInfo, sent: UtilityTemplate) -> None:
    assert refusal(info, sent, True) is None


def webhook(*changes: Any, time: Any = 1767225600) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": "100", "time": time, "changes": list(changes)}]}


def change(**value: Any) -> dict[str, Any]:
    base = {
        "event": "PAUSED",
        "message_template_id": 42,
        "message_template_name": "order_update",
        "message_template_language": "en_US",
        "reason": "NONE",
    }
    return {"field": "message_template_status_update", "value": {**base, **value}}


def test_status_events_are_read_from_changes() -> None:
    events = parse_status_events(webhook(change(), change(event="approved", reason="ok")))
    assert events == [
        StatusEvent("100", "PAUSED", "order_update", "en_US", "42", None, 1767225600.0),
        StatusEvent("100", "APPROVED", "order_update", "en_US", "42", "ok", 1767225600.0),
    ]
    assert events[0].as_dict()["kind"] == TEMPLATE_STATUS


def test_milliseconds_are_read_as_seconds() -> None:
    (event,) = parse_status_events(webhook(change(), time=1767225600123))
    assert event.timestamp == pytest.approx(1767225600.123)


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        {"object": "instagram", "entry": [{"id": "1", "changes": [change()]}]},
        webhook({"field": "feed", "value": change()["value"]}),
        webhook(change(message_template_name=None)),
        webhook(change(event=7)),
        webhook("not a change", {"field": "message_template_status_update", "value": "x"}),
        {"object": "page", "entry": [{"changes": [change()]}, "x", {"id": "1", "changes": "x"}]},
    ],
)
def test_anything_else_is_skipped_without_raising(payload: Any) -> None:
    assert parse_status_events(payload) == []

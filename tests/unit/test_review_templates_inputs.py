"""Review of the utility-template inputs: X-Utility-Template's options, X-Utility-Parameters
holding Liquid Braze did not render, the intake's refusal of templates that wait (pending,
paused), and Graph template objects of the wrong shape."""

from __future__ import annotations

from typing import Any

import pytest

from worker.messenger.errors import InputError
from worker.messenger.utility import UtilityTemplate, from_headers, template_of
from worker.templates import TemplateInfo, from_graph, refusal


def header(template: str, parameters: str | None = None, **defaults: Any) -> UtilityTemplate | None:
    return from_headers(template, parameters, default_language="en_US", defaults=defaults or None)


def refused(template: str, parameters: str | None = None, **defaults: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        header(template, parameters, **defaults)
    assert caught.value.status == 422
    return caught.value


# --- X-Utility-Parameters: Liquid left as written ----------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "where", "tag"),
    [
        ('["{{${first_name}}}", "A-1"]', "parameter 1", "{{${first_name}}}"),
        ('["Ada", "order {{custom_attribute.${order}}}"]', "parameter 2", "{{custom_attribute.${order}}}"),
        ('{"name": "{% if x %}Ada{% endif %}", "time": "9"}', "name", "{% if x %}"),
        ('["{{ 1 }}"]', "parameter 1", "{{ 1 }}"),
    ],
)
def test_a_liquid_tag_braze_did_not_render_is_refused(parameters: str, where: str, tag: str) -> None:
    error = refused("order_update", parameters)
    assert error.code == "invalid_utility_parameters"
    assert where in error.message
    assert repr(tag) in error.message
    assert "Liquid" in error.message


def test_liquid_in_the_configured_default_parameters_is_refused_too() -> None:
    error = refused("order_update", None, order_update={"parameters": ["{{${first_name}}}"]})
    assert error.code == "invalid_utility_parameters"
    assert "UTILITY_TEMPLATES[order_update]" in error.message


@pytest.mark.parametrize("value", ["{a}", "a } b {", "50% {off", "}}{{", "{ {x} }", "Ada {{"])
def test_braces_that_are_not_a_liquid_tag_pass(value: str) -> None:
    t = header("order_update", f'["{value}"]')
    assert t is not None
    assert t.positional == (value,)


def test_a_direct_utility_body_is_read_as_graph_reads_it() -> None:
    """template_of is Graph's reading (the sandbox and the worker use it): literal text passes."""
    body = {
        "recipient": {"id": "1"},
        "messaging_type": "UTILITY",
        "message": {
            "template": {
                "name": "order_update",
                "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{x}}"}]}],
            }
        },
    }
    t = template_of(body)
    assert t is not None
    assert t.positional == ("{{x}}",)


# --- X-Utility-Template's options ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "language"),
    [
        ("order_update; lang=fr_FR", "fr_FR"),
        ("  order_update ;  LANG = fr_FR ; ", "fr_FR"),
        ("order_update;;language=pt_BR", "pt_BR"),
        ("order_update", "en_US"),
        ("order_update;", "en_US"),
    ],
)
def test_the_template_header_options(value: str, language: str) -> None:
    t = header(value)
    assert t is not None
    assert (t.name, t.language) == ("order_update", language)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("order_update; lang=", "lang= needs a language code"),
        ("order_update; lang=en_US; lang=fr_FR", "the language is given twice"),
        ("order_update; lang=en_US; language=en_US", "the language is given twice"),
        ("order_update; =fr_FR", "unknown option '=fr_FR'"),
        ("order_update; fr_FR", "unknown option 'fr_FR'"),
        ("order_update; lang=en_US; region=US", "unknown option 'region"),
    ],
)
def test_an_option_that_is_ambiguous_or_empty_is_refused_by_name(value: str, expected: str) -> None:
    error = refused(value)
    assert error.code == "invalid_utility_template"
    assert expected in error.message


# --- the intake's refusal: what waits is not refused --------------------------------------------
@pytest.mark.parametrize("status", ["PENDING", "IN_APPEAL", "PAUSED", "SOMETHING_NEW"])
def test_a_template_that_waits_or_that_graph_decides_is_not_refused(status: str) -> None:
    """A pause lifts after hours and approval takes seconds: the worker waits for them or takes
    the next route, while a 422 would lose the message (Braze does not retry a 4xx), for users
    inside the window too."""
    info = TemplateInfo("order_update", "en_US", status, 2)
    assert refusal(info, UtilityTemplate("order_update", "en_US", ("a", "b")), True) is None
    code, _ = refusal(info, UtilityTemplate("order_update", "en_US", ("a",)), True) or ("", "")
    assert code == "utility_template_parameters"  # what does not change by waiting still is


@pytest.mark.parametrize("status", ["DISABLED", "REJECTED", "DELETED", "PENDING_DELETION"])
def test_a_template_that_cannot_be_sent_is_still_refused(status: str) -> None:
    info = TemplateInfo("order_update", "en_US", status, 2)
    code, message = refusal(info, UtilityTemplate("order_update", "en_US", ("a", "b")), True) or ("", "")
    assert code == "utility_template_not_approved"
    assert status in message


def test_the_refusal_names_the_page_whose_catalogue_refuses() -> None:
    """A campaign may send as several pages: the one without the template is named."""
    sent = UtilityTemplate("order_update", "fr_FR", ("a", "b"))
    _, message = refusal(None, sent, True, "4242") or ("", "")
    assert "of page 4242" in message
    assert "'order_update' (fr_FR)" in message


# --- Graph's template objects, of any shape ---------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        {"components": 5},
        {"components": "BODY"},
        {"components": [{"type": "BUTTONS", "buttons": 7}]},
        {"components": [{"type": "BUTTONS", "buttons": {"type": "URL"}}]},
        {"components": [{"type": "BODY", "text": ["{{1}}"]}]},
        {"components": [{"type": "BODY", "example": {"body_text_named_params": [{"param_name": None}]}}]},
    ],
)
def test_an_object_of_the_wrong_shape_never_raises(fields: dict[str, Any]) -> None:
    info = from_graph({"name": "t", "language": "en_US", "status": "APPROVED", **fields}, at=1.0)
    assert info is not None
    assert info.buttons == ()
    assert info.parameter_names == ()
    assert info.parameter_count is None  # unreadable: not checked (Graph decides)

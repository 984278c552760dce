"""Every Send API recipient and action, bodies Graph always refuses, utility templates from the
request, and the fallback routes (issue: reach every user Meta allows)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from worker.config import Settings
from worker.delivery import routes
from worker.messenger import recipients, utility
from worker.messenger.errors import InputError
from worker.messenger.validation import SendHeaders, SendRequest, validate
from worker.store.windows import window_closed

PAGE = "100"
PAGE_TOKEN = "tok-page-100-abcdef"
OTHER_PAGE = "200"
OTHER_TOKEN = "tok-page-200-ghijkl"


def settings(**kw: Any) -> Settings:
    values: dict[str, Any] = {
        "page_access_tokens": {PAGE: PAGE_TOKEN, OTHER_PAGE: OTHER_TOKEN},
        "_env_file": None,
    }
    values.update(kw)
    return Settings(**values)


SETTINGS = settings()


def send(body: dict[str, Any], s: Settings = SETTINGS, **kw: Any) -> SendRequest:
    kw.setdefault("path_page_id", PAGE)
    return validate(orjson.dumps(body), s, **kw)


def refused(body: dict[str, Any], s: Settings = SETTINGS, **kw: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        send(body, s, **kw)
    return caught.value


def text(recipient: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"recipient": recipient, "messaging_type": "UPDATE", "message": {"text": "hi"}, **extra}


# --- recipients ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("recipient", "key"),
    [
        ({"id": "1234"}, "1234"),
        ({"phone_number": "+1 (212) 555-2368"}, "phone:+1 (212) 555-2368"),
        (
            {"phone_number": "+12125552368", "name": {"first_name": "Ada", "last_name": "L"}},
            "phone:+12125552368",
        ),
        ({"user_ref": "cb-ref-1"}, "uref:cb-ref-1"),
        ({"notification_messages_token": "nmt-abc"}, "nmt:nmt-abc"),
        ({"one_time_notif_token": "otn-abc"}, "otn:otn-abc"),
        ({"comment_id": "123_456"}, "cmt:123_456"),
        ({"post_id": 987654}, "post:987654"),
    ],
)
def test_every_recipient_kind_is_accepted_and_keyed(recipient: dict[str, Any], key: str) -> None:
    req = send(text(recipient))
    assert req.psid == key
    assert req.body["recipient"] == {k: (str(v) if k == "post_id" else v) for k, v in recipient.items()}
    assert recipients.is_psid(key) is ("id" in recipient)
    assert (req.fallbacks == []) or "id" in recipient


@pytest.mark.parametrize(
    ("recipient", "code", "words"),
    [
        ({}, "missing_recipient", "recipient.id"),
        ({"id": ""}, "missing_recipient", "recipient.id"),
        ({"id": "1", "user_ref": "x"}, "invalid_recipient", "id and user_ref"),
        ({"phone_number": "call me"}, "invalid_recipient", "phone_number"),
        ({"comment_id": "abc"}, "invalid_recipient", "comment_id"),
        ({"user_ref": "x", "name": {"first_name": "A"}}, "invalid_recipient", "recipient.name"),
        ({"phone_number": "+12125552368", "name": {"nick": "A"}}, "invalid_recipient", "first_name"),
        ({"id": "a:b"}, "invalid_recipient", ":"),
        ({"id": "12\u000034"}, "invalid_recipient", "control characters"),
        ({"id": "12\n34"}, "invalid_recipient", "control characters"),
        ({"id": "12\x7f"}, "invalid_recipient", "control characters"),
        ({"id": "12\u001b[0m"}, "invalid_recipient", "control characters"),
        ({"id": "12 34"}, "invalid_recipient", "whitespace"),
        ({"id": "12\u00a034"}, "invalid_recipient", "whitespace"),
        ({"id": "12\u200334"}, "invalid_recipient", "whitespace"),
        ({"id": "-5"}, "invalid_recipient", "negative"),
        ({"id": -5}, "invalid_recipient", "negative"),
        ({"id": "-1234567890123456"}, "invalid_recipient", "negative"),
        ({"user_ref": "ref\u0000x"}, "invalid_recipient", "user_ref must not contain control"),
        ({"one_time_notif_token": "otn\r\nx"}, "invalid_recipient", "one_time_notif_token"),
    ],
)
def test_bad_recipients_are_refused_by_name(recipient: dict[str, Any], code: str, words: str) -> None:
    err = refused(text(recipient))
    assert (err.status, err.code) == (422, code)
    assert words in err.message


@pytest.mark.parametrize(
    "psid",
    [
        "1234567890123456",
        "err-551-anything",
        "flaky2-1200-x",
        "outside-x",
        "slow300-x",
        "http5xx-x",
        "drop-x",
        "throttle1-x",
        "b1700000000-ra1",
        "-",
        "-x",
        "psid-1",
        "d\u00e9j\u00e0",
    ],
)
def test_sandbox_and_test_psids_that_are_not_digits_still_pass(psid: str) -> None:
    """Meta's PSIDs are digits, but the sandbox's reserved ids (README "Try a failure") and the
    tests' are not: only control characters, whitespace and a negative number are refused."""
    assert send(text({"id": psid})).psid == psid
    assert send(text({"id": f" {psid}\n"})).psid == psid  # surrounding whitespace is stripped


def test_a_non_psid_recipient_takes_no_fallback_routes() -> None:
    s = settings(fallback_tags=["HUMAN_AGENT"])
    assert send(text({"id": "1"}), s).fallbacks == ["tag:HUMAN_AGENT"]
    assert send(text({"one_time_notif_token": "otn"}), s).fallbacks == []


# --- actions --------------------------------------------------------------------------------------
def test_react_and_unreact_carry_their_payload() -> None:
    react = send(
        {
            "recipient": {"id": "1"},
            "sender_action": "react",
            "payload": {"message_id": "m_1", "reaction": "😊"},
        }
    )
    assert react.body["payload"] == {"message_id": "m_1", "reaction": "😊"}
    unreact = send({"recipient": {"id": "1"}, "sender_action": "unreact", "payload": {"message_id": "m_1"}})
    assert unreact.body["sender_action"] == "unreact"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"recipient": {"id": "1"}, "sender_action": "react"}, "invalid_payload"),
        (
            {"recipient": {"id": "1"}, "sender_action": "react", "payload": {"message_id": "m"}},
            "invalid_payload",
        ),
        (
            {
                "recipient": {"id": "1"},
                "sender_action": "unreact",
                "payload": {"message_id": "m", "reaction": "x"},
            },
            "invalid_payload",
        ),
        (
            {"recipient": {"id": "1"}, "sender_action": "typing_on", "payload": {"message_id": "m"}},
            "invalid_payload",
        ),
        (
            {
                "recipient": {"user_ref": "u"},
                "sender_action": "react",
                "payload": {"message_id": "m", "reaction": "x"},
            },
            "invalid_recipient",
        ),
        ({"recipient": {"id": "1"}, "sender_action": "wave"}, "invalid_sender_action"),
        ({**text({"id": "1"}), "payload": {"message_id": "m"}}, "invalid_payload"),
    ],
)
def test_bad_actions_are_refused(body: dict[str, Any], code: str) -> None:
    assert refused(body).code == code


# --- bodies Graph always refuses --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "extra", "code", "words"),
    [
        (
            {"text": "hi", "attachment": {"type": "image", "payload": {"url": "https://x/i.png"}}},
            {},
            "text_and_attachment",
            "text and attachment",
        ),
        ({"text": "hi"}, {"notification_type": "LOUD"}, "invalid_notification_type", "notification_type"),
        (
            {"text": "hi", "quick_replies": [{"content_type": "text", "payload": "P"}]},
            {},
            "invalid_quick_reply",
            "quick_replies[0]",
        ),
        (
            {"text": "hi", "quick_replies": [{"content_type": "text", "title": "Yes"}]},
            {},
            "invalid_quick_reply",
            "payload",
        ),
        (
            {"text": "hi", "quick_replies": [{"content_type": "location"}]},
            {},
            "invalid_quick_reply",
            "content_type",
        ),
        ({"attachment": {"type": "gif", "payload": {}}}, {}, "invalid_attachment", "attachment.type"),
        ({"text": "hi", "metadata": "m" * 1000}, {}, "invalid_message", "metadata"),
    ],
)
def test_bodies_graph_refuses_are_refused_naming_the_field(
    message: dict[str, Any], extra: dict[str, Any], code: str, words: str
) -> None:
    err = refused({"recipient": {"id": "1"}, "messaging_type": "UPDATE", "message": message, **extra})
    assert (err.status, err.code) == (422, code)
    assert words in err.message


def test_quick_replies_of_every_kind_and_a_sticker_pass() -> None:
    replies = [
        {"content_type": "text", "title": "Yes", "payload": "YES"},
        {"content_type": "user_email"},
        {"content_type": "user_phone_number"},
    ]
    assert (
        send(text({"id": "1"}) | {"message": {"text": "hi", "quick_replies": replies}}).body["message"][
            "quick_replies"
        ]
        == replies
    )
    assert send(text({"id": "1"}) | {"message": {"sticker_id": 369239263222822}}).kind == "text"


# --- the page from a token in the body ------------------------------------------------------------
def test_an_access_token_in_the_body_selects_its_page_and_is_never_kept() -> None:
    req = send(text({"id": "1"}, access_token=OTHER_TOKEN), path_page_id="me")
    assert (req.page_id, "access_token" in req.body) == (OTHER_PAGE, False)
    assert OTHER_TOKEN.encode() not in req.body_json
    assert (
        refused(text({"id": "1"}, access_token="EAAB-not-ours-0123"), path_page_id="me").code
        == "unknown_page_token"
    )
    mismatch = refused(text({"id": "1"}, access_token=OTHER_TOKEN), path_page_id="me", query_token=PAGE_TOKEN)
    assert (mismatch.status, mismatch.code) == (403, "page_token_mismatch")
    assert refused(text({"id": "1"}, appsecret_proof="abc")).code == "token_in_body"


# --- utility templates ------------------------------------------------------------------------------
def headers(template: str | None, parameters: str | None = None, tags: str | None = None) -> SendHeaders:
    return SendHeaders(fallback_tags=tags, utility_template=template, utility_parameters=parameters)


def test_x_utility_template_becomes_the_first_route_outside_the_window() -> None:
    req = send(text({"id": "1"}), headers=headers("order_update; lang=pt_BR", '["Ada", 42]', "HUMAN_AGENT"))
    assert req.fallbacks == ["utility:order_update", "tag:HUMAN_AGENT"]
    assert req.utility == utility.UtilityTemplate("order_update", "pt_BR", ("Ada", "42"))
    tags_first = settings(fallback_order=["tags", "utility"])
    assert send(
        text({"id": "1"}), tags_first, headers=headers("order_update", None, "HUMAN_AGENT")
    ).fallbacks == [
        "tag:HUMAN_AGENT",
        "utility:order_update",
    ]
    assert (
        send(text({"id": "1"}), settings(fallback_order=["tags"]), headers=headers("order_update")).utility
        is None
    )


def test_named_parameters_and_defaults_from_utility_templates() -> None:
    named = send(text({"id": "1"}), headers=headers("appointment", '{"name": "Ada", "time": "9:00"}'))
    assert named.utility is not None
    assert named.utility.named == (("name", "Ada"), ("time", "9:00"))
    message = utility.template_message(named.utility)
    assert message["template"]["components"][0]["parameters"][0] == {
        "type": "text",
        "parameter_name": "name",
        "text": "Ada",
    }
    s = settings(
        utility_templates='{"order_update": {"language": "fr_FR", "parameters": ["-"]}}',
        utility_default_language="de_DE",
    )
    default = send(text({"id": "1"}), s, headers=headers("order_update"))
    assert default.utility == utility.UtilityTemplate("order_update", "fr_FR", ("-",))
    assert send(text({"id": "1"}), s, headers=headers("other")).utility == utility.UtilityTemplate(
        "other", "de_DE"
    )


@pytest.mark.parametrize(
    ("template", "parameters", "code"),
    [
        ("Order Update", None, "invalid_utility_template"),
        ("order_update; lang=english", None, "invalid_utility_template"),
        ("order_update; colour=red", None, "invalid_utility_template"),
        ("order_update", "[Ada]", "invalid_utility_parameters"),
        ("order_update", '[""]', "invalid_utility_parameters"),
        ("order_update", '[{"a": 1}]', "invalid_utility_parameters"),
        ("order_update", '"Ada"', "invalid_utility_parameters"),
        (None, '["Ada"]', "invalid_utility_template"),
    ],
)
def test_bad_utility_headers_are_refused(template: str | None, parameters: str | None, code: str) -> None:
    assert refused(text({"id": "1"}), headers=headers(template, parameters)).code == code


@pytest.mark.parametrize(
    ("name", "language"),
    [("order_update\n", "en_US"), ("order_update", "en_US\n"), ("order_update", "en\n")],
    ids=repr,
)
def test_a_template_name_or_language_with_a_trailing_newline_is_refused(name: str, language: str) -> None:
    with pytest.raises(InputError) as caught:
        utility.check_name(name, language, "message.template")
    assert caught.value.code == "invalid_utility_template"
    template = {"name": name, "language": {"code": language}}
    direct = {"recipient": {"id": "1"}, "messaging_type": "UTILITY", "message": {"template": template}}
    assert refused(direct).code == "invalid_utility_template"
    utility.check_name(name.strip(), language.strip(), "message.template")  # the same, without it


def test_a_utility_template_needs_a_psid() -> None:
    err = refused(text({"user_ref": "u"}), headers=headers("order_update"))
    assert err.code == "invalid_utility_template"


def test_a_direct_utility_body_is_validated_and_needs_no_route() -> None:
    t = utility.UtilityTemplate("order_update", "en_US", ("Ada", "#42"))
    body = utility.utility_body({"recipient": {"id": "1"}}, t)
    req = send(body, settings(fallback_tags=["HUMAN_AGENT"]))
    assert (req.utility, req.fallbacks) == (t, [])
    assert routes.delivered_via(req.body, req.psid, routes.AS_GIVEN) == "utility:order_update"
    assert routes.outside_window_capable(req.body)
    broken = {"recipient": {"id": "1"}, "messaging_type": "UTILITY", "message": {"text": "hi"}}
    assert refused(broken).code == "invalid_utility_template"


def test_stored_template_round_trips() -> None:
    for t in (
        utility.UtilityTemplate("a", "en", ("x",)),
        utility.UtilityTemplate("b", "en_US", named=(("k", "v"),)),
    ):
        assert utility.from_json(orjson.loads(orjson.dumps(t.as_json()))) == t


# --- routes --------------------------------------------------------------------------------------------
def test_route_bodies_and_what_is_reported() -> None:
    body = text({"id": "1"})
    t = utility.UtilityTemplate("order_update", "en_US")
    assert routes.body_for(body, "tag:HUMAN_AGENT", t)["tag"] == "HUMAN_AGENT"
    assert routes.body_for(body, "utility:order_update", t)["messaging_type"] == "UTILITY"
    assert routes.body_for(body, "", t) is body
    assert routes.delivered_via(body, "1", "") == "window"
    assert routes.delivered_via(text({"comment_id": "1_2"}), "cmt:1_2", "") == "comment_id"
    assert routes.next_route(["tag:A", "utility:b"], ["tag:A"], tag_suppressed=False) == "utility:b"
    assert routes.next_route(["tag:A"], [], tag_suppressed=True) is None
    assert routes.from_legacy(["HUMAN_AGENT", "tag:X"]) == ["tag:HUMAN_AGENT", "tag:X"]


# --- the closed-window memory never outlives what it can know ---------------------------------------
@pytest.mark.parametrize(
    ("until", "closed_at", "now", "expected"),
    [
        (None, None, 1000.0, None),  # nothing known: ask Graph
        ("2000", None, 1000.0, False),  # the window is open until 2000
        ("2000", "1500", 1000.0, False),  # an interaction after Graph said closed reopens it
        (None, "900", 1000.0, True),  # Graph said closed (remembered WINDOW_RECHECK_SECONDS)
        ("500", None, 1000.0, True),  # closed at 500: believed for recheck (3600) seconds
        ("500", None, 5000.0, None),  # ... then Graph is asked again
    ],
)
def test_window_closed(until: str | None, closed_at: str | None, now: float, expected: bool | None) -> None:
    assert window_closed(until, closed_at, now, 3600) is expected


@pytest.mark.parametrize(
    "body",
    [
        {"recipient": {"id": "1"}, "message": {"text": "hi"}, "notification_type": []},
        {"recipient": {"id": "1"}, "message": {"text": "hi", "quick_replies": [{"content_type": ["text"]}]}},
        {
            "recipient": {"id": "1"},
            "messaging_type": "UTILITY",
            "message": {"template": {"name": "a", "language": {"code": "en"}, "components": 5}},
        },
        {
            "recipient": {"id": "1"},
            "messaging_type": "UTILITY",
            "message": {
                "template": {
                    "name": "a",
                    "language": "en",
                    "components": [{"type": "body", "parameters": [{"parameter_name": ["x"], "text": "v"}]}],
                }
            },
        },
        {"recipient": {"id": "1"}, "sender_action": ["react"]},
        {"recipient": {"id": ["1"]}, "message": {"text": "hi"}},
        {"recipient": {"phone_number": {"n": 1}}, "message": {"text": "hi"}},
    ],
)
def test_values_of_the_wrong_json_type_are_a_422_never_a_crash(body: dict[str, Any]) -> None:
    assert refused(body).status == 422

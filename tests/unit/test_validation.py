"""Every rule of worker.messenger.validation.validate / resolve_page / parse_tags, one by one."""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.config import DeprecatedTagPolicy, PageTokens, Settings
from worker.messenger.utility import UtilityTemplate
from worker.messenger.validation import (
    BODY_FIELDS,
    CREDENTIAL_FIELDS,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    InputError,
    SendHeaders,
    SendRequest,
    parse_tags,
    resolve_page,
    validate,
)

PAGE = "100"
PAGE_TOKEN = "tok-page-100-abcdef"
OTHER_PAGE = "200"
OTHER_TOKEN = "tok-page-200-ghijkl"
INTAKE = "intake-token-xyz-0123456789abcdefghij"
UNKNOWN_TOKEN = "EAAB-unknown-passthrough-token-0123456789"


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"page_access_tokens": {PAGE: PAGE_TOKEN}, "intake_tokens": [INTAKE]}
    values.update(overrides)
    return Settings(**values, _env_file=None)


SETTINGS = make_settings()
TWO_PAGES = make_settings(page_access_tokens={PAGE: PAGE_TOKEN, OTHER_PAGE: OTHER_TOKEN})


def body(**fields: Any) -> dict[str, Any]:
    """A valid Braze-style body; keyword arguments replace fields, None removes them."""
    payload: dict[str, Any] = {
        "recipient": {"id": "psid-1"},
        "messaging_type": "RESPONSE",
        "message": {"text": "hello"},
    }
    for key, value in fields.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def raw(payload: object) -> bytes:
    return orjson.dumps(payload)


def check(payload: dict[str, Any], settings: Settings = SETTINGS, **kwargs: Any) -> SendRequest:
    return validate(raw(payload), settings, **kwargs)


def refused(data: bytes | dict[str, Any], settings: Settings = SETTINGS, **kwargs: Any) -> InputError:
    blob = data if isinstance(data, bytes) else raw(data)
    with pytest.raises(InputError) as caught:
        validate(blob, settings, **kwargs)
    return caught.value


def test_valid_body_is_normalised() -> None:
    req = check(body())
    assert req.page_id == PAGE
    assert req.psid == "psid-1"
    assert req.fallbacks == []
    assert req.stripped_tag is None
    assert req.body == {
        "recipient": {"id": "psid-1"},
        "messaging_type": "RESPONSE",
        "message": {"text": "hello"},
    }


# ------------------------------------------------------------------------------------------------
# Body shape


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b'{"recipient": }', b"\xff\xfe\x00", b'{"a": 1} trailing'],
    ids=["empty", "truncated", "text", "syntax", "not-utf8", "trailing"],
)
def test_invalid_json_is_400(data: bytes) -> None:
    err = refused(data)
    assert (err.status, err.code) == (400, "invalid_json")


@pytest.mark.parametrize("payload", [[], [body()], "text", 42, None, True], ids=repr)
def test_non_object_body_is_422(payload: object) -> None:
    err = refused(raw(payload))
    assert (err.status, err.code) == (422, "invalid_body")


def test_body_over_64_kib_is_413() -> None:
    payload = raw(body())
    padded = payload[:-1] + b" " * (MAX_BODY_BYTES + 1 - len(payload)) + b"}"
    assert len(padded) == MAX_BODY_BYTES + 1
    err = refused(padded)
    assert (err.status, err.code) == (413, "body_too_large")


def test_body_of_exactly_64_kib_is_accepted() -> None:
    payload = raw(body())
    padded = payload[:-1] + b" " * (MAX_BODY_BYTES - len(payload)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    assert validate(padded, SETTINGS).psid == "psid-1"


# ------------------------------------------------------------------------------------------------
# Recipient


@pytest.mark.parametrize(
    "recipient",
    [None, {}, {"id": ""}, {"id": "   "}, {"id": None}, {"id": True}, {"id": 1.5}, "psid-1", ["psid-1"]],
    ids=["missing", "no-id", "empty", "whitespace", "null", "bool", "float", "string", "list"],
)
def test_missing_or_empty_recipient(recipient: object) -> None:
    # Braze renders a missing custom attribute as "", so {"id": ""} is the common case.
    err = refused(body(recipient=recipient))
    assert (err.status, err.code) == (422, "missing_recipient")
    assert "recipient.id" in err.message


def test_integer_recipient_id_is_accepted_as_string() -> None:
    req = check(body(recipient={"id": 1234567890123456}))
    assert req.psid == "1234567890123456"
    assert req.body["recipient"] == {"id": "1234567890123456"}


def test_recipient_id_is_stripped_and_an_unknown_recipient_field_refused() -> None:
    req = check(body(recipient={"id": "  psid-2 "}))
    assert req.psid == "psid-2"
    assert req.body["recipient"] == {"id": "psid-2"}
    err = refused(body(recipient={"id": "psid-2", "extra": 1}))
    assert (err.code, "recipient.extra" in err.message) == ("invalid_recipient", True)


def test_recipient_id_over_128_chars_is_refused() -> None:
    assert check(body(recipient={"id": "9" * 128})).psid == "9" * 128
    err = refused(body(recipient={"id": "9" * 129}))
    assert (err.status, err.code) == (422, "invalid_recipient")


# ------------------------------------------------------------------------------------------------
# Message / sender_action


def test_neither_message_nor_sender_action() -> None:
    err = refused(body(message=None))
    assert (err.status, err.code) == (422, "invalid_message")


def test_both_message_and_sender_action() -> None:
    err = refused(body(sender_action="typing_on"))
    assert (err.status, err.code) == (422, "invalid_message")


@pytest.mark.parametrize("action", ["typing_on", "typing_off", "mark_seen"])
def test_valid_sender_actions(action: str) -> None:
    req = check(body(message=None, sender_action=action))
    assert req.body["sender_action"] == action
    assert req.kind == "text"


@pytest.mark.parametrize("action", ["typing", "TYPING_ON", "", 1, False])
def test_invalid_sender_action(action: object) -> None:
    err = refused(body(message=None, sender_action=action))
    assert (err.status, err.code) == (422, "invalid_sender_action")


@pytest.mark.parametrize("action", [["typing_on"], {"a": 1}], ids=["list", "object"])
def test_unhashable_sender_action_is_an_input_error(action: object) -> None:
    err = refused(body(message=None, sender_action=action))
    assert (err.status, err.code) == (422, "invalid_sender_action")


def test_text_of_exactly_2000_chars_is_too_long() -> None:
    # Graph: text must be "less than 2000 characters".
    err = refused(body(message={"text": "x" * 2000}))
    assert (err.status, err.code) == (422, "text_too_long")


def test_text_of_1999_chars_is_accepted() -> None:
    assert check(body(message={"text": "x" * 1999})).body["message"]["text"] == "x" * 1999


def test_text_length_counts_characters_not_bytes() -> None:
    assert check(body(message={"text": "é" * 1999})).psid == "psid-1"


@pytest.mark.parametrize(
    "message",
    [{}, "hello", ["hello"], {"text": ""}, {"text": "  "}, {"text": 5}, {"attachment": "url"}],
    ids=["empty", "string", "list", "empty-text", "blank-text", "int-text", "string-attachment"],
)
def test_invalid_message_shapes(message: object) -> None:
    err = refused(body(message=message))
    assert (err.status, err.code) == (422, "invalid_message")


def test_14_quick_replies_rejected_13_accepted() -> None:
    reply = {"content_type": "text", "title": "ok", "payload": "OK"}
    ok = check(body(message={"text": "pick", "quick_replies": [reply] * 13}))
    assert len(ok.body["message"]["quick_replies"]) == 13
    err = refused(body(message={"text": "pick", "quick_replies": [reply] * 14}))
    assert (err.status, err.code) == (422, "too_many_quick_replies")


def test_quick_replies_must_be_a_list() -> None:
    err = refused(body(message={"text": "pick", "quick_replies": {"a": 1}}))
    assert (err.status, err.code) == (422, "invalid_message")


# ------------------------------------------------------------------------------------------------
# messaging_type and tags


def test_missing_messaging_type_defaults_to_update() -> None:
    # Old Braze templates carry no messaging_type.
    req = check(body(messaging_type=None))
    assert req.body["messaging_type"] == "UPDATE"
    assert "tag" not in req.body


def test_missing_messaging_type_with_valid_tag_becomes_message_tag() -> None:
    req = check(body(messaging_type=None, tag="HUMAN_AGENT"))
    assert req.body["messaging_type"] == "MESSAGE_TAG"
    assert req.body["tag"] == "HUMAN_AGENT"
    assert req.stripped_tag is None


def test_messaging_type_and_tag_are_upper_cased() -> None:
    req = check(body(messaging_type="message_tag", tag=" human_agent "))
    assert req.body["messaging_type"] == "MESSAGE_TAG"
    assert req.body["tag"] == "HUMAN_AGENT"


@pytest.mark.parametrize("mtype", ["NEWS", "", 3, ["UPDATE"]], ids=repr)
def test_invalid_messaging_type(mtype: object) -> None:
    err = refused(body(messaging_type=mtype))
    assert (err.status, err.code) == (422, "invalid_messaging_type")


@pytest.mark.parametrize("mtype", ["utility", "Utility", "UTILITY"])
def test_a_utility_messaging_type_in_any_case_gets_the_utility_checks(mtype: str) -> None:
    err = refused(body(messaging_type=mtype))  # a text message is no utility template
    assert (err.status, err.code) == (422, "invalid_utility_template")
    template = {"name": "order_update", "language": {"code": "en_US"}}
    req = check(body(messaging_type=mtype, message={"template": template}))
    assert req.body["messaging_type"] == "UTILITY"
    assert req.utility == UtilityTemplate("order_update", "en_US")


def test_a_direct_utility_body_with_liquid_left_as_written_is_refused() -> None:
    """As X-Utility-Parameters: a parameter Braze did not render would reach the user as written."""
    parameters = [{"type": "text", "text": "{{${first_name}}}"}, {"type": "text", "text": "A-1"}]
    template = {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": parameters}],
    }
    err = refused(body(messaging_type="UTILITY", message={"template": template}))
    assert (err.status, err.code) == (422, "invalid_utility_parameters")
    assert "message.template" in err.message
    parameters[0]["text"] = "Ada"
    assert check(body(messaging_type="UTILITY", message={"template": template})).utility is not None


@pytest.mark.parametrize("mtype", ["ut\u0131l\u0131ty", "UT\u0131L\u0131TY", "re\u017fponse"])
def test_a_non_ascii_look_alike_messaging_type_is_refused(mtype: str) -> None:
    assert mtype.upper() in {"UTILITY", "RESPONSE"}  # the trap: dotless i and long s upper-case to ASCII
    err = refused(body(messaging_type=mtype))
    assert (err.status, err.code) == (422, "invalid_messaging_type")


def test_message_tag_without_tag() -> None:
    err = refused(body(messaging_type="MESSAGE_TAG"))
    assert (err.status, err.code) == (422, "missing_tag")


@pytest.mark.parametrize("mtype", ["RESPONSE", "UPDATE"])
def test_tag_with_non_tag_messaging_type(mtype: str) -> None:
    err = refused(body(messaging_type=mtype, tag="HUMAN_AGENT"))
    assert (err.status, err.code) == (422, "invalid_tag")


@pytest.mark.parametrize("tag", ["NOT_A_TAG", "", "   ", 7, "cu\u017ftomer_feedback"], ids=repr)
def test_unknown_or_malformed_tag(tag: object) -> None:
    err = refused(body(messaging_type="MESSAGE_TAG", tag=tag))
    assert (err.status, err.code) == (422, "invalid_tag")


@pytest.mark.parametrize("tag", ["ACCOUNT_UPDATE", "post_purchase_update", "SHIPPING_UPDATE"])
def test_deprecated_tag_is_stripped_by_default(tag: str) -> None:
    assert SETTINGS.deprecated_tag_policy == DeprecatedTagPolicy.STRIP
    req = check(body(messaging_type="MESSAGE_TAG", tag=tag))
    assert "tag" not in req.body
    assert req.body["messaging_type"] == "UPDATE"
    assert req.stripped_tag == tag.upper()


def test_deprecated_tag_is_rejected_with_policy_reject() -> None:
    settings = make_settings(deprecated_tag_policy="reject")
    err = refused(body(messaging_type="MESSAGE_TAG", tag="CONFIRMED_EVENT_UPDATE"), settings)
    assert (err.status, err.code) == (422, "deprecated_tag")
    assert "CONFIRMED_EVENT_UPDATE" in err.message
    assert "2026-04-27" in err.message


# ------------------------------------------------------------------------------------------------
# Fallback tags


def test_fallback_header_keeps_order_and_dedupes() -> None:
    header = " customer_feedback, HUMAN_AGENT ,,CUSTOMER_FEEDBACK"
    assert parse_tags(header) == ["CUSTOMER_FEEDBACK", "HUMAN_AGENT"]
    req = check(body(), headers=SendHeaders(fallback_tags=header))
    assert req.fallbacks == ["tag:CUSTOMER_FEEDBACK", "tag:HUMAN_AGENT"]


def test_a_fallback_tag_look_alike_is_refused() -> None:
    """U+017F (long s) upper-cases to 'S': not a tag Meta knows, whatever it becomes."""
    err = refused(body(), headers=SendHeaders(fallback_tags="cu\u017ftomer_feedback"))
    assert (err.status, err.code) == (422, "invalid_tag")


def test_fallback_header_unknown_tag() -> None:
    err = refused(body(), headers=SendHeaders(fallback_tags="HUMAN_AGENT, BOGUS_TAG"))
    assert (err.status, err.code) == (422, "invalid_tag")
    assert "BOGUS_TAG" in err.message


def test_a_removed_fallback_tag_is_skipped_under_strip_and_refused_under_reject() -> None:
    req = check(body(), headers=SendHeaders(fallback_tags="ACCOUNT_UPDATE,HUMAN_AGENT"))  # strip: the default
    assert (req.fallbacks, req.skipped_tags) == (["tag:HUMAN_AGENT"], ("ACCOUNT_UPDATE",))
    reject = make_settings(deprecated_tag_policy=DeprecatedTagPolicy.REJECT)
    err = refused(body(), reject, headers=SendHeaders(fallback_tags="ACCOUNT_UPDATE,HUMAN_AGENT"))
    assert (err.status, err.code) == (422, "deprecated_tag")
    assert "ACCOUNT_UPDATE" in err.message
    assert "2026-04-27" in err.message


def test_a_removed_tag_in_fallback_tags_is_skipped_under_strip() -> None:
    settings = make_settings(fallback_tags=["ACCOUNT_UPDATE", "HUMAN_AGENT"])
    req = check(body(), settings)
    assert (req.fallbacks, req.skipped_tags) == (["tag:HUMAN_AGENT"], ("ACCOUNT_UPDATE",))
    with pytest.raises(ValueError, match="ACCOUNT_UPDATE"):
        make_settings(fallback_tags=["ACCOUNT_UPDATE"], deprecated_tag_policy=DeprecatedTagPolicy.REJECT)


@pytest.mark.parametrize("header", [None, "", " , "], ids=["absent", "empty", "only-commas"])
def test_settings_fallback_tags_used_without_header(header: str | None) -> None:
    settings = make_settings(fallback_tags=["HUMAN_AGENT"])
    assert check(body(), settings, headers=SendHeaders(fallback_tags=header)).fallbacks == ["tag:HUMAN_AGENT"]
    assert check(body(), headers=SendHeaders(fallback_tags=header)).fallbacks == []


def test_fallback_header_overrides_settings() -> None:
    settings = make_settings(fallback_tags=["HUMAN_AGENT"])
    req = check(body(), settings, headers=SendHeaders(fallback_tags="CUSTOMER_FEEDBACK"))
    assert req.fallbacks == ["tag:CUSTOMER_FEEDBACK"]


# ------------------------------------------------------------------------------------------------
# Page resolution


def test_path_page_with_configured_token() -> None:
    assert (
        resolve_page(TWO_PAGES, path_page_id=OTHER_PAGE, query_token=None, query_page_id=None) == OTHER_PAGE
    )
    assert check(body(), TWO_PAGES, path_page_id=OTHER_PAGE).page_id == OTHER_PAGE


def test_path_page_without_token() -> None:
    with pytest.raises(InputError) as caught:
        resolve_page(SETTINGS, path_page_id="999", query_token=None, query_page_id=None)
    assert (caught.value.status, caught.value.code) == (422, "no_page_token")
    assert "999" in caught.value.message
    err = refused(body(), path_page_id="999")
    assert (err.status, err.code) == (422, "no_page_token")


@pytest.mark.parametrize("path", [None, "me", OTHER_PAGE])
def test_the_url_token_selects_its_configured_page(path: str | None) -> None:
    got = resolve_page(TWO_PAGES, path_page_id=path, query_token=OTHER_TOKEN, query_page_id=None)
    assert got == OTHER_PAGE


@pytest.mark.parametrize("path", [None, "me", "999", PAGE])
def test_an_access_token_we_do_not_hold_is_refused(path: str | None) -> None:
    """Only configured tokens are ever used; an unknown one is refused, never stored or sent."""
    with pytest.raises(InputError) as caught:
        resolve_page(TWO_PAGES, path_page_id=path, query_token=UNKNOWN_TOKEN, query_page_id=None)
    assert (caught.value.status, caught.value.code) == (403, "unknown_page_token")
    assert "PAGE_ACCESS_TOKENS" in caught.value.message
    assert UNKNOWN_TOKEN not in caught.value.message
    err = refused(body(), TWO_PAGES, path_page_id=path, query_token=UNKNOWN_TOKEN)
    assert (err.status, err.code) == (403, "unknown_page_token")


def test_the_url_token_and_the_named_page_must_agree() -> None:
    with pytest.raises(InputError) as caught:
        resolve_page(TWO_PAGES, path_page_id=PAGE, query_token=OTHER_TOKEN, query_page_id=None)
    assert (caught.value.status, caught.value.code) == (403, "page_token_mismatch")
    with pytest.raises(InputError):
        resolve_page(TWO_PAGES, path_page_id="me", query_token=OTHER_TOKEN, query_page_id=PAGE)


def test_a_reloaded_token_file_is_what_selects(tmp_path: Path) -> None:
    """The intake resolves with the same reloading view of PAGE_ACCESS_TOKENS as the workers."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(orjson.dumps({PAGE: PAGE_TOKEN}).decode(), encoding="utf-8")
    settings = make_settings(page_access_tokens=str(tokens))
    pages = PageTokens(settings, source=str(tokens), check_every=0)
    assert (
        resolve_page(settings, path_page_id="me", query_token=PAGE_TOKEN, query_page_id=None, pages=pages)
        == PAGE
    )
    tokens.write_text(orjson.dumps({PAGE: "rotated-token-100-abcdefghij"}).decode(), encoding="utf-8")
    os.utime(tokens, (time.time() + 5, time.time() + 5))
    with pytest.raises(InputError) as caught:  # the old token is no longer the page's
        resolve_page(settings, path_page_id="me", query_token=PAGE_TOKEN, query_page_id=None, pages=pages)
    assert caught.value.code == "unknown_page_token"
    got = resolve_page(
        settings,
        path_page_id="me",
        query_token="rotated-token-100-abcdefghij",
        query_page_id=None,
        pages=pages,
    )
    assert got == PAGE


def test_passthrough_disabled_ignores_query_token() -> None:
    single = make_settings(allow_token_passthrough=False)
    assert resolve_page(single, path_page_id="me", query_token=UNKNOWN_TOKEN, query_page_id=None) == PAGE
    with pytest.raises(InputError) as caught:
        resolve_page(single, path_page_id="999", query_token=UNKNOWN_TOKEN, query_page_id=None)
    assert caught.value.code == "no_page_token"
    several = make_settings(
        allow_token_passthrough=False, page_access_tokens={PAGE: PAGE_TOKEN, OTHER_PAGE: OTHER_TOKEN}
    )
    with pytest.raises(InputError) as caught:
        resolve_page(several, path_page_id="me", query_token=UNKNOWN_TOKEN, query_page_id=None)
    assert caught.value.code == "no_page_token"
    # Even a token we hold is not used to pick the page when passthrough is off.
    with pytest.raises(InputError):
        resolve_page(several, path_page_id="me", query_token=OTHER_TOKEN, query_page_id=None)


@pytest.mark.parametrize("path", [None, "me"])
def test_single_configured_page_is_used_for_me(path: str | None) -> None:
    assert resolve_page(SETTINGS, path_page_id=path, query_token=None, query_page_id=None) == PAGE
    assert check(body(), path_page_id=path).page_id == PAGE


def test_several_pages_and_no_hint() -> None:
    err = refused(body(), TWO_PAGES, path_page_id="me")
    assert (err.status, err.code) == (422, "no_page_token")


def test_no_pages_configured_and_no_hint() -> None:
    err = refused(body(), make_settings(page_access_tokens={}))
    assert (err.status, err.code) == (422, "no_page_token")


def test_query_page_id() -> None:
    assert check(body(), TWO_PAGES, path_page_id="me", query_page_id=OTHER_PAGE).page_id == OTHER_PAGE
    err = refused(body(), TWO_PAGES, path_page_id="me", query_page_id="999")
    assert err.code == "no_page_token"
    # The path's page id wins over ?page_id=.
    assert check(body(), TWO_PAGES, path_page_id=PAGE, query_page_id=OTHER_PAGE).page_id == PAGE


@pytest.mark.parametrize("name", sorted(CREDENTIAL_FIELDS))
def test_a_credential_in_the_body_is_refused_never_forwarded(name: str) -> None:
    err = refused(body(**{name: PAGE_TOKEN}))
    assert (err.status, err.code) == (422, "token_in_body")
    assert name in err.message
    assert PAGE_TOKEN not in err.message


@pytest.mark.parametrize("name", ["metadata", "thread_control", "messaging_product", "Recipient"])
def test_a_field_outside_the_send_api_table_is_refused_by_name(name: str) -> None:
    err = refused(body(**{name: "x"}))
    assert (err.status, err.code) == (422, "unknown_field")
    assert repr(name) in err.message


def test_an_unknown_field_name_is_shortened_in_the_answer() -> None:
    err = refused(body(**{"k" * 5000: 1}))
    assert err.code == "unknown_field"
    assert len(err.message) < 300


def test_every_field_of_the_table_passes_and_nothing_else_reaches_the_stored_body() -> None:
    req = check(body(notification_type="SILENT_PUSH", persona_id="123", reply_to={"mid": "m_1"}))
    assert set(req.body) <= set(BODY_FIELDS)
    assert orjson.loads(req.body_json) == req.body
    assert check(body(persona_id=123)).body["persona_id"] == 123


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("persona_id", True),
        ("persona_id", 1.5),
        ("reply_to", "m_1"),
        ("reply_to", None),
    ],
)
def test_typed_fields_of_the_table_must_have_their_type(name: str, value: object) -> None:
    err = refused(body(**{name: value}) if value is not None else {**body(), name: None})
    assert (err.status, err.code) == (422, "invalid_field")
    assert name in err.message


def _nested(levels: int) -> bytes:
    """A valid body nesting ``levels`` objects in all, in ``message.attachment.payload`` (built as
    text: orjson cannot serialise it beyond MAX_DEPTH)."""
    inner = levels - 3  # body > message > attachment, then the payload's objects
    return (
        b'{"recipient":{"id":"p"},"message":{"attachment":{"type":"template","payload":'
        + b'{"a":' * inner
        + b"1"
        + b"}" * inner
        + b"}}}"
    )


def test_nesting_up_to_what_the_encoder_serialises_is_accepted() -> None:
    req = validate(_nested(MAX_DEPTH), SETTINGS)
    assert orjson.loads(req.body_json) == req.body
    assert req.body_json == orjson.dumps(req.body)  # what the worker re-encodes before sending


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 300, 1024, 1025, 5000])
def test_a_body_nested_deeper_than_the_encoder_serialises_is_refused(levels: int) -> None:
    """orjson parses up to 1024 levels and serialises up to MAX_DEPTH (254): between the two a
    body parsed and then broke the group commit; beyond, it was answered 400 invalid_json
    though it is valid JSON."""
    err = refused(_nested(levels))
    assert (err.status, err.code) == (422, "too_deep")
    assert str(MAX_DEPTH) in err.message


def test_the_committed_bytes_are_encoded_once_by_validation() -> None:
    req = check(body())
    assert req.body_json == orjson.dumps(req.body)


# ------------------------------------------------------------------------------------------------
# kind


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"attachment": {"type": "audio", "payload": {"url": "https://x/a.mp3"}}}, "media"),
        ({"attachment": {"type": "video", "payload": {"url": "https://x/v.mp4"}}}, "media"),
        ({"attachment": {"type": "image", "payload": {"url": "https://x/i.png"}}}, "text"),
        ({"attachment": {"type": "file", "payload": {"url": "https://x/f.pdf"}}}, "text"),
        ({"attachment": {"type": "template", "payload": {}}}, "text"),
        ({"text": "hello"}, "text"),
    ],
    ids=["audio", "video", "image", "file", "template", "text"],
)
def test_kind(message: dict[str, Any], kind: str) -> None:
    assert check(body(message=message)).kind == kind


def test_an_attachment_of_no_known_type_is_refused() -> None:
    err = refused(body(message={"attachment": {"type": ["audio"], "payload": {}}}))
    assert (err.status, err.code) == (422, "invalid_attachment")


# ------------------------------------------------------------------------------------------------
# Fuzz: only InputError, never anything else


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**63), 2**63 - 1)
    if kind == 3:
        return rng.uniform(-1e9, 1e9)
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0xD7FF)) for _ in range(rng.randrange(0, 16)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["recipient", "id", "message", "text", "attachment", "type", "quick_replies", "tag", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _only_input_errors(blobs: list[bytes]) -> list[tuple[bytes, BaseException]]:
    others: list[tuple[bytes, BaseException]] = []
    for blob in blobs:
        try:
            validate(blob, TWO_PAGES, path_page_id="me", query_token=UNKNOWN_TOKEN)
        except InputError:
            continue
        except Exception as exc:  # noqa: BLE001  # the point of the test: collect anything else
            others.append((blob, exc))
    return others


def test_fuzz_random_bytes_and_json_values_raise_only_input_error() -> None:
    rng = random.Random(1234)
    blobs = [rng.randbytes(rng.randrange(0, 200)) for _ in range(500)]
    blobs += [orjson.dumps(_random_json(rng)) for _ in range(500)]
    assert _only_input_errors(blobs) == []


_FIELDS: list[tuple[str, ...]] = [
    ("recipient",),
    ("recipient", "id"),
    ("message",),
    ("message", "text"),
    ("message", "attachment"),
    ("message", "quick_replies"),
    ("messaging_type",),
    ("tag",),
    ("access_token",),
]


def _mutants(rng: random.Random, fields: list[tuple[str, ...]], count: int) -> list[bytes]:
    template = body(
        messaging_type="MESSAGE_TAG",
        tag="HUMAN_AGENT",
        message={"text": "hi", "quick_replies": [{"content_type": "text"}], "attachment": {}},
    )
    out: list[bytes] = []
    for _ in range(count):
        mutant = copy.deepcopy(template)
        if rng.random() < 0.5:
            del mutant["message"]
            mutant["sender_action"] = "typing_on"
        for _ in range(rng.randrange(1, 3)):
            path = rng.choice(fields)
            node: Any = mutant
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node[path[-1]] = _random_json(rng)
        out.append(orjson.dumps(mutant))
    return out


def test_fuzz_mutated_valid_bodies_raise_only_input_error() -> None:
    assert _only_input_errors(_mutants(random.Random(1234), _FIELDS, 500)) == []


def test_fuzz_mutated_sender_action_raises_only_input_error() -> None:
    assert _only_input_errors(_mutants(random.Random(1234), [("sender_action",)], 500)) == []

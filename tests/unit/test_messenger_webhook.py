"""worker.messenger.webhook: signatures, the subscription handshake, event parsing (refs and mids).

The refs themselves (signing, verification) are tested in tests/unit/test_refs.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from typing import Any

import pytest

from worker.messenger.refs import check_ref
from worker.messenger.webhook import (
    InboundEvent,
    event_to_dict,
    parse_events,
    signature_well_formed,
    verify_handshake,
    verify_signature,
)

SECRET = "app-secret-0123456789abcdef"
PAGE = "1234567890"
PSID = "6543210987"
BODY = b'{"object":"page","entry":[{"id":"1234567890","time":1700000000000,"messaging":[]}]}'


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------------
# Signature


def test_valid_signature() -> None:
    assert verify_signature(SECRET, BODY, sign(BODY))


def test_signature_hex_case_and_whitespace_are_tolerated() -> None:
    header = sign(BODY)
    assert verify_signature(SECRET, BODY, "SHA256=" + header[7:].upper())
    assert verify_signature(SECRET, BODY, f"  {header} ")


def test_invalid_signature() -> None:
    assert not verify_signature(SECRET, BODY, "sha256=" + "0" * 64)


def test_missing_signature() -> None:
    assert not verify_signature(SECRET, BODY, None)
    assert not verify_signature(SECRET, BODY, "")


@pytest.mark.parametrize(
    "header",
    [
        "sha256",
        "sha256=",
        "sha1=" + "a" * 40,
        "sha256=" + "z" * 64,
        "sha256=" + "a" * 63,
        "sha256=" + "a" * 65,
        "a" * 64,
        "sha256=" + "é" * 64,
    ],
)
def test_malformed_signature(header: str) -> None:
    assert not verify_signature(SECRET, BODY, header)
    assert not signature_well_formed(header)


def test_a_well_formed_signature_needs_no_body() -> None:
    assert signature_well_formed(sign(BODY))
    assert signature_well_formed("SHA256=" + "A" * 64)
    assert not signature_well_formed(None)
    assert not signature_well_formed("")


def test_wrong_secret() -> None:
    assert not verify_signature(SECRET, BODY, sign(BODY, "another-secret-0123456789"))


def test_body_changed_by_one_byte() -> None:
    header = sign(BODY)
    changed = bytearray(BODY)
    changed[-3] ^= 0x01
    assert not verify_signature(SECRET, bytes(changed), header)
    assert not verify_signature(SECRET, BODY + b" ", header)


def test_empty_secret_never_verifies() -> None:
    assert not verify_signature("", BODY, sign(BODY, ""))


def test_empty_body_can_be_signed() -> None:
    assert verify_signature(SECRET, b"", sign(b""))


# ------------------------------------------------------------------------------------------------
# Handshake

TOKEN = "verify-token-0123456789"


def handshake(**overrides: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "hub.mode": "subscribe",
        "hub.verify_token": TOKEN,
        "hub.challenge": "1158201444",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_handshake_ok() -> None:
    assert verify_handshake(handshake(), TOKEN) == "1158201444"


def test_handshake_wrong_token() -> None:
    assert verify_handshake(handshake(**{"hub.verify_token": "nope"}), TOKEN) is None
    assert verify_handshake(handshake(**{"hub.verify_token": "vérify"}), TOKEN) is None
    assert verify_handshake(handshake(**{"hub.verify_token": None}), TOKEN) is None


def test_handshake_wrong_mode() -> None:
    assert verify_handshake(handshake(**{"hub.mode": "unsubscribe"}), TOKEN) is None
    assert verify_handshake(handshake(**{"hub.mode": None}), TOKEN) is None


def test_handshake_missing_challenge() -> None:
    assert verify_handshake(handshake(**{"hub.challenge": None}), TOKEN) is None
    assert verify_handshake(handshake(**{"hub.challenge": ""}), TOKEN) is None


def test_handshake_empty_configured_token_refuses_everything() -> None:
    assert verify_handshake(handshake(**{"hub.verify_token": ""}), "") is None


# ------------------------------------------------------------------------------------------------
# Events

TS = 1_700_000_000_123


def item(kind: str, value: Any, *, psid: str = PSID, timestamp: Any = TS) -> dict[str, Any]:
    return {"sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": timestamp, kind: value}


def payload(*items: dict[str, Any], page: str = PAGE) -> dict[str, Any]:
    return {"object": "page", "entry": [{"id": page, "time": TS + 5, "messaging": list(items)}]}


def one(event_item: dict[str, Any]) -> InboundEvent:
    events = parse_events(payload(event_item))
    assert len(events) == 1, events
    return events[0]


def test_message_opens_the_window() -> None:
    event = one(item("message", {"mid": "m_1", "text": "hi"}))
    assert event == InboundEvent(PAGE, PSID, TS / 1000, "message", None, True, "m_1")


def test_mids_of_messages_and_postbacks_only() -> None:
    """Meta's message id is the same on every retry of an event: the worker ignores repeats."""
    assert one(item("message", {"mid": "m_1", "text": "hi"})).mid == "m_1"
    assert one(item("postback", {"mid": "m_pb", "payload": "P"})).mid == "m_pb"
    # a reaction's mid names the message reacted to, not the event: not an event id
    assert one(item("reaction", {"mid": "m_4", "action": "react"})).mid is None
    assert one(item("referral", {"ref": "x", "source": "SHORTLINK"})).mid is None
    assert one(item("message", {"text": "no mid"})).mid is None
    assert one(item("message", {"mid": 5, "text": "not a string"})).mid is None
    assert one(item("message", {"mid": "m" * 513, "text": "too long for a key"})).mid is None
    assert event_to_dict(one(item("postback", {"mid": "m_pb", "payload": "P"})))["mid"] == "m_pb"


def test_message_with_quick_reply_is_a_message() -> None:
    event = one(item("message", {"mid": "m_2", "text": "Yes", "quick_reply": {"payload": "YES"}}))
    assert event.kind == "message"
    assert event.opens_window


def test_echo_is_skipped() -> None:
    echo = item("message", {"mid": "m_3", "text": "from the page", "is_echo": True, "app_id": 1})
    echo["sender"], echo["recipient"] = {"id": PAGE}, {"id": PSID}
    assert parse_events(payload(echo)) == []


def test_postback_with_referral_ref() -> None:
    event = one(
        item(
            "postback",
            {
                "title": "Get Started",
                "payload": "GET_STARTED",
                "referral": {"ref": "braze_user-42", "source": "SHORTLINK", "type": "OPEN_THREAD"},
            },
        )
    )
    assert (event.kind, event.ref, event.opens_window) == ("postback", "braze_user-42", True)


def test_postback_without_referral() -> None:
    event = one(item("postback", {"title": "Menu", "payload": "MENU"}))
    assert (event.kind, event.ref, event.opens_window) == ("postback", None, True)


def test_referral() -> None:
    event = one(item("referral", {"ref": "braze_u1", "source": "SHORTLINK", "type": "OPEN_THREAD"}))
    assert (event.kind, event.ref, event.opens_window) == ("referral", "braze_u1", True)


def test_referral_without_ref() -> None:
    event = one(item("referral", {"source": "ADS", "type": "OPEN_THREAD", "ad_id": "1"}))
    assert (event.kind, event.ref) == ("referral", None)


def test_optin_from_send_to_messenger() -> None:
    event = one(item("optin", {"ref": "braze_u7"}))
    assert (event.kind, event.ref, event.opens_window) == ("optin", "braze_u7", True)


def test_marketing_messages_optin_does_not_open_the_window() -> None:
    optin = {"type": "notification_messages", "payload": "x", "notification_messages_token": "tok"}
    event = one(item("optin", optin))
    assert (event.kind, event.opens_window) == ("optin", False)


def test_checkbox_optin_without_sender_is_skipped() -> None:
    checkbox = {"recipient": {"id": PAGE}, "timestamp": TS, "optin": {"ref": "braze_u8", "user_ref": "ur-1"}}
    assert parse_events(payload(checkbox)) == []


def test_reaction_opens_the_window() -> None:
    event = one(item("reaction", {"reaction": "love", "emoji": "\u2764", "action": "react", "mid": "m_4"}))
    assert (event.kind, event.opens_window) == ("reaction", True)


@pytest.mark.parametrize(
    ("kind", "value"),
    [("read", {"watermark": TS}), ("delivery", {"mids": ["m_1"], "watermark": TS})],
)
def test_receipts_do_not_open_the_window(kind: str, value: dict[str, Any]) -> None:
    event = one(item(kind, value))
    assert (event.kind, event.opens_window, event.ref) == (kind, False, None)


def test_unknown_event_kind_is_other() -> None:
    event = one(item("account_linking", {"status": "linked"}))
    assert (event.kind, event.opens_window) == ("other", False)


def test_all_entries_and_all_messaging_items_are_read() -> None:
    body = {
        "object": "page",
        "entry": [
            {"id": "p1", "time": TS, "messaging": [item("message", {"text": "a"}, psid="u1")]},
            {
                "id": "p2",
                "time": TS,
                "messaging": [
                    item("read", {"watermark": TS}, psid="u2"),
                    item("postback", {"payload": "P"}, psid="u3"),
                    item("message", {"text": "b"}, psid="u4"),
                ],
            },
        ],
    }
    events = parse_events(body)
    assert [(e.page_id, e.psid, e.kind) for e in events] == [
        ("p1", "u1", "message"),
        ("p2", "u2", "read"),
        ("p2", "u3", "postback"),
        ("p2", "u4", "message"),
    ]


def test_page_id_falls_back_to_recipient() -> None:
    body = {"object": "page", "entry": [{"time": TS, "messaging": [item("message", {"text": "a"})]}]}
    assert parse_events(body)[0].page_id == PAGE


def test_timestamp_in_seconds_and_entry_time_fallback() -> None:
    assert one(item("message", {"text": "a"})).timestamp == pytest.approx(1_700_000_000.123)
    assert one(item("message", {"text": "a"}, timestamp=None)).timestamp == pytest.approx((TS + 5) / 1000)


def test_not_a_page_object() -> None:
    body = payload(item("message", {"text": "a"}))
    body["object"] = "instagram"
    assert parse_events(body) == []
    assert parse_events({"entry": body["entry"]}) == []


@pytest.mark.parametrize(
    "bad",
    [
        "not an item",
        None,
        {"message": {"text": "no sender"}, "timestamp": TS},
        {"sender": {"id": ""}, "timestamp": TS, "message": {"text": "empty psid"}},
        {"sender": {"id": True}, "timestamp": TS, "message": {"text": "bool psid"}},
        {"sender": "u1", "timestamp": TS, "message": {"text": "sender not an object"}},
        {"sender": {"id": "u1"}, "timestamp": "yesterday", "message": {"text": "bad time"}},
        {"sender": {"id": "u1"}, "timestamp": 10**400, "message": {"text": "huge time"}},
        {"sender": {"id": "u1"}, "timestamp": -5, "message": {"text": "negative time"}},
    ],
)
def test_malformed_items_are_skipped(bad: Any) -> None:
    good = item("message", {"text": "ok"})
    body = {"object": "page", "entry": [{"id": PAGE, "messaging": [bad, good]}]}
    events = parse_events(body)
    assert [e.psid for e in events] == [PSID]


@pytest.mark.parametrize(
    "body",
    [
        None,
        1,
        "page",
        [],
        {},
        {"object": "page"},
        {"object": "page", "entry": "x"},
        {"object": "page", "entry": [1]},
    ],
)
def test_malformed_payloads(body: object) -> None:
    assert parse_events(body) == []


def test_malformed_sub_objects_do_not_raise() -> None:
    weird = [
        item("message", "text"),  # message not an object: kind "other"
        item("postback", {"referral": "x"}),
        item("postback", {"referral": {"ref": 5}}),
        item("optin", {"ref": ["braze_x"], "type": 3}),
        item("referral", {"ref": None}),
    ]
    events = parse_events(payload(*weird))
    assert [(e.kind, e.ref) for e in events] == [
        ("other", None),
        ("postback", None),
        ("postback", None),
        ("optin", None),
        ("referral", None),
    ]


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    keys = ["object", "entry", "id", "time", "messaging", "sender", "recipient", "timestamp", "message"]
    keys += ["is_echo", "postback", "referral", "ref", "optin", "type", "read", "delivery", "reaction", "x"]
    choice = rng.randrange(9 if depth < 5 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1700000000000, 2**70, -(2**70), rng.randrange(-(10**6), 10**6)])
    if choice == 3:
        return rng.choice([0.5, -0.0, 1e308, -1e308, rng.uniform(-1e6, 1e6)])
    if choice == 4:
        return rng.choice(["", "page", "braze_x", "\u0000", "é" * 3, str(rng.random())])
    if choice == 5:
        return rng.choice(keys)
    if choice == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    obj = {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}
    if choice == 7 and depth == 0:
        obj["object"] = "page"
    return obj


def _mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with some nodes replaced by random JSON (reaches the deep branches)."""
    if rng.random() < 0.15:
        return _random_json(rng, depth)
    if isinstance(value, dict):
        return {k: _mutate(rng, v, depth + 1) for k, v in value.items() if rng.random() > 0.1}
    if isinstance(value, list):
        return [_mutate(rng, v, depth + 1) for v in value]
    return value


def test_fuzz_never_raises() -> None:
    rng = random.Random(7)
    template = payload(
        item("message", {"text": "a", "is_echo": False}),
        item("postback", {"payload": "P", "referral": {"ref": "braze_u1"}}),
        item("referral", {"ref": "braze_u2"}),
        item("optin", {"ref": "braze_u3", "type": "notification_messages"}),
        item("reaction", {"action": "react"}),
        item("read", {"watermark": TS}),
    )
    produced = 0
    for case in range(500):
        value = _random_json(rng) if case % 2 else _mutate(rng, template)
        value = json.loads(json.dumps(value))  # a value a JSON decoder can really produce
        events = parse_events(value)
        produced += len(events)
        for event in events:
            assert isinstance(event.psid, str)
            assert event.psid
            assert isinstance(event.page_id, str)
            assert event.page_id
            assert event.timestamp >= 0
            assert event.ref is None or isinstance(event.ref, str)
            assert event.mid is None or isinstance(event.mid, str)
            check_ref(event.ref, event.page_id, SECRET, 0.0)
    assert produced > 100  # the mutations kept many items valid: the deep paths ran

"""Reading a send request as Graph does: the body, the token, and Graph's validation order.

Owns body parsing (JSON, or a form whose ``recipient``/``message`` fields are JSON, single-quoted
pseudo-JSON accepted), where the token is read from (``access_token`` in the query or the body,
else ``Authorization: Bearer``/``OAuth``) and whether an ``appsecret_proof`` was sent, and the
validation checks, all code 100, in Graph's order (recipient, messaging_type, tag, message or
sender_action, text length, quick replies), including the :data:`VALID_TAGS` and the
:data:`DEPRECATED_TAGS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qsl

import orjson
from starlette.types import Scope

from worker.sandbox.errors import Refusal, graph_error, refuse

VALID_TAGS: Final = frozenset({"HUMAN_AGENT", "CUSTOMER_FEEDBACK", "NON_PROMOTIONAL_SUBSCRIPTION"})
DEPRECATED_TAGS: Final = frozenset({"CONFIRMED_EVENT_UPDATE", "ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE"})
#: UTILITY sends are checked by worker/sandbox/templates.py (send.py routes them there).
_MESSAGING_TYPES: Final = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"})
_SENDER_ACTIONS: Final = frozenset({"typing_on", "typing_off", "mark_seen", "react", "unreact"})
_RECIPIENT_KEYS: Final = (
    "id",
    "phone_number",
    "user_ref",
    "notification_messages_token",
    "one_time_notif_token",
    "post_id",
    "comment_id",
)
_MAX_TEXT: Final = 2000
_NOTIFICATION_TYPES: Final = frozenset({"REGULAR", "SILENT_PUSH", "NO_PUSH"})
_MAX_QUICK_REPLIES: Final = 13

_DEPRECATED_TAG_USER_MSG: Final = (
    "The message tags CONFIRMED_EVENT_UPDATE, ACCOUNT_UPDATE and POST_PURCHASE_UPDATE are deprecated "
    "and return an error since 2026-04-27. Use HUMAN_AGENT or utility messages instead."
)


class BadJSON(ValueError):
    """The body (or a form's ``recipient``/``message`` field) is not JSON: Graph's "Invalid JSON"."""


def _loads(text: str | bytes) -> object:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if isinstance(text, str) and "'" in text:  # Meta's curl samples: recipient={'id':'<PSID>'}
        try:
            return orjson.loads(text.replace("'", '"'))
        except orjson.JSONDecodeError:
            pass
    raise BadJSON


def is_form_encoded(raw: bytes, content_type: bytes) -> bool:
    """Form-encoded if declared so, or if undeclared and not looking like JSON."""
    return b"form-urlencoded" in content_type or (
        b"json" not in content_type and raw[:1] not in (b"{", b"[", b" ", b"\n", b"\r", b"\t")
    )


def parse_body(raw: bytes, is_form: bool) -> dict[str, object]:
    """The request body as a dict; form fields ``recipient``/``message`` are JSON-decoded."""
    if not is_form:
        if not raw.strip():
            return {}
        parsed = _loads(raw)
        if not isinstance(parsed, dict):
            raise BadJSON
        return parsed
    fields: dict[str, object] = {}
    for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
        fields[key] = _loads(value) if key in ("recipient", "message") and value else value
    return fields


def token_and_proof(scope: Scope, body: Mapping[str, object], auth: bytes | None) -> tuple[str | None, bool]:
    """The token (query, then body, then ``Authorization``) and whether ``appsecret_proof`` was sent."""
    token: str | None = None
    proof = False
    query: bytes = scope.get("query_string", b"")
    if query:
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key == "access_token" and value:
                token = value
            elif key == "appsecret_proof":
                proof = True
    if token is None:
        in_body = body.get("access_token")
        if isinstance(in_body, str) and in_body:
            token = in_body
    if token is None and auth:
        scheme, _, credentials = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() in ("bearer", "oauth") and credentials.strip():
            token = credentials.strip()
    return token, proof or "appsecret_proof" in body


def request_fields(body: Mapping[str, object]) -> tuple[str | None, str | None, str | None]:
    """(recipient, messaging_type, tag) as sent, for the record and the checks. The recipient is
    ``recipient.id`` (a PSID), else the value of its other key (a phone number, a user_ref, a
    token, a comment or post id): the fault rules below read it the same way."""
    recipient = body.get("recipient")
    psid_value: object = None
    if isinstance(recipient, dict):
        psid_value = recipient.get("id")
        if psid_value is None:
            psid_value = next((recipient[key] for key in _RECIPIENT_KEYS if recipient.get(key)), None)
    psid = str(psid_value) if isinstance(psid_value, str | int) and psid_value != "" else None
    mtype = body.get("messaging_type")
    tag = body.get("tag")
    return (
        psid,
        mtype if isinstance(mtype, str) and mtype else None,
        tag if isinstance(tag, str) and tag else None,
    )


def validate(body: Mapping[str, object], mtype: str | None, tag: str | None) -> None:
    """Graph's validation order; raises :class:`Refusal` with the first error."""
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not any(recipient.get(key) for key in _RECIPIENT_KEYS):
        refuse("(#100) The parameter recipient is required")
    message = body.get("message")
    action = body.get("sender_action")
    # Graph does not ask for messaging_type on a bare sender action (typing_on, mark_seen ...).
    _validate_type_and_tag(mtype, tag, needs_type=message is not None or action is None or tag is not None)
    if message is not None and action is not None:
        refuse("(#100) Cannot send both message and state", 2018014)
    if message is None and action is None:
        refuse("(#100) Must send either message or state")
    notification = body.get("notification_type")
    if notification is not None and (
        not isinstance(notification, str) or notification not in _NOTIFICATION_TYPES
    ):
        refuse("(#100) Param notification_type must be one of {REGULAR, SILENT_PUSH, NO_PUSH}")
    if message is not None:
        _validate_message(message)
    elif not isinstance(action, str) or action not in _SENDER_ACTIONS:
        refuse("(#100) Param sender_action must be one of {typing_on, typing_off, mark_seen, react, unreact}")
    elif action in ("react", "unreact"):
        payload = body.get("payload")
        if not isinstance(payload, dict) or not payload.get("message_id"):
            refuse("(#100) Param payload[message_id] is required")
        if action == "react" and not payload.get("reaction"):
            refuse("(#100) Param payload[reaction] is required")


def _validate_type_and_tag(mtype: str | None, tag: str | None, *, needs_type: bool) -> None:
    if mtype is None:
        if needs_type:
            refuse("(#100) Param messaging_type is required")
    elif mtype not in _MESSAGING_TYPES:
        refuse("(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG, UTILITY}")
    if tag is not None and mtype != "MESSAGE_TAG":
        refuse("(#100) Messaging type should be MESSAGE_TAG for tagged messages.")
    if mtype == "MESSAGE_TAG":
        if tag is None:
            refuse("(#100) Tag is required for MESSAGE_TAG messaging type")
        if tag in DEPRECATED_TAGS:
            raise Refusal(
                graph_error(100, None, "(#100) Invalid parameter", user_msg=_DEPRECATED_TAG_USER_MSG)
            )
        if tag not in VALID_TAGS:
            refuse("(#100) Invalid tag.")


def _validate_message(message: object) -> None:
    if not isinstance(message, dict):
        refuse("(#100) Param message must be a JSON object")
    text = message.get("text")
    has_text = isinstance(text, str) and text != ""
    given = sum(
        1
        for present in (has_text, bool(message.get("attachment")), bool(message.get("sticker_id")))
        if present
    )
    if not given:
        refuse("(#100) Message cannot be empty, must provide valid attachment or text", 2018034)
    if given > 1:
        refuse("(#100) Only one of text, attachment or sticker_id can be set in param message")
    if isinstance(text, str) and len(text) >= _MAX_TEXT:
        refuse("(#100) Length of param message[text] must be less than or equal to 2000")
    replies = message.get("quick_replies")
    if isinstance(replies, list) and len(replies) > _MAX_QUICK_REPLIES:
        refuse("(#100) param message[quick_replies] must have at most 13 items")
    for i, reply in enumerate(replies if isinstance(replies, list) else []):
        if isinstance(reply, dict) and reply.get("content_type") == "text":
            for name in ("title", "payload"):
                if not reply.get(name):
                    refuse(
                        f"(#100) param message[quick_replies][{i}][{name}] must be a non-empty UTF-8 encoded string"
                    )

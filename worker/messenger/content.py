"""What a send carries: ``message`` or ``sender_action`` (with its ``payload``), checked as Graph
checks them, so that a body Graph always refuses is refused at the intake with a 422 that names
the field (Braze shows that answer in its test dialog and Currents) instead of being accepted and
failing later where nobody looks.

Pure functions, no I/O; each rule has a unit test and the sandbox refuses the same bodies
(:mod:`worker.sandbox.validation`). Sources: messenger-platform.md §1.3 and Meta's Send API,
quick replies and sender actions pages.
"""

from __future__ import annotations

from typing import Any, Final

from worker.messenger.errors import InputError

MAX_TEXT: Final = 2000  # Graph: text must be UTF-8 and "less than 2000 characters"
MAX_QUICK_REPLIES: Final = 13
MAX_METADATA: Final = 1000  # "Must be less than 1000 characters"
MEDIA_TYPES: Final = frozenset({"audio", "video"})
ATTACHMENT_TYPES: Final = frozenset({"audio", "file", "image", "template", "video"})
NOTIFICATION_TYPES: Final = frozenset({"REGULAR", "SILENT_PUSH", "NO_PUSH"})
#: sender actions; react and unreact (December 2025) carry a ``payload`` and go to a PSID.
SENDER_ACTIONS: Final = frozenset({"typing_on", "typing_off", "mark_seen", "react", "unreact"})
REACTIONS: Final = frozenset({"react", "unreact"})
QUICK_REPLY_TYPES: Final = frozenset({"text", "user_phone_number", "user_email"})
MAX_QUICK_REPLY_PAYLOAD: Final = 1000


def _fail(code: str, message: str) -> InputError:
    return InputError(422, code, message)


def check_message(message: object) -> None:
    """``message``: exactly one of text, attachment or sticker_id (plus quick replies, metadata)."""
    if not isinstance(message, dict):
        raise _fail("invalid_message", "message must be an object")
    text = message.get("text")
    attachment = message.get("attachment")
    sticker = message.get("sticker_id")
    given = [
        name
        for name, value in (("text", text), ("attachment", attachment), ("sticker_id", sticker))
        if value is not None
    ]
    if not given:
        raise _fail("invalid_message", "message needs text, an attachment or a sticker_id")
    if len(given) > 1:
        raise _fail(
            "text_and_attachment",
            f"message carries {' and '.join(given)}: Graph refuses more than one (send them separately)",
        )
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise _fail("invalid_message", "message.text must be a non-empty string")
        if len(text) >= MAX_TEXT:
            raise _fail("text_too_long", f"message.text must be shorter than {MAX_TEXT} characters")
    if attachment is not None:
        _check_attachment(attachment)
    if sticker is not None and (isinstance(sticker, bool) or not isinstance(sticker, int | str)):
        raise _fail("invalid_message", "message.sticker_id must be a number")
    metadata = message.get("metadata")
    if metadata is not None and (not isinstance(metadata, str) or len(metadata) >= MAX_METADATA):
        raise _fail("invalid_message", f"message.metadata must be a string shorter than {MAX_METADATA}")
    _check_quick_replies(message.get("quick_replies"))


def _check_attachment(attachment: object) -> None:
    if not isinstance(attachment, dict):
        raise _fail("invalid_message", "message.attachment must be an object")
    kind = attachment.get("type")
    if not isinstance(kind, str) or kind not in ATTACHMENT_TYPES:
        raise _fail(
            "invalid_attachment",
            f"message.attachment.type must be one of {', '.join(sorted(ATTACHMENT_TYPES))}",
        )
    if not isinstance(attachment.get("payload"), dict):
        raise _fail("invalid_attachment", "message.attachment.payload must be an object")


def _check_quick_replies(quick: object) -> None:
    if quick is None:
        return
    if not isinstance(quick, list):
        raise _fail("invalid_message", "message.quick_replies must be a list")
    if len(quick) > MAX_QUICK_REPLIES:
        raise _fail("too_many_quick_replies", f"at most {MAX_QUICK_REPLIES} quick replies are allowed")
    for i, reply in enumerate(quick):
        where = f"message.quick_replies[{i}]"
        if not isinstance(reply, dict):
            raise _fail("invalid_quick_reply", f"{where} must be an object")
        kind = reply.get("content_type")
        if not isinstance(kind, str) or kind not in QUICK_REPLY_TYPES:
            raise _fail(
                "invalid_quick_reply",
                f"{where}.content_type must be one of {', '.join(sorted(QUICK_REPLY_TYPES))}",
            )
        if kind != "text":
            continue
        title, payload = reply.get("title"), reply.get("payload")
        if not isinstance(title, str) or not title.strip():
            raise _fail("invalid_quick_reply", f"{where}: a text quick reply needs a title")
        if isinstance(payload, bool) or not isinstance(payload, str | int) or payload == "":
            raise _fail("invalid_quick_reply", f"{where}: a text quick reply needs a payload")
        if len(str(payload)) > MAX_QUICK_REPLY_PAYLOAD:
            raise _fail("invalid_quick_reply", f"{where}.payload is longer than {MAX_QUICK_REPLY_PAYLOAD}")


def check_action(body: dict[str, Any], to_psid: bool) -> None:
    """``sender_action``, and the ``payload`` that react/unreact need (and nothing else takes)."""
    action = body["sender_action"]
    if not isinstance(action, str) or action not in SENDER_ACTIONS:
        raise _fail(
            "invalid_sender_action", f"sender_action must be one of {', '.join(sorted(SENDER_ACTIONS))}"
        )
    payload = body.get("payload")
    if action not in REACTIONS:
        if payload is not None:
            raise _fail("invalid_payload", f"payload goes with sender_action react or unreact, not {action}")
        return
    if not to_psid:
        raise _fail("invalid_recipient", f"sender_action {action} goes to a PSID (recipient.id)")
    if not isinstance(payload, dict):
        raise _fail("invalid_payload", f"sender_action {action} needs payload.message_id")
    mid = payload.get("message_id")
    if not isinstance(mid, str) or not mid.strip() or len(mid) > 512:
        raise _fail("invalid_payload", "payload.message_id must be the id of the message to react to")
    reaction = payload.get("reaction")
    allowed = {"message_id", "reaction"} if action == "react" else {"message_id"}
    if set(payload) - allowed:
        raise _fail("invalid_payload", f"payload of {action} holds only {' and '.join(sorted(allowed))}")
    if action == "react" and (not isinstance(reaction, str) or not reaction.strip() or len(reaction) > 32):
        raise _fail("invalid_payload", "payload.reaction must be an emoji (react)")


def check_notification_type(body: dict[str, Any]) -> None:
    value = body.get("notification_type")
    if value is not None and (not isinstance(value, str) or value not in NOTIFICATION_TYPES):
        raise _fail(
            "invalid_notification_type",
            f"notification_type must be one of {', '.join(sorted(NOTIFICATION_TYPES))}",
        )


def message_kind(body: dict[str, Any]) -> str:
    """``media`` for audio/video attachments (10/s per page), else ``text`` (300/s)."""
    message = body.get("message")
    if isinstance(message, dict):
        attachment = message.get("attachment")
        kind = attachment.get("type") if isinstance(attachment, dict) else None
        if isinstance(kind, str) and kind in MEDIA_TYPES:
            return "media"
    return "text"

"""Validation of Send API bodies as Braze's Facebook Messenger webhook template posts them.

Pure functions, no I/O: :func:`validate` turns raw bytes plus the request's page context into a
normalised :class:`SendRequest` or raises :class:`InputError` carrying the HTTP status and the
machine code the intake answers with. Every rule here has a unit test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.config import CURRENT_TAGS, DEPRECATED_TAGS, DeprecatedTagPolicy, PageTokens, Settings

MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen"})
MAX_TEXT = 2000  # Graph: text must be UTF-8 and "less than 2000 characters"
MAX_QUICK_REPLIES = 13
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255
MEDIA_TYPES = frozenset({"audio", "video"})


class InputError(Exception):
    """A request we refuse. ``status`` is the HTTP status, ``code`` the stable machine code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SendRequest:
    page_id: str
    psid: str
    body: dict[str, Any]
    fallback_tags: list[str] = field(default_factory=list)
    stripped_tag: str | None = None

    @property
    def kind(self) -> str:
        return message_kind(self.body)


def message_kind(body: dict[str, Any]) -> str:
    """``media`` for audio/video attachments (10/s per page), else ``text`` (300/s)."""
    message = body.get("message")
    if isinstance(message, dict):
        attachment = message.get("attachment")
        kind = attachment.get("type") if isinstance(attachment, dict) else None
        if isinstance(kind, str) and kind in MEDIA_TYPES:
            return "media"
    return "text"


def _fail(code: str, message: str, status: int = 422) -> InputError:
    return InputError(status, code, message)


def parse_tags(header: str | None) -> list[str]:
    """``X-Fallback-Tags: HUMAN_AGENT, CUSTOMER_FEEDBACK`` -> validated, ordered, de-duplicated."""
    if not header:
        return []
    tags: list[str] = []
    for part in header.split(","):
        tag = part.strip().upper()
        if not tag:
            continue
        if tag in DEPRECATED_TAGS:
            raise _fail(
                "deprecated_tag", f"X-Fallback-Tags: {tag} was removed by Meta on {DEPRECATED_TAGS[tag]}"
            )
        if tag not in CURRENT_TAGS:
            raise _fail("invalid_tag", f"X-Fallback-Tags: unknown message tag {tag}")
        if tag not in tags:
            tags.append(tag)
    return tags


def _check_message(message: object) -> None:
    if not isinstance(message, dict):
        raise _fail("invalid_message", "message must be an object")
    text = message.get("text")
    attachment = message.get("attachment")
    if text is None and attachment is None:
        raise _fail("invalid_message", "message needs text or an attachment")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise _fail("invalid_message", "message.text must be a non-empty string")
        if len(text) >= MAX_TEXT:
            raise _fail("text_too_long", f"message.text must be shorter than {MAX_TEXT} characters")
    if attachment is not None and not isinstance(attachment, dict):
        raise _fail("invalid_message", "message.attachment must be an object")
    quick = message.get("quick_replies")
    if quick is not None:
        if not isinstance(quick, list):
            raise _fail("invalid_message", "message.quick_replies must be a list")
        if len(quick) > MAX_QUICK_REPLIES:
            raise _fail("too_many_quick_replies", f"at most {MAX_QUICK_REPLIES} quick replies are allowed")


def _normalise_tag(body: dict[str, Any], settings: Settings) -> str | None:
    """Apply messaging_type defaults and the deprecated-tag policy. Returns a stripped tag, if any."""
    tag = body.get("tag")
    mtype = body.get("messaging_type")
    if tag is not None and (not isinstance(tag, str) or not tag.strip()):
        raise _fail("invalid_tag", "tag must be a non-empty string")
    if mtype is None:
        mtype = "MESSAGE_TAG" if tag else "UPDATE"  # old templates carry no messaging_type
    if not isinstance(mtype, str) or mtype.upper() not in MESSAGING_TYPES:
        raise _fail("invalid_messaging_type", "messaging_type must be RESPONSE, UPDATE or MESSAGE_TAG")
    mtype = mtype.upper()
    body["messaging_type"] = mtype
    if mtype == "MESSAGE_TAG" and not tag:
        raise _fail("missing_tag", "messaging_type MESSAGE_TAG needs a tag")
    if not tag:
        return None
    if mtype != "MESSAGE_TAG":
        raise _fail("invalid_tag", "a tag needs messaging_type MESSAGE_TAG")
    tag = tag.strip().upper()
    if tag in DEPRECATED_TAGS:
        died = DEPRECATED_TAGS[tag]
        if settings.deprecated_tag_policy == DeprecatedTagPolicy.REJECT:
            raise _fail("deprecated_tag", f"message tag {tag} was removed by Meta on {died}")
        del body["tag"]
        body["messaging_type"] = "UPDATE"
        return tag
    if tag not in CURRENT_TAGS:
        raise _fail("invalid_tag", f"unknown message tag {tag}")
    body["tag"] = tag
    return None


def resolve_page(
    settings: Settings,
    *,
    path_page_id: str | None,
    query_token: str | None,
    query_page_id: str | None,
    pages: PageTokens | None = None,
) -> str:
    """The configured page a send is for, from its URL; InputError otherwise.

    * ``?access_token=`` (as Braze's template sends it; ALLOW_TOKEN_PASSTHROUGH) *selects* the
      page whose configured token it is, compared in constant time with every configured token.
      An access token we do not hold is refused (403 ``unknown_page_token``): we send only with
      tokens the operator configured, and no token is ever stored. A page named in the path or
      ``?page_id=`` must be that same page (403 ``page_token_mismatch``).
    * Otherwise the path's ``/{page_id}/messages`` or ``?page_id=`` names it (422
      ``no_page_token`` unless it is configured), or the only configured page is meant.

    ``pages`` is the process's reloading view of PAGE_ACCESS_TOKENS (the intake's); without it
    the settings' tokens are used.
    """
    tokens = pages if pages is not None else PageTokens(settings, source="")
    explicit = path_page_id if path_page_id not in (None, "me") else query_page_id
    if query_token and settings.allow_token_passthrough:
        page = tokens.page_of(query_token)
        if page is None:
            raise _fail(
                "unknown_page_token",
                "the access_token in the URL is not the token of a configured page: add the page and "
                "its token to PAGE_ACCESS_TOKENS, or send to /{version}/{page_id}/messages",
                403,
            )
        if explicit and explicit != page:
            raise _fail("page_token_mismatch", f"the access_token in the URL is not page {explicit}'s", 403)
        return page
    if explicit:
        if tokens.get(explicit) is None:
            raise _fail("no_page_token", f"no access token is configured for page {explicit}")
        return explicit
    only = tokens.only_page()
    if only is not None:
        return only
    raise _fail(
        "no_page_token",
        "cannot tell which page sends this: use /{version}/{page_id}/messages, ?page_id= "
        "or configure PAGE_ACCESS_TOKENS",
    )


def validate(
    raw: bytes,
    settings: Settings,
    *,
    path_page_id: str | None = None,
    query_token: str | None = None,
    query_page_id: str | None = None,
    fallback_header: str | None = None,
    pages: PageTokens | None = None,
) -> SendRequest:
    """Validate one Send API body. Raises InputError; never anything else for any input."""
    if len(raw) > MAX_BODY_BYTES:
        raise _fail("body_too_large", f"body is larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _fail("invalid_json", "body is not valid JSON", 400) from None
    if not isinstance(parsed, dict):
        raise _fail("invalid_body", "body must be a JSON object")
    body: dict[str, Any] = parsed
    recipient = body.get("recipient")
    psid = recipient.get("id") if isinstance(recipient, dict) else None
    if isinstance(psid, int) and not isinstance(psid, bool):
        psid = str(psid)
    if not isinstance(psid, str) or not psid.strip():
        raise _fail(
            "missing_recipient",
            "recipient.id (the user's PSID) is missing or empty; check the Braze custom attribute",
        )
    psid = psid.strip()
    if len(psid) > 128:
        raise _fail("invalid_recipient", "recipient.id is too long")
    body["recipient"] = {"id": psid}
    has_message = body.get("message") is not None
    has_action = body.get("sender_action") is not None
    if has_message == has_action:
        raise _fail("invalid_message", "send exactly one of message or sender_action")
    if has_message:
        _check_message(body["message"])
    elif not isinstance(body["sender_action"], str) or body["sender_action"] not in SENDER_ACTIONS:
        raise _fail("invalid_sender_action", "sender_action must be typing_on, typing_off or mark_seen")
    stripped = _normalise_tag(body, settings)
    body.pop("access_token", None)  # a form-style token inside the body is never forwarded raw
    fallback = parse_tags(fallback_header) or list(settings.fallback_tags)
    page_id = resolve_page(
        settings, path_page_id=path_page_id, query_token=query_token, query_page_id=query_page_id, pages=pages
    )
    return SendRequest(
        page_id=page_id,
        psid=psid,
        body=body,
        fallback_tags=fallback,
        stripped_tag=stripped,
    )

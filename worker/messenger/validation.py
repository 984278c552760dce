"""Validation of Send API bodies as Braze's Facebook Messenger webhook template posts them.

Pure functions, no I/O: :func:`validate` turns raw bytes plus the request's page context into a
normalised :class:`SendRequest` or raises :class:`InputError` carrying the HTTP status and the
machine code the intake answers with. Every rule here has a unit test.

Only the Send API's top-level fields (:data:`BODY_FIELDS`) pass; a credential in the body is
refused, never forwarded or dropped silently. The validated body is encoded once, here
(:func:`encode_body`): those bytes are what the intake stores, and a body that nests deeper than
the encoder serialises (:data:`MAX_DEPTH`) is refused with 422 ``too_deep`` instead of failing
later in the group commit or in the worker, which re-encodes it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from worker.config import CURRENT_TAGS, DEPRECATED_TAGS, DeprecatedTagPolicy, PageTokens, Settings
from worker.messenger.errors import InputError

MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen"})
MAX_TEXT = 2000  # Graph: text must be UTF-8 and "less than 2000 characters"
MAX_QUICK_REPLIES = 13
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255
MEDIA_TYPES = frozenset({"audio", "video"})
#: orjson serialises at most this many nested objects/arrays (3.13: the 255th raises "Recursion
#: limit reached"; it parses up to 1024). A stored body is re-encoded by the worker.
MAX_DEPTH = 254

#: The Send API's top-level body fields (Graph reference "Page Messages"; messenger-platform.md
#: §1.3), the one table of what a body may carry to Graph. Each maps to the JSON types it may
#: have, or to None where a check of its own below owns it. Any other field is refused: 422
#: ``token_in_body`` for a credential (:data:`CREDENTIAL_FIELDS`), else 422 ``unknown_field``. To
#: pass a new field (e.g. ``payload`` with sender_action react/unreact), add it here with its check.
BODY_FIELDS: Final[dict[str, tuple[type, ...] | None]] = {
    "recipient": None,  # recipient.id, in validate(); the body keeps only the id
    "messaging_type": None,  # _normalise_tag
    "tag": None,  # _normalise_tag
    "message": None,  # _check_message
    "sender_action": None,  # SENDER_ACTIONS
    "notification_type": (str,),
    "persona_id": (str, int),
    "reply_to": (dict,),
}
_FIELD_NAMES: Final = frozenset(BODY_FIELDS)
_TYPED_FIELDS: Final = tuple((name, types) for name, types in BODY_FIELDS.items() if types is not None)
_CHECKED_BELOW: Final = frozenset(name for name, types in BODY_FIELDS.items() if types is None)
_TYPE_NAMES: Final[dict[type, str]] = {dict: "an object", str: "a string", int: "an integer"}
#: Credentials Graph takes as parameters: never in a body Braze sends (the intake holds the page
#: tokens and adds appsecret_proof itself).
CREDENTIAL_FIELDS = frozenset({"access_token", "appsecret_proof", "appsecret_time"})


@dataclass(frozen=True)
class SendRequest:
    page_id: str
    psid: str
    body: dict[str, Any]
    fallback_tags: list[str] = field(default_factory=list)
    stripped_tag: str | None = None
    #: ``body`` encoded by :func:`validate` (what is stored); b"" = encode ``body`` when stored.
    body_json: bytes = b""

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


def _check_fields(body: dict[str, Any]) -> None:
    """Only :data:`BODY_FIELDS`, each of its type where the table gives one."""
    if _CHECKED_BELOW.issuperset(body):  # the usual body: one set operation
        return
    if not _FIELD_NAMES.issuperset(body):
        for name in body:
            if name in CREDENTIAL_FIELDS:
                raise _fail(
                    "token_in_body",
                    f"{name} does not belong in the body: the intake holds the page tokens "
                    "(PAGE_ACCESS_TOKENS, or ?access_token= in the URL) and adds appsecret_proof itself",
                )
            if name not in BODY_FIELDS:
                shown = name if len(name) <= 64 else name[:64] + "..."
                raise _fail(
                    "unknown_field",
                    f"{shown!r} is not a Send API body field (allowed: {', '.join(BODY_FIELDS)})",
                )
    for name, types in _TYPED_FIELDS:
        if name in body and type(body[name]) not in types:
            kinds = " or ".join(_TYPE_NAMES[t] for t in types)
            raise _fail("invalid_field", f"{name} must be {kinds}")


def encode_body(body: dict[str, Any]) -> bytes:
    """``body`` as stored and sent (orjson), or InputError 422 ``too_deep`` when it nests deeper
    than orjson serialises (:data:`MAX_DEPTH`)."""
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        if "recursion" in str(exc).lower():
            raise _fail("too_deep", f"the body nests deeper than {MAX_DEPTH} levels") from None
        raise _fail("invalid_body", "the body cannot be encoded as JSON") from None


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
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # valid JSON, nested deeper than orjson parses (1024)
            raise _fail("too_deep", f"the body nests deeper than {MAX_DEPTH} levels") from None
        raise _fail("invalid_json", "body is not valid JSON", 400) from None
    if not isinstance(parsed, dict):
        raise _fail("invalid_body", "body must be a JSON object")
    body: dict[str, Any] = parsed
    _check_fields(body)
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
        body_json=encode_body(body),
    )

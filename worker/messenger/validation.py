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
from worker.messenger import content, recipients, utility
from worker.messenger.content import MAX_QUICK_REPLIES, MAX_TEXT, SENDER_ACTIONS, message_kind
from worker.messenger.errors import InputError
from worker.messenger.utility import UTILITY_TYPE, UtilityTemplate

__all__ = [  # the intake's one import for input checks (content's limits re-exported)
    "BODY_FIELDS",
    "MAX_BODY_BYTES",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_QUICK_REPLIES",
    "MAX_TEXT",
    "SENDER_ACTIONS",
    "InputError",
    "SendHeaders",
    "SendRequest",
    "encode_body",
    "message_kind",
    "resolve_page",
    "usable_tags",
    "validate",
]

MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG", UTILITY_TYPE})
MAX_BODY_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255
#: orjson serialises at most this many nested objects/arrays (3.13: the 255th raises "Recursion
#: limit reached"; it parses up to 1024). A stored body is re-encoded by the worker.
MAX_DEPTH = 254

#: The Send API's top-level body fields (Graph reference "Page Messages"; messenger-platform.md
#: §1.3), the one table of what a body may carry to Graph. Each maps to the JSON types it may
#: have, or to None where a check of its own below owns it. Any other field is refused: 422
#: ``token_in_body`` for a credential (:data:`CREDENTIAL_FIELDS`), else 422 ``unknown_field``. To
#: pass a new field (e.g. ``payload`` with sender_action react/unreact), add it here with its check.
BODY_FIELDS: Final[dict[str, tuple[type, ...] | None]] = {
    "recipient": None,  # recipients.normalise: one of the Send API's recipient kinds
    "messaging_type": None,  # _normalise_tag
    "tag": None,  # _normalise_tag
    "message": None,  # _check_message
    "sender_action": None,  # content.check_action
    "payload": None,  # content.check_action (react / unreact)
    "notification_type": None,  # content.check_notification_type
    "persona_id": (str, int),
    "reply_to": (dict,),
}
_FIELD_NAMES: Final = frozenset(BODY_FIELDS)
_TYPED_FIELDS: Final = tuple((name, types) for name, types in BODY_FIELDS.items() if types is not None)
_CHECKED_BELOW: Final = frozenset(name for name, types in BODY_FIELDS.items() if types is None)
_TYPE_NAMES: Final[dict[type, str]] = {dict: "an object", str: "a string", int: "an integer"}
#: Credentials Graph takes as parameters. ``access_token`` in the body selects the page as one in
#: the URL does (and is removed); the others are refused: the intake adds appsecret_proof itself.
CREDENTIAL_FIELDS = frozenset({"appsecret_proof", "appsecret_time"})


@dataclass(frozen=True)
class SendRequest:
    page_id: str
    psid: str
    body: dict[str, Any]
    #: Routes tried in order when the window is closed: ``tag:<TAG>``, ``utility:<name>``.
    fallbacks: list[str] = field(default_factory=list)
    stripped_tag: str | None = None
    #: The utility template named by X-Utility-Template (the ``utility:`` route), or the direct
    #: UTILITY body's template.
    utility: UtilityTemplate | None = None
    #: Removed tags left out of X-Fallback-Tags / FALLBACK_TAGS (DEPRECATED_TAG_POLICY=strip).
    skipped_tags: tuple[str, ...] = ()
    #: ``body`` encoded by :func:`validate` (what is stored); b"" = encode ``body`` when stored.
    body_json: bytes = b""

    @property
    def kind(self) -> str:
        return message_kind(self.body)


def _fail(code: str, message: str, status: int = 422) -> InputError:
    return InputError(status, code, message)


def parse_tags(header: str | None, policy: DeprecatedTagPolicy = DeprecatedTagPolicy.REJECT) -> list[str]:
    """``X-Fallback-Tags: HUMAN_AGENT, CUSTOMER_FEEDBACK`` -> validated, ordered, de-duplicated."""
    return usable_tags(header.split(",") if header else [], policy, "X-Fallback-Tags")[0]


def usable_tags(
    tags: list[str], policy: DeprecatedTagPolicy, where: str
) -> tuple[list[str], tuple[str, ...]]:
    """(the tags to try, the removed tags skipped). A tag Meta removed is skipped under
    DEPRECATED_TAG_POLICY=strip, 422 ``deprecated_tag`` under reject; an unknown tag is 422."""
    kept: list[str] = []
    skipped: list[str] = []
    for part in tags:
        if not part.isascii():  # "\u017f" (long s) upper-cases to "S": a look-alike is no tag
            raise _fail("invalid_tag", f"{where}: unknown message tag {part.strip()}")
        tag = part.strip().upper()
        if not tag or tag in kept or tag in skipped:
            continue
        if tag in DEPRECATED_TAGS:
            if policy == DeprecatedTagPolicy.REJECT:
                raise _fail("deprecated_tag", f"{where}: {tag} was removed by Meta on {DEPRECATED_TAGS[tag]}")
            skipped.append(tag)
        elif tag not in CURRENT_TAGS:
            raise _fail("invalid_tag", f"{where}: unknown message tag {tag}")
        else:
            kept.append(tag)
    return kept, tuple(skipped)


def _normalise_type(body: dict[str, Any]) -> None:
    """Upper-case a given messaging_type in place, before anything reads it (``utility`` is a
    UTILITY send: :func:`utility.template_of` compares the upper-case name); InputError 422 if
    it is none of :data:`MESSAGING_TYPES`. ASCII only: a dotless i (U+0131) upper-cases to ``I``."""
    mtype = body.get("messaging_type")
    if mtype is None:  # defaulted from the tag by _normalise_tag
        return
    if not isinstance(mtype, str) or not mtype.isascii() or mtype.upper() not in MESSAGING_TYPES:
        raise _fail(
            "invalid_messaging_type", "messaging_type must be RESPONSE, UPDATE, MESSAGE_TAG or UTILITY"
        )
    body["messaging_type"] = mtype.upper()


def _normalise_tag(body: dict[str, Any], settings: Settings) -> str | None:
    """Apply messaging_type defaults (after :func:`_normalise_type`) and the deprecated-tag
    policy. Returns a stripped tag, if any."""
    tag = body.get("tag")
    mtype = body.get("messaging_type")
    if tag is not None and (not isinstance(tag, str) or not tag.strip() or not tag.isascii()):
        raise _fail("invalid_tag", "tag must be a non-empty ASCII string")
    if mtype is None:
        mtype = "MESSAGE_TAG" if tag else "UPDATE"  # old templates carry no messaging_type
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
                "the access_token (in the URL, or the body) is not the token of a configured page: "
                "add the page and its token to PAGE_ACCESS_TOKENS, or send to /{version}/{page_id}/messages",
                403,
            )
        if explicit and explicit != page:
            raise _fail(
                "page_token_mismatch",
                f"the access_token (in the URL, or the body) is not page {explicit}'s",
                403,
            )
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


@dataclass(frozen=True, slots=True)
class SendHeaders:
    """The request headers that shape a send (all optional)."""

    fallback_tags: str | None = None  # X-Fallback-Tags
    utility_template: str | None = None  # X-Utility-Template
    utility_parameters: str | None = None  # X-Utility-Parameters


def _parse(raw: bytes) -> dict[str, Any]:
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
    return parsed


def _body_token(body: dict[str, Any], query_token: str | None) -> str | None:
    """``access_token`` in the JSON body (as Graph reads a form field): removed from the body; it
    selects the page like one in the URL, and must agree with it when both are given."""
    if "access_token" not in body:
        return query_token
    token = body.pop("access_token")
    if not isinstance(token, str) or not token:
        raise _fail("invalid_field", "access_token in the body must be a string")
    if query_token and token != query_token:
        raise _fail("page_token_mismatch", "the access_token in the body is not the one in the URL", 403)
    return token


def fallback_routes(
    settings: Settings, tags: list[str], template: UtilityTemplate | None, to_psid: bool
) -> list[str]:
    """The routes tried, in FALLBACK_ORDER, when the window is closed: ``utility:<name>`` for the
    request's template, ``tag:<TAG>`` for each fallback tag. Only a PSID has a window and can
    take them."""
    if not to_psid:
        return []
    routes: list[str] = []
    for step in settings.fallback_order:
        if step == "utility" and template is not None:
            routes.append(template.route)
        elif step == "tags":
            routes += [f"tag:{tag}" for tag in tags]
    return routes


def validate(
    raw: bytes,
    settings: Settings,
    *,
    path_page_id: str | None = None,
    query_token: str | None = None,
    query_page_id: str | None = None,
    pages: PageTokens | None = None,
    headers: SendHeaders | None = None,
) -> SendRequest:
    """Validate one Send API body. Raises InputError; never anything else for any input."""
    body = _parse(raw)
    token = _body_token(body, query_token)
    _check_fields(body)
    body["recipient"], psid = recipients.normalise(body.get("recipient"))
    to_psid = recipients.is_psid(psid)
    has_message = body.get("message") is not None
    has_action = body.get("sender_action") is not None
    if has_message == has_action:
        raise _fail("invalid_message", "send exactly one of message or sender_action")
    content.check_notification_type(body)
    _normalise_type(body)
    direct = utility.template_of(body)
    if direct is not None:  # the same rule as X-Utility-Parameters': no Liquid left as written
        utility.check_rendered(direct, "message.template")
    if has_action:
        content.check_action(body, to_psid)
    elif "payload" in body:
        raise _fail("invalid_payload", "payload goes with sender_action react or unreact")
    elif direct is None:
        content.check_message(body["message"])
    stripped = _normalise_tag(body, settings)
    head = headers or SendHeaders()
    header_tags = [tag for tag in (head.fallback_tags or "").split(",") if tag.strip()]
    tags, skipped = usable_tags(
        header_tags or list(settings.fallback_tags),
        settings.deprecated_tag_policy,
        "X-Fallback-Tags" if header_tags else "FALLBACK_TAGS",
    )
    template = utility.from_headers(
        head.utility_template,
        head.utility_parameters,
        default_language=settings.utility_default_language,
        defaults=settings.utility_templates,
    )
    if template is not None and not to_psid:
        raise _fail("invalid_utility_template", "X-Utility-Template needs a PSID recipient (recipient.id)")
    page_id = resolve_page(
        settings, path_page_id=path_page_id, query_token=token, query_page_id=query_page_id, pages=pages
    )
    routes = [] if direct is not None else fallback_routes(settings, tags, template, to_psid)
    return SendRequest(
        page_id=page_id,
        psid=psid,
        body=body,
        fallbacks=routes,
        stripped_tag=stripped,
        utility=direct or (template if template is not None and template.route in routes else None),
        skipped_tags=skipped,
        body_json=encode_body(body),
    )

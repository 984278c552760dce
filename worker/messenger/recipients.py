"""Every recipient the Send API accepts, and what each means for the service.

``recipient`` carries exactly one of these keys (messenger-platform.md §1.3, §2.4):

==============================  ============  ===========================================  ======
key                             store key     window (our side; Graph has the last word)   PSID
==============================  ============  ===========================================  ======
``id`` (PSID)                   the PSID      24 h after the user's last interaction       yes
                                              (7 days after a Click-to-Messenger ad)
``phone_number`` (Customer      ``phone:``…   none: a message request; Graph decides        no
Matching; optional ``name``)
``user_ref`` (Checkbox plugin)  ``uref:``…    none known: Graph decides                    no
``notification_messages_token`` ``nmt:``…     none: a marketing-message token has no        no
                                              24-hour window
``one_time_notif_token``        ``otn:``…     none (single use, valid a year)              no
``comment_id`` / ``post_id``    ``cmt:``… /   7 days after the comment or post; we do not   no
(private replies)               ``post:``…    see its time, so Graph decides
==============================  ============  ===========================================  ======

The *store key* identifies the recipient everywhere a PSID did: the record's ``psid`` field, the
per-recipient order and pacing, suppression, hashed in logs. Only a PSID (``id``) has a window we
track, can be parked until the user writes, linked to a Braze user, or sent a tagged or utility
fallback (those need a PSID).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from worker.messenger.errors import InputError


@dataclass(frozen=True, slots=True)
class RecipientKind:
    field: str
    #: prefix of the store key ("" for a PSID)
    prefix: str
    max_length: int
    #: digits (and ``_``) only: Graph object ids
    numeric: bool = False


KINDS: Final[tuple[RecipientKind, ...]] = (
    RecipientKind("id", "", 128),
    RecipientKind("phone_number", "phone:", 32),
    RecipientKind("user_ref", "uref:", 512),
    RecipientKind("notification_messages_token", "nmt:", 1024),
    RecipientKind("one_time_notif_token", "otn:", 1024),
    RecipientKind("comment_id", "cmt:", 128, numeric=True),
    RecipientKind("post_id", "post:", 128, numeric=True),
)
BY_FIELD: Final = {kind.field: kind for kind in KINDS}
_PREFIXED: Final = tuple(kind for kind in KINDS if kind.prefix)
_PHONE_CHARS: Final = frozenset("+0123456789 ()-.")
_NAME_FIELDS: Final = frozenset({"first_name", "last_name"})


def _fail(code: str, message: str) -> InputError:
    return InputError(422, code, message)


def _check_psid(value: str) -> None:
    """A PSID is decimal digits at Meta; the sandbox's reserved ids (``err-551-x``, ``outside-x``)
    and the tests' (``{run}-ra1``) are not, so only what no PSID can be is refused: a ``:`` (a
    store key's kind prefix ends with one), whitespace, and a negative number (``-5``)."""
    if ":" in value:
        raise _fail("invalid_recipient", "recipient.id (a PSID) must not contain ':'")
    if " " in value or (not value.isprintable() and any(c.isspace() for c in value)):
        raise _fail("invalid_recipient", "recipient.id (a PSID) must not contain whitespace")
    if value.startswith("-") and value[1:].isdigit():
        raise _fail("invalid_recipient", "recipient.id (a PSID) must not be a negative number")


def _value(kind: RecipientKind, raw: object) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool) and (kind.numeric or kind.field == "id"):
        raw = str(raw)
    if not isinstance(raw, str) or not raw.strip():
        if kind.field == "id":
            raise _fail(
                "missing_recipient",
                "recipient.id (the user's PSID) is missing or empty; check the Braze custom attribute",
            )
        raise _fail("invalid_recipient", f"recipient.{kind.field} must be a non-empty string")
    value = raw.strip()
    if len(value) > kind.max_length:
        raise _fail("invalid_recipient", f"recipient.{kind.field} is too long")
    # NUL, newlines ...: they would reach store keys and log lines (printable: the usual, fast case)
    if not value.isprintable() and any(c < " " or c == "\x7f" for c in value):
        raise _fail("invalid_recipient", f"recipient.{kind.field} must not contain control characters")
    if kind.field == "id":
        _check_psid(value)
    if kind.numeric and not value.replace("_", "").isdigit():
        raise _fail("invalid_recipient", f"recipient.{kind.field} must be a Graph id (digits and _)")
    if kind.field == "phone_number" and (
        not _PHONE_CHARS.issuperset(value) or sum(c.isdigit() for c in value) < 5
    ):
        raise _fail("invalid_recipient", "recipient.phone_number must be a phone number (+1 212 555 2368)")
    return value


def normalise(recipient: object) -> tuple[dict[str, Any], str]:
    """The recipient object to send and its store key; InputError 422 otherwise.

    Exactly one key of :data:`KINDS` (a PSID given as a number becomes a string); ``name``
    (``first_name``/``last_name``) only next to ``phone_number``."""
    if not isinstance(recipient, dict):
        raise _fail(
            "missing_recipient",
            "recipient.id (the user's PSID) is missing or empty; check the Braze custom attribute",
        )
    given = [key for key in recipient if key in BY_FIELD]
    if not given:
        if recipient.get("id") is None and not set(recipient) - {"id"}:
            _value(BY_FIELD["id"], None)  # the usual mistake: an empty Braze attribute
        raise _fail(
            "missing_recipient",
            "recipient needs one of " + ", ".join(kind.field for kind in KINDS),
        )
    if len(given) > 1:
        raise _fail("invalid_recipient", f"recipient carries {' and '.join(given)}: send exactly one")
    kind = BY_FIELD[given[0]]
    extra = set(recipient) - {kind.field, "name"}
    if extra or ("name" in recipient and kind.field != "phone_number"):
        shown = sorted(extra or {"name"})[0][:64]
        raise _fail("invalid_recipient", f"recipient.{shown} is not a recipient field here")
    value = _value(kind, recipient[kind.field])
    out: dict[str, Any] = {kind.field: value}
    if "name" in recipient:
        name = recipient["name"]
        if (
            not isinstance(name, dict)
            or not set(name) <= _NAME_FIELDS
            or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in name.values())
        ):
            raise _fail("invalid_recipient", "recipient.name holds first_name and last_name (strings)")
        out["name"] = name
    return out, kind.prefix + value


def kind_of(store_key: str) -> RecipientKind:
    """The kind of a stored recipient key (:func:`normalise`'s second value)."""
    for kind in _PREFIXED:
        if store_key.startswith(kind.prefix):
            return kind
    return BY_FIELD["id"]


def is_psid(store_key: str) -> bool:
    """Whether the recipient is a PSID: a tracked window, parking, links and fallbacks."""
    return kind_of(store_key).field == "id"

"""m.me refs that tie a Messenger user (PSID) to a Braze user: signed, page-bound, expiring.

Why signed
    A Messenger user who opens ``m.me/<page>?ref=<ref>`` makes Meta send us a correctly signed
    webhook carrying ``<ref>`` verbatim: Meta's signature proves the event came from Meta, not
    that the ref came from us. An unsigned ``braze_<external_id>`` lets anyone write their own
    PSID onto someone else's Braze profile (and receive that user's campaigns). So a ref links a
    PSID only when it carries an HMAC under ``LINK_SECRET``, a secret only this service and the
    Braze template that builds the link know.

Format (fits Meta's ref: one URL query value, no escaping needed)::

    braze_<external_id>.<expires>.<mac>

    external_id  the Braze external_id, 1-200 of A-Z a-z 0-9 - . _ ~ (RFC 3986 unreserved)
    expires      Unix time (seconds, decimal) after which the ref links nothing
    mac          hex (lower case) HMAC-SHA256, keyed with LINK_SECRET, of the UTF-8 string
                 "<page_id>:<external_id>:<expires>" — page_id is the Facebook Page's numeric
                 id, as Meta sends it in the webhook (``entry.id``)

So a ref is bound to one page (a link made for page A links nothing on page B) and expires (a
forwarded or archived email stops working). The longest ref is 6 + 200 + 1 + 12 + 1 + 64 = 284
characters, well inside the 2,083 Meta documents for the ref parameter. The external_id is
found by taking the last two dot-separated fields off (external ids may contain dots; expires
and mac never do). Braze's Liquid computes the same bytes with its ``hmac_sha256_hex`` filter
(README, "Messenger app and Braze set-up for the loop").

Verification (:func:`check_ref`) is constant-time on the MAC, checks the expiry only once the
MAC matched (an expiry is only trusted when it is signed), and says why a ``braze_`` ref links
nothing (:data:`Refusal`): ``disabled`` (no LINK_SECRET configured), ``unsigned`` (the old
``braze_<external_id>`` form), ``malformed`` (neither form), ``bad_signature`` (the MAC does not
match: forged, altered, made for another page or with another secret), ``link_expired`` (past
``expires``; not ``expired``, which is a delivery status). Refs that do not start with
``braze_`` (an ad's or another campaign's) are not ours: :func:`check_ref` returns None for them
and nothing is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "MAX_EXTERNAL_ID",
    "REF_PREFIX",
    "RefCheck",
    "Refusal",
    "check_ref",
    "ref_mac",
    "sign_ref",
]

REF_PREFIX: Final = "braze_"
MAX_EXTERNAL_ID: Final = 200

Refusal = Literal["disabled", "unsigned", "malformed", "bad_signature", "link_expired"]

_ID: Final = rf"[A-Za-z0-9._~-]{{1,{MAX_EXTERNAL_ID}}}"
_EXTERNAL_ID: Final = re.compile(_ID)
_SIGNED: Final = re.compile(rf"(?P<id>{_ID})\.(?P<expires>[0-9]{{1,12}})\.(?P<mac>[0-9a-fA-F]{{64}})")


@dataclass(frozen=True, slots=True)
class RefCheck:
    """What a ``braze_`` ref proves: ``external_id`` when it is valid, else the ``refusal``."""

    external_id: str | None
    refusal: Refusal | None
    #: The external id the ref names, valid or not (for hashed log lines; None when malformed).
    claimed: str | None


def ref_mac(secret: str, page_id: str, external_id: str, expires: str) -> str:
    """The hex HMAC-SHA256 a ref carries (what Braze's ``hmac_sha256_hex`` filter outputs)."""
    message = f"{page_id}:{external_id}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_ref(secret: str, page_id: str, external_id: str, expires: int) -> str:
    """A ref for ``m.me/<page>?ref=...`` linking the page's user to ``external_id`` until ``expires``."""
    if not _EXTERNAL_ID.fullmatch(external_id):
        raise ValueError("an external_id for a ref is 1-200 of A-Z a-z 0-9 - . _ ~")
    if not 0 <= expires < 10**12:
        raise ValueError("expires is Unix time in seconds")
    mac = ref_mac(secret, page_id, external_id, str(expires))
    return f"{REF_PREFIX}{external_id}.{expires}.{mac}"


def check_ref(ref: object, page_id: str, secret: str | None, now: float) -> RefCheck | None:
    """What ``ref`` (from a webhook event of page ``page_id``) proves; None if it is not a
    ``braze_`` ref. Never raises, whatever value arrives."""
    if not isinstance(ref, str) or not ref.startswith(REF_PREFIX):
        return None
    body = ref[len(REF_PREFIX) :]
    signed = _SIGNED.fullmatch(body)
    if signed is None:
        claimed = body if _EXTERNAL_ID.fullmatch(body) else None
        if not secret:
            return RefCheck(None, "disabled", claimed)
        return RefCheck(None, "unsigned" if claimed else "malformed", claimed)
    external_id, expires = signed.group("id"), signed.group("expires")
    if not secret:
        return RefCheck(None, "disabled", external_id)
    expected = ref_mac(secret, page_id, external_id, expires)
    if not hmac.compare_digest(expected, signed.group("mac").lower()):
        return RefCheck(None, "bad_signature", external_id)
    if int(expires) <= now:
        return RefCheck(None, "link_expired", external_id)
    return RefCheck(external_id, None, external_id)

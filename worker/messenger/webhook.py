"""Messenger Platform webhooks: signature and handshake checks, event parsing, m.me refs.

Pure functions, no I/O: whoever serves the webhook endpoint reads the raw body, calls
:func:`verify_signature` *before* parsing it, then :func:`parse_events`, and decides what to write
back to Braze (e.g. the PSID as a custom attribute, see ``worker.braze.psid_attribute_item``).

Signature
    Meta signs every webhook POST with ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of
    the raw body keyed with the app secret. The check is constant-time; a missing, malformed or
    wrong header, or an empty app secret (an HMAC anyone can compute), gives False.
    :func:`signature_well_formed` needs no body: the endpoint refuses a header that could never
    match before it reads a byte of the body.

Handshake
    ``GET ?hub.mode=subscribe&hub.verify_token=<ours>&hub.challenge=<n>`` must be answered with the
    challenge, as plain text, when the token matches (constant-time).

Events and the 24-hour window (messenger-platform.md §2.1)
    Every ``entry`` and every item of its ``messaging`` array is read (Braze's 2016 sample bot read
    only ``entry[0]``, losing events Meta batches together), and so is every item of its
    ``standby`` array (handover protocol: another app owns the thread, but the user wrote to the
    page all the same: the window opens as for ``messaging``). Items that do not have the shape
    below are skipped, never raised on, whatever JSON value arrives.

    A window lasts 24 hours from the interaction, 7 days after one that came from a
    Click-to-Messenger ad (a ``referral`` with ``source: ADS``, on the item, its postback or its
    message; messenger-platform.md §2.6): ``window_seconds``.

    ============  ===============================================  ============
    kind          from                                             opens window
    ============  ===============================================  ============
    message       ``message`` (``message.is_echo``: skipped,       yes
                  those are the page's own sends)
    postback      ``postback`` (Get Started, buttons, menu)        yes
    referral      ``referral`` (m.me link / ad / QR code into an   yes
                  existing conversation)
    optin         ``optin`` (Send to Messenger / Checkbox plugin)  yes, except
                                                                   Marketing
                                                                   Messages
                                                                   opt-ins
    reaction      ``reaction``                                     yes
    read          ``read``                                         no
    delivery      ``delivery``                                     no
    other         anything else with a sender (account linking,    no
                  handover, edits ...)
    ============  ===============================================  ============

    Opting in to Marketing Messages (``optin.type == "notification_messages"``) does not open the
    window (§2.1, [M-MKT-LEGACY]). A Checkbox-plugin opt-in carries ``optin.user_ref`` and no
    ``sender.id``: there is no PSID yet, so the item is skipped (``user_ref`` identifies a plugin
    session, not a Braze user, and is never used as ``ref``).

    ``ref`` is taken from ``referral.ref`` (user already in a conversation with the page),
    ``postback.referral.ref`` (first conversation: the user tapped Get Started after an m.me link)
    or ``optin.ref`` (the plugin's ``data-ref``); else None. ``mid`` (Meta's message id, the same
    on every retry of the event) is ``message.mid`` or ``postback.mid``; else None (referrals,
    opt-ins, reactions, receipts carry none of their own). Ids longer than 512 characters are
    dropped (they only name a Redis key).

    ``read`` and ``delivery`` receipts carry ``watermark`` (every message sent before it was read,
    or delivered; epoch s) and a delivery its ``mids`` (at most MAX_RECEIPT_MIDS): the worker
    marks the deliveries it sent ``delivered_at`` / ``read_at`` (:mod:`worker.delivery.inbound`).

m.me links that tie a Messenger user to a Braze user
    ``https://m.me/<PAGE_USERNAME>?ref=braze_<external_id>.<expires>.<mac>``: what a ref must
    carry to link anything, and its check, are in :mod:`worker.messenger.refs`. The parser only
    passes the ref on, verbatim; the worker checks it (:mod:`worker.delivery.inbound`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "SIGNATURE_HEADER",
    "EventKind",
    "InboundEvent",
    "parse_events",
    "signature_well_formed",
    "verify_handshake",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Hub-Signature-256"
MAX_MID: Final = 512

_SIG_PREFIX: Final = "sha256="
_HEX: Final = frozenset("0123456789abcdef")

EventKind = Literal["message", "postback", "referral", "optin", "reaction", "read", "delivery", "other"]

# Checked in this order: the first key present in a messaging item names its kind.
_KINDS: Final[tuple[EventKind, ...]] = (
    "message",
    "postback",
    "referral",
    "optin",
    "reaction",
    "read",
    "delivery",
)
_OPENS_WINDOW: Final[frozenset[EventKind]] = frozenset(
    {"message", "postback", "referral", "optin", "reaction"}
)
_MARKETING_OPTIN: Final = "notification_messages"
#: The standard window, and the one after a Click-to-Messenger ad ("may last up to 7 days").
WINDOW_SECONDS: Final = 24 * 3600
AD_WINDOW_SECONDS: Final = 7 * 86_400


def _from_ad(item: dict[object, object]) -> bool:
    """A referral from a Click-to-Messenger ad, on the item itself, its postback or its message."""
    return any(
        _str_at(item, *path, "source") == "ADS"
        for path in (("referral",), ("postback", "referral"), ("message", "referral"))
    )


def _signature_hex(header: object) -> str | None:
    """The 64 lower-case hex digits of a ``sha256=<hex>`` header, else None."""
    if not isinstance(header, str):
        return None
    header = header.strip()
    if header[: len(_SIG_PREFIX)].lower() != _SIG_PREFIX:
        return None
    given = header[len(_SIG_PREFIX) :].lower()
    if len(given) != 64 or not _HEX.issuperset(given):
        return None
    return given


def signature_well_formed(header: str | None) -> bool:
    """True when ``header`` has the shape of an ``X-Hub-Signature-256`` (no body needed)."""
    return _signature_hex(header) is not None


def verify_signature(app_secret: str, raw_body: bytes, header: str | None) -> bool:
    """True when ``header`` (``X-Hub-Signature-256``) is the HMAC-SHA256 of ``raw_body``."""
    given = _signature_hex(header)
    if not app_secret or given is None:
        return False
    expected = hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


def verify_handshake(params: Mapping[str, str], verify_token: str) -> str | None:
    """The ``hub.challenge`` to echo when this is a valid subscription handshake, else None."""
    mode = params.get("hub.mode")
    token = params.get("hub.verify_token")
    challenge = params.get("hub.challenge")
    if not verify_token or mode != "subscribe" or not isinstance(token, str):
        return None
    if not isinstance(challenge, str) or not challenge:
        return None
    # compare_digest on str accepts ASCII only; bytes work for any token.
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return None
    return challenge


@dataclass(frozen=True)
class InboundEvent:
    """One user action from a Messenger webhook (see the module docstring for kinds and window)."""

    page_id: str
    psid: str
    timestamp: float
    """Seconds since the epoch (Messenger sends milliseconds)."""
    kind: EventKind
    ref: str | None
    opens_window: bool
    mid: str | None = None
    """Meta's message id (messages and postbacks): the same on every retry of the event."""
    window_seconds: int = WINDOW_SECONDS
    """How long the window it opens lasts (AD_WINDOW_SECONDS after a Click-to-Messenger ad)."""
    standby: bool = False
    """From ``standby`` (another app holds the thread)."""
    watermark: float | None = None
    """``read`` and ``delivery``: every message sent before this (epoch s) was read / delivered."""
    mids: tuple[str, ...] = ()
    """``delivery``: the message ids delivered (Meta may omit them; the watermark covers them)."""


#: At most this many mids of one delivery receipt are kept (Meta sends a handful).
MAX_RECEIPT_MIDS: Final = 100


def _receipt(item: dict[object, object], kind: EventKind) -> tuple[float | None, tuple[str, ...]]:
    """A read or delivery receipt's watermark (epoch s) and, for a delivery, its mids."""
    body = item.get(kind)
    if not isinstance(body, dict):
        return None, ()
    watermark = _seconds(body.get("watermark"))
    mids: tuple[str, ...] = ()
    raw = body.get("mids")
    if kind == "delivery" and isinstance(raw, list):
        mids = tuple(m for m in raw[:MAX_RECEIPT_MIDS] if isinstance(m, str) and m and len(m) <= MAX_MID)
    return watermark, mids


def _id(value: object) -> str | None:
    """A Graph id: a non-empty string (or an integer, for hand-written payloads)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _seconds(ms: object) -> float | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        seconds = float(ms) / 1000.0
    except OverflowError:  # an integer too large for a float
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _str_at(obj: object, *path: str) -> str | None:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, str) and obj else None


def _kind(item: dict[object, object]) -> EventKind:
    for kind in _KINDS:
        if isinstance(item.get(kind), dict):
            return kind
    return "other"


def _event(
    item: object, entry_page: str | None, entry_time: float | None, standby: bool = False
) -> InboundEvent | None:
    if not isinstance(item, dict):
        return None
    kind = _kind(item)
    if kind == "message" and item["message"].get("is_echo") is True:  # _kind checked: a dict
        return None
    psid = _id(item["sender"].get("id")) if isinstance(item.get("sender"), dict) else None
    recipient = _id(item["recipient"].get("id")) if isinstance(item.get("recipient"), dict) else None
    page_id = entry_page or recipient
    timestamp = _seconds(item.get("timestamp"))
    if timestamp is None:
        timestamp = entry_time
    if psid is None or page_id is None or timestamp is None:
        return None
    ref: str | None = None
    mid: str | None = None
    opens = kind in _OPENS_WINDOW
    if kind == "message":
        mid = _str_at(item, "message", "mid")
    elif kind == "referral":
        ref = _str_at(item, "referral", "ref")
    elif kind == "postback":
        ref = _str_at(item, "postback", "referral", "ref")
        mid = _str_at(item, "postback", "mid")
    elif kind == "optin":
        ref = _str_at(item, "optin", "ref")
        opens = _str_at(item, "optin", "type") != _MARKETING_OPTIN
    if mid is not None and len(mid) > MAX_MID:
        mid = None
    watermark, mids = _receipt(item, kind) if kind in ("read", "delivery") else (None, ())
    return InboundEvent(
        page_id=page_id,
        psid=psid,
        timestamp=timestamp,
        kind=kind,
        ref=ref,
        opens_window=opens,
        mid=mid,
        window_seconds=AD_WINDOW_SECONDS if opens and _from_ad(item) else WINDOW_SECONDS,
        standby=standby,
        watermark=watermark,
        mids=mids,
    )


def parse_events(payload: object) -> list[InboundEvent]:
    """Every user event of a webhook body (already JSON-decoded), in order; never raises."""
    if not isinstance(payload, dict) or payload.get("object") != "page":
        return []
    entries = payload.get("entry")
    if not isinstance(entries, list):
        return []
    events: list[InboundEvent] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        page = _id(entry.get("id"))
        entry_time = _seconds(entry.get("time"))
        for field, standby in (("messaging", False), ("standby", True)):
            items = entry.get(field)
            if not isinstance(items, list):
                continue
            for item in items:
                event = _event(item, page, entry_time, standby)
                if event is not None:
                    events.append(event)
    return events


def event_to_dict(event: InboundEvent) -> dict[str, Any]:
    """An event as the ``worker.inbound`` task's JSON argument."""
    return {
        "page_id": event.page_id,
        "psid": event.psid,
        "timestamp": event.timestamp,
        "kind": event.kind,
        "ref": event.ref,
        "opens_window": event.opens_window,
        "mid": event.mid,
        "window_seconds": event.window_seconds,
        "standby": event.standby,
        "watermark": event.watermark,
        "mids": list(event.mids),
    }

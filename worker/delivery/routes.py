"""Routes: how a delivery reaches its recipient, and what the worker sends on each.

A route is a string, recorded as the delivery's ``delivered_via`` once it is sent:

==================  =======================================================================
route               body sent
==================  =======================================================================
``""`` (as given)   Braze's body as accepted; recorded as ``window`` for a PSID (inside the
                    24-hour window), ``tag:<TAG>`` / ``utility:<name>`` when the body itself
                    is a tagged or utility send, else the recipient kind (``phone_number``,
                    ``one_time_notif_token``, ``comment_id`` ...: worker/messenger/recipients.py)
``tag:<TAG>``       the body with ``messaging_type: MESSAGE_TAG`` and ``tag``
``utility:<name>``  the delivery's utility template to the same PSID
                    (:func:`worker.messenger.utility.utility_body`: the shape lives there)
==================  =======================================================================

A delivery's fallbacks (``FALLBACK_ORDER`` applied at the intake) are the routes tried, each at
most once, when Graph says the window is closed (or it is known to be).
"""

from __future__ import annotations

from typing import Any, Final

from worker.messenger import recipients
from worker.messenger.utility import UTILITY_TYPE, UtilityTemplate, template_of, utility_body

AS_GIVEN: Final = ""
TAG: Final = "tag:"
UTILITY: Final = "utility:"


def is_tag(route: str) -> bool:
    return route.startswith(TAG)


def is_utility(route: str) -> bool:
    return route.startswith(UTILITY)


def body_for(body: dict[str, Any], route: str, template: UtilityTemplate | None) -> dict[str, Any]:
    """The Send API body of ``route`` (the body as accepted for ``AS_GIVEN``)."""
    if is_tag(route):
        return {**body, "messaging_type": "MESSAGE_TAG", "tag": route[len(TAG) :]}
    if is_utility(route) and template is not None:
        return utility_body(body, template)
    return body


def delivered_via(body: dict[str, Any], psid: str, route: str) -> str:
    """What the status API and ``delivery.sent`` report: see the module's table."""
    if route:
        return route
    mtype = body.get("messaging_type")
    tag = body.get("tag")
    if mtype == "MESSAGE_TAG" and isinstance(tag, str):
        return TAG + tag
    if mtype == UTILITY_TYPE:
        direct = template_of(body)
        return direct.route if direct is not None else UTILITY.rstrip(":")
    kind = recipients.kind_of(psid)
    return "window" if kind.field == "id" else kind.field


def outside_window_capable(body: dict[str, Any]) -> bool:
    """A body sent as accepted that does not need the window: tagged or utility."""
    return body.get("messaging_type") in ("MESSAGE_TAG", UTILITY_TYPE)


def next_route(
    fallbacks: list[str], tried: list[str], *, tag_suppressed: bool, unusable: frozenset[str] = frozenset()
) -> str | None:
    """The first fallback not tried yet (a tag only while tagged sends to the PSID are allowed;
    never one in ``unusable``, e.g. a paused template)."""
    for route in fallbacks:
        if route in tried or route in unusable or (tag_suppressed and is_tag(route)):
            continue
        return route
    return None


def from_legacy(tags: list[str]) -> list[str]:
    """``fallback_tags`` / ``tags_tried`` of a record written before routes: tag names."""
    return [tag if ":" in tag else TAG + tag for tag in tags]

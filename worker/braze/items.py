"""The items of the Braze outbox: what each write says, validated, and merged into one request.

Items (validated by :func:`check_item` before they enter the outbox)::

    {"type": "attribute", "external_id": str, "attributes": {...}}
    {"type": "event", "external_id": str, "name": str, "time": iso8601, "properties": {...}}

One batch is at most ``batch_size`` items and becomes ONE request: attribute items of the same
external_id are merged into one object (later items win per attribute), each event is one object,
so the request holds at most ``batch_size`` objects combined (Braze: "Each request may batch up to
50 updates combined across attribute, event, or purchase objects").
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from worker.store.campaign_ctx import event_time

#: The custom event recorded for every final delivery outcome.
OUTCOME_EVENT: Final = "messenger_delivery"
#: The custom events of Messenger's delivery and read receipts (BRAZE_RECEIPT_EVENTS).
DELIVERED_EVENT: Final = "messenger_delivered"
READ_EVENT: Final = "messenger_read"


def psid_attribute_item(psid_attribute: str, external_id: str, page_id: str, psid: str) -> dict[str, Any]:
    """The Braze user ``external_id`` is reachable on Messenger at ``psid`` (page ``page_id``)."""
    return {
        "type": "attribute",
        "external_id": external_id,
        "attributes": {
            psid_attribute: psid,
            "messenger_page_id": page_id,
            "messenger_reachable": True,
        },
    }


def unreachable_item(external_id: str, mode: Literal["flag", "clear"], psid_attribute: str) -> dict[str, Any]:
    """The user cannot be messaged: ``flag`` sets ``messenger_reachable`` false, ``clear`` blanks
    the PSID attribute (so a segment on "``messenger_id`` is not blank" leaves the user out)."""
    attributes: dict[str, Any]
    if mode == "flag":
        attributes = {"messenger_reachable": False}
    elif mode == "clear":
        attributes = {psid_attribute: None}
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {"type": "attribute", "external_id": external_id, "attributes": attributes}


def outcome_event_item(
    external_id: str,
    status: str,
    delivery_id: str,
    reason: str | None,
    *,
    at: float | None = None,
    attribution: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A ``messenger_delivery`` custom event: the final status of one delivery (``at``: epoch s),
    with its campaign fields (campaign_id, canvas_id, canvas_step_id, variation_id, send_id: those
    the webhook gave), so Braze can report and segment on them."""
    properties: dict[str, Any] = {"status": status, "delivery_id": delivery_id, **(attribution or {})}
    if reason is not None:
        properties["reason"] = reason
    return {
        "type": "event",
        "external_id": external_id,
        "name": OUTCOME_EVENT,
        "time": event_time(time.time() if at is None else at),
        "properties": properties,
    }


def receipt_event_item(
    external_id: str, name: str, delivery_id: str, at: float, attribution: Mapping[str, str]
) -> dict[str, Any]:
    """A ``messenger_delivered`` or ``messenger_read`` custom event (``at``: the receipt's time)."""
    return {
        "type": "event",
        "external_id": external_id,
        "name": name,
        "time": event_time(at),
        "properties": {"delivery_id": delivery_id, **attribution},
    }


class InvalidItemError(ValueError):
    """An outbox item that is not one of the two documented shapes."""


def check_item(item: object) -> dict[str, Any]:
    """The item if it is one of the two documented shapes, else InvalidItemError."""
    if not isinstance(item, dict):
        raise InvalidItemError("an outbox item must be an object")
    external_id = item.get("external_id")
    if not isinstance(external_id, str) or not external_id:
        raise InvalidItemError("an outbox item needs a non-empty external_id")
    kind = item.get("type")
    if kind == "attribute":
        attributes = item.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            raise InvalidItemError("an attribute item needs a non-empty attributes object")
        return item
    if kind == "event":
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidItemError("an event item needs a name")
        if not isinstance(item.get("time"), str) or not item["time"]:
            raise InvalidItemError("an event item needs an ISO 8601 time")
        if not isinstance(item.get("properties", {}), dict):
            raise InvalidItemError("event properties must be an object")
        return item
    raise InvalidItemError("an outbox item's type is 'attribute' or 'event'")


def build_request(items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(attributes, events)`` for one request: attribute items merged per external_id (in order of
    first appearance, later values win), one event object per event item."""
    merged: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for item in items:
        external_id = item["external_id"]
        if item["type"] == "attribute":
            target = merged.setdefault(external_id, {})
            target.update(item["attributes"])
            target["external_id"] = external_id
        else:
            event: dict[str, Any] = {"external_id": external_id, "name": item["name"], "time": item["time"]}
            if item.get("properties"):
                event["properties"] = item["properties"]
            events.append(event)
    return list(merged.values()), events

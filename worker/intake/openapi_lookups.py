"""The admin look-up routes' part of the OpenAPI document (:mod:`worker.intake.routes.lookups`)."""

from __future__ import annotations

from typing import Any


def lookup_paths(param: Any, json: Any, error: Any, unauthorized: Any, unavailable: Any) -> dict[str, Any]:
    """The paths, built with :mod:`worker.intake.openapi`'s helpers (passed in: no import cycle)."""
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    story = {
        "type": "object",
        "description": "the delivery's view (GET /v1/deliveries/{id}) with recipient, fallbacks, "
        "routes_tried, failures and history: [{at, status, reason?, code?, subcode?, route?, attempt?}]",
        "properties": {"history": {"type": "array", "items": {"type": "object"}}},
    }
    state = {
        "type": "object",
        "properties": {
            "window": {"type": "string", "enum": ["open", "closed", "unknown"]},
            "window_until": {"type": "number", "nullable": True},
            "graph_said_closed_at": {"type": "number", "nullable": True},
            "suppressed": {"type": "object", "nullable": True},
            "tagged_sends_suppressed": {"type": "boolean"},
            "braze_external_id": {"type": "string", "nullable": True},
            "parked_count": {"type": "integer"},
            "parked_deliveries": {"type": "array", "items": {"type": "object"}},
        },
    }
    return {
        "/v1/deliveries/{delivery_id}/history": {
            "get": {
                "operationId": "delivery_history",
                "summary": "A delivery's whole story: attempts, errors, routes, sent, delivered, read (admin)",
                "security": auth,
                "parameters": [param("delivery_id", "path", {"type": "string"})],
                "responses": {
                    "200": json("the delivery and its history", story),
                    "401": unauthorized(),
                    "403": error("an intake token", "forbidden"),
                    "404": error("no such delivery", "not_found"),
                    "503": unavailable(),
                },
            }
        },
        "/v1/pages/{page_id}/recipients/{psid}": {
            "get": {
                "operationId": "recipient_state",
                "summary": "A recipient on a page: window, suppression, Braze link, parked messages (admin)",
                "security": auth,
                "parameters": [
                    param("page_id", "path", {"type": "string"}),
                    param("psid", "path", {"type": "string"}),
                ],
                "responses": {
                    "200": json("what the service knows of the recipient", state),
                    "401": unauthorized(),
                    "403": error("an intake token", "forbidden"),
                    "503": unavailable(),
                },
            }
        },
    }

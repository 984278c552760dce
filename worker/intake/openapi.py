"""The intake's OpenAPI 3.0 document, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any


def openapi_document() -> dict[str, Any]:
    err = {"$ref": "#/components/schemas/Error"}
    send_responses = {
        "202": {
            "description": "queued",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "200": {"description": "repeated Idempotency-Key: the earlier delivery_id, nothing enqueued"},
        **{
            code: {"description": desc, "content": {"application/json": {"schema": err}}}
            for code, desc in {
                "400": "invalid JSON",
                "401": "missing or wrong bearer token",
                "413": "body over 64 KiB",
                "415": "not application/json",
                "422": "schema error",
                "503": "Redis unavailable (Retry-After)",
            }.items()
        },
    }
    send_op = {
        "summary": "Queue one Send API message (the body Braze's Messenger webhook template posts)",
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
            },
            {"name": "X-Fallback-Tags", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "page_id", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SendBody"}}},
        },
        "responses": send_responses,
    }
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    page_param = {"name": "page_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "braze-messenger-worker intake", "version": "0.1.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Accepted": {
                    "type": "object",
                    "properties": {"delivery_id": {"type": "string"}, "status": {"type": "string"}},
                },
                "SendBody": {
                    "type": "object",
                    "required": ["recipient"],
                    "properties": {
                        "recipient": {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": {"type": "string", "minLength": 1}},
                        },
                        "messaging_type": {"type": "string", "enum": ["RESPONSE", "UPDATE", "MESSAGE_TAG"]},
                        "tag": {"type": "string"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string", "maxLength": 1999},
                                "attachment": {"type": "object"},
                                "quick_replies": {"type": "array", "maxItems": 13},
                            },
                        },
                        "sender_action": {"type": "string", "enum": ["typing_on", "typing_off", "mark_seen"]},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "properties": {
                        "delivery_id": {"type": "string"},
                        "status": {
                            "type": "string",
                            "enum": ["queued", "retrying", "sent", "failed", "expired", "dead"],
                        },
                        "attempts": {"type": "integer"},
                        "page_id": {"type": "string"},
                        "created_at": {"type": "number"},
                        "updated_at": {"type": "number"},
                        "message_id": {"type": "string"},
                        "error": {"type": "object"},
                    },
                },
            },
        },
        "paths": {
            "/me/messages": {"post": {**send_op, "operationId": "send_me"}},
            "/{version}/me/messages": {
                "post": {
                    **send_op,
                    "operationId": "send_version_me",
                    "parameters": [version_param, *send_op["parameters"]],
                }
            },
            "/{version}/{page_id}/messages": {
                "post": {
                    **send_op,
                    "operationId": "send_page",
                    "parameters": [version_param, page_param, *send_op["parameters"]],
                }
            },
            "/v1/deliveries/{delivery_id}": {
                "get": {
                    "operationId": "get_delivery",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "the delivery",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Delivery"}}
                            },
                        },
                        "401": {"description": "unauthorized"},
                        "404": {"description": "unknown delivery"},
                    },
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Redis reachable"},
                        "503": {"description": "Redis down"},
                    },
                }
            },
        },
    }

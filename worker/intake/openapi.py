"""The intake's OpenAPI 3.0 document, served at ``/openapi.json``.

Every route the app serves is here, with its request body, its answers and each error ``code``
it can refuse with (``tests/unit/test_openapi.py`` checks the routes against the app and the
delivery view against :func:`worker.store.records.public_view`; ``tests/reliability/
test_bad_input.py`` fuzzes a live intake from this document). Delivery statuses come from
:class:`worker.states.State`, the only place they are spelled.
"""

from __future__ import annotations

from typing import Any

from worker.intake import openapi_campaigns as doc
from worker.intake.openapi_health import health_schemas
from worker.intake.openapi_lookups import lookup_paths
from worker.intake.routes.admin import ACTIONS, MAX_LIMIT
from worker.intake.routes.send import MAX_EXTERNAL_ID
from worker.intake.routes.webhook import WEBHOOK_MAX_BYTES
from worker.messenger.validation import (
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_IDEMPOTENCY_KEY,
    MAX_QUICK_REPLIES,
    MAX_TEXT,
    SENDER_ACTIONS,
)
from worker.states import State

#: The codes of a 422 from the send route (:mod:`worker.messenger.validation` and the headers).
SEND_422_CODES = (
    "invalid_body",
    "unknown_field",
    "token_in_body",
    "invalid_field",
    "too_deep",
    "missing_recipient",
    "invalid_recipient",
    "invalid_message",
    "text_too_long",
    "too_many_quick_replies",
    "invalid_sender_action",
    "invalid_payload",
    "text_and_attachment",
    "invalid_attachment",
    "invalid_quick_reply",
    "invalid_notification_type",
    "invalid_utility_template",
    "invalid_utility_parameters",
    "unknown_utility_template",
    "utility_template_not_approved",
    "utility_template_parameters",
    "invalid_messaging_type",
    "missing_tag",
    "invalid_tag",
    "deprecated_tag",
    "no_page_token",
    "invalid_idempotency_key",
    "invalid_external_id",
    "invalid_request_id",
    "invalid_attribution",
)

#: The codes of a 503 from the send route (each with Retry-After; Braze retries).
SEND_503_CODES = ("unavailable", "unavailable_maybe_stored", "overloaded", "redis_full")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *codes: str, retry_after: bool = False) -> dict[str, Any]:
    """A refusal: the Error shape, with the codes this answer can carry."""
    schema = {
        "allOf": [
            _ref("Error"),
            {"properties": {"error": {"properties": {"code": {"type": "string", "enum": list(codes)}}}}},
        ]
    }
    response = _json(description, schema)
    if retry_after:
        response["headers"] = {
            "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    return response


def _unauthorized() -> dict[str, Any]:
    return _error("missing or wrong bearer token (WWW-Authenticate: Bearer)", "unauthorized")


def _forbidden(*codes: str) -> dict[str, Any]:
    return _error(
        "a token of another role (README: Security), or a page this token may not use", "forbidden", *codes
    )


def _unavailable() -> dict[str, Any]:
    return _error("Redis did not answer or refused; retry later", "unavailable", retry_after=True)


def _param(
    name: str, where: str, schema: dict[str, Any], description: str = "", **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        out["description"] = description
    return {**out, **extra}


def _send_operation(operation_id: str, path_params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": "Queue one Send API message (the body Braze's Messenger webhook template posts)",
        "description": (
            "Answered 202 once the message is in Redis. Any other answer means nothing was "
            "enqueued; 5xx answers carry Retry-After (Braze retries them)."
        ),
        "security": [{"bearer": []}],
        "parameters": [
            *path_params,
            _param(
                "Idempotency-Key",
                "header",
                {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
                "a repeat within IDEMPOTENCY_TTL answers 200 with the first delivery_id",
            ),
            _param(
                "X-Fallback-Tags",
                "header",
                {"type": "string"},
                "comma-separated message tags to try outside the 24-hour window",
            ),
            _param(
                "X-Utility-Template",
                "header",
                {"type": "string"},
                "a utility template to send outside the 24-hour window: <name>; lang=<code> (docs/reach.md)",
            ),
            _param(
                "X-Utility-Parameters",
                "header",
                {"type": "string"},
                "the template's body parameters: a JSON array (in order) or object (named), UTF-8",
            ),
            _param("X-Request-Id", "header", {"type": "string"}, "logged with the delivery"),
            _param(
                "X-Braze-External-Id",
                "header",
                {"type": "string", "maxLength": MAX_EXTERNAL_ID},
                "the Braze user, for feedback to Braze",
            ),
            *doc.attribution_params(),
            _param("access_token", "query", {"type": "string"}, "a page token, as in the Send API URL"),
            _param("page_id", "query", {"type": "string"}, "the sending page, when the path has none"),
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SendBody")}}},
        "responses": {
            "202": _json("accepted: stored in Redis and queued for delivery", _ref("Accepted")),
            "200": _json(
                "duplicate (repeated Idempotency-Key) or cancelled (campaign stopped)", _ref("Accepted")
            ),
            "400": _error("the body is not JSON", "invalid_json"),
            "401": _unauthorized(),
            "403": _forbidden("page_not_allowed", "unknown_page_token", "page_token_mismatch"),
            "413": _error(f"the body is over {MAX_BODY_BYTES} bytes", "body_too_large"),
            "415": _error("the body is not application/json", "unsupported_media_type"),
            "422": _error("the message cannot be sent as it is", *SEND_422_CODES),
            "503": _error(
                "not stored, retry later: unavailable (Redis did not answer within "
                "INTAKE_DEADLINE_SECONDS or refused; nothing stored), unavailable_maybe_stored (the "
                "commit was sent and not confirmed: a retry with the same Idempotency-Key is answered "
                "200 duplicate if it was stored), overloaded (INTAKE_MAX_PENDING requests waiting), "
                "redis_full (at or above REDIS_MEMORY_HEADROOM of maxmemory)",
                *SEND_503_CODES,
                retry_after=True,
            ),
        },
    }


def _send_paths() -> dict[str, Any]:
    version = _param("version", "path", {"type": "string"}, "the Graph API version, e.g. v25.0")
    page = _param("page_id", "path", {"type": "string"})
    return {
        "/me/messages": {"post": _send_operation("send_me", [])},
        "/{version}/me/messages": {"post": _send_operation("send_version_me", [version])},
        "/{version}/{page_id}/messages": {"post": _send_operation("send_page", [version, page])},
    }


def _delivery_paths() -> dict[str, Any]:
    return {
        "/v1/deliveries/{delivery_id}": {
            "get": {
                "operationId": "get_delivery",
                "summary": "A delivery's status (never its body, token or PSID)",
                "security": [{"bearer": []}],
                "parameters": [_param("delivery_id", "path", {"type": "string"})],
                "responses": {
                    "200": _json("the delivery", _ref("Delivery")),
                    "401": _unauthorized(),
                    "404": _error("no such delivery (or its record has expired)", "not_found"),
                    "503": _unavailable(),
                },
            }
        }
    }


def _dead_letter_filter_params() -> list[dict[str, Any]]:
    return [
        _param("page_id", "query", {"type": "string"}),
        _param("code", "query", {"type": "integer"}, "the Graph error code of the last attempt"),
        _param("older_than", "query", {"type": "number"}, "seconds since it died"),
        _param("limit", "query", {"type": "integer"}, f"default 1000, at most {MAX_LIMIT}"),
    ]


def _dead_letter_paths() -> dict[str, Any]:
    auth: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "/v1/dead-letters": {
            "get": {
                "operationId": "list_dead_letters",
                "summary": "Dead letters matching the filter, newest first",
                "security": auth,
                "parameters": _dead_letter_filter_params(),
                "responses": {
                    "200": _json("the dead letters", _ref("DeadLetterList")),
                    "401": _unauthorized(),
                    "422": _error("a filter value is not a finite number", "invalid_filter"),
                    "503": _unavailable(),
                },
            }
        },
        "/v1/dead-letters/{action}": {
            "post": {
                "operationId": "act_on_dead_letters",
                "summary": "Replay or purge dead letters: the given ids, or every match of the filter",
                "description": (
                    "Replay re-queues a delivery that is still dead under its delivery_id; purge "
                    "deletes it. Without delivery_ids every dead letter matching the filter is "
                    'acted on, up to limit; with no filter either, "all": true must say so (an '
                    "empty body, or an unknown key, is refused). dry_run: true answers what "
                    "would be acted on and does nothing."
                ),
                "security": auth,
                "parameters": [_param("action", "path", {"type": "string", "enum": list(ACTIONS)})],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("DeadLetterSelection")}},
                },
                "responses": {
                    "200": _json("done", {"oneOf": [_ref("Replayed"), _ref("Purged"), _ref("DryRun")]}),
                    "400": _error("the body is not JSON", "invalid_json"),
                    "401": _unauthorized(),
                    "404": _error("no such action", "not_found"),
                    "413": _error(f"the body is over {MAX_BODY_BYTES} bytes", "body_too_large"),
                    "422": _error("the body or a filter value is invalid", "invalid_body", "invalid_filter"),
                    "503": _unavailable(),
                },
            }
        },
    }


def _webhook_paths() -> dict[str, Any]:
    hub = {"type": "string"}
    return {
        "/messenger/webhook": {
            "get": {
                "operationId": "messenger_webhook_verify",
                "summary": "Messenger's subscription handshake: echoes hub.challenge",
                "parameters": [
                    _param("hub.mode", "query", {"type": "string", "enum": ["subscribe"]}, required=True),
                    _param("hub.verify_token", "query", hub, "MESSENGER_VERIFY_TOKEN", required=True),
                    _param("hub.challenge", "query", hub, required=True),
                ],
                "responses": {
                    "200": {
                        "description": "hub.challenge, echoed",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": _error(
                        "wrong verify token or mode, or MESSENGER_VERIFY_TOKEN is not set", "forbidden"
                    ),
                },
            },
            "post": {
                "operationId": "messenger_webhook_events",
                "summary": "Messenger events, signed by Meta with APP_SECRET; queued for the workers",
                "parameters": [
                    _param(
                        "X-Hub-Signature-256",
                        "header",
                        {"type": "string"},
                        "sha256=<HMAC-SHA256 of the raw body with APP_SECRET, hex>",
                        required=True,
                    )
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("MessengerWebhook")}},
                },
                "responses": {
                    "200": _json("events queued (events: how many)", _ref("WebhookAck")),
                    "400": _error("the body is not JSON", "invalid_json"),
                    "401": _error("no X-Hub-Signature-256", "missing_signature"),
                    "403": _error(
                        "X-Hub-Signature-256 is malformed (refused before the body is read) or "
                        "does not match the body",
                        "bad_signature",
                    ),
                    "408": _error("the body took longer than INTAKE_BODY_SECONDS to arrive", "body_timeout"),
                    "413": _error(f"the body is over {WEBHOOK_MAX_BYTES} bytes", "body_too_large"),
                    "503": _error(
                        "APP_SECRET is not set (not_configured), or Redis is unavailable "
                        "(unavailable, with Retry-After)",
                        "not_configured",
                        "unavailable",
                    ),
                },
            },
        }
    }


def _operations_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers (Redis is not checked)",
                "responses": {"200": _json("alive", _ref("Health"))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: Redis answers (with shards: any). Stays 200 while Redis is full (accepting: false)",
                "responses": {"200": _json("Redis answers", _ref("Ready")), "503": _unavailable()},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json("the OpenAPI document", {"type": "object"})},
            }
        },
    }


def _send_body_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": (
            "Exactly one of message or sender_action. A tag needs messaging_type MESSAGE_TAG. Only "
            "these fields (422 unknown_field; appsecret_proof: 422 token_in_body; an access_token "
            "selects the page as one in the URL does and is removed), "
            f"nested at most {MAX_DEPTH} levels (422 too_deep). Recipients, refused bodies and "
            "utility sends: docs/reach.md."
        ),
        "required": ["recipient"],
        "additionalProperties": False,
        "properties": {
            "recipient": {
                "type": "object",
                "description": "exactly one of these keys (name only with phone_number)",
                "minProperties": 1,
                "properties": {
                    "id": {"type": "string", "minLength": 1, "maxLength": 128},
                    "phone_number": {"type": "string", "maxLength": 32},
                    "name": {"type": "object"},
                    "user_ref": {"type": "string", "maxLength": 512},
                    "notification_messages_token": {"type": "string", "maxLength": 1024},
                    "one_time_notif_token": {"type": "string", "maxLength": 1024},
                    "comment_id": {"type": "string", "maxLength": 128},
                    "post_id": {"type": "string", "maxLength": 128},
                },
            },
            "access_token": {"type": "string", "description": "selects the page; never forwarded"},
            "messaging_type": {
                "type": "string",
                "enum": ["RESPONSE", "UPDATE", "MESSAGE_TAG", "UTILITY"],
            },
            "tag": {"type": "string"},
            "message": {
                "type": "object",
                "description": "one of text, attachment or sticker_id; a UTILITY send: template only",
                "properties": {
                    "text": {"type": "string", "maxLength": MAX_TEXT - 1},
                    "attachment": {"type": "object"},
                    "sticker_id": {"type": "integer"},
                    "quick_replies": {"type": "array", "maxItems": MAX_QUICK_REPLIES},
                    "metadata": {"type": "string", "maxLength": 999},
                    "template": {
                        "type": "object",
                        "description": "a utility template (messaging_type UTILITY)",
                    },
                },
            },
            "sender_action": {"type": "string", "enum": sorted(SENDER_ACTIONS)},
            "payload": {
                "type": "object",
                "description": "react: message_id and reaction; unreact: message_id",
                "properties": {"message_id": {"type": "string"}, "reaction": {"type": "string"}},
            },
            "notification_type": {"type": "string", "enum": ["REGULAR", "SILENT_PUSH", "NO_PUSH"]},
            "persona_id": {"type": "string", "description": "a persona's id (a number is accepted too)"},
            "reply_to": {"type": "object", "properties": {"mid": {"type": "string"}}},
        },
    }


def _message_schemas() -> dict[str, Any]:
    return {
        "SendBody": _send_body_schema(),
        "Accepted": {
            "type": "object",
            "required": ["delivery_id", "status"],
            "properties": {
                "delivery_id": {"type": "string"},
                "status": {
                    "type": "string",
                    "enum": [State.QUEUED.value, "duplicate", State.CANCELLED.value],
                },
            },
        },
        "MessengerWebhook": {
            "type": "object",
            "description": "Meta's webhook payload; entries and events it does not know are ignored",
            "properties": {
                "object": {"type": "string"},
                "entry": {"type": "array", "items": {"type": "object"}},
            },
        },
        "WebhookAck": {
            "type": "object",
            "required": ["status", "events"],
            "properties": {
                "status": {"type": "string", "enum": ["EVENT_RECEIVED"]},
                "events": {"type": "integer"},
            },
        },
    }


def _delivery_schema() -> dict[str, Any]:
    def time(description: str = "Unix time, seconds") -> dict[str, Any]:
        return {"type": "number", "description": description}

    nullable = {"nullable": True}
    return {
        "type": "object",
        "required": ["delivery_id", "status", "attempts", "page_id", "created_at", "updated_at"],
        "properties": {
            "delivery_id": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in State]},
            "attempts": {"type": "integer"},
            "page_id": {"type": "string", "nullable": True},
            "created_at": time(),
            "updated_at": time(),
            "message_id": {"type": "string", "description": "Graph's message_id, once sent"},
            "sent_at": time(),
            "delivered_tag": {"type": "string", "description": "the message tag it was sent with"},
            "delivered_via": {
                "type": "string",
                "description": "how it was sent: window, tag:<TAG>, utility:<name>, or the recipient "
                "kind (phone_number, user_ref, one_time_notif_token, ...)",
            },
            "next_attempt_at": time("when a retrying or scheduled delivery is due"),
            "first_created_at": time("first acceptance, for a replayed dead letter"),
            "replays": {"type": "integer", "description": "how often it was replayed"},
            **doc.delivery_campaign_properties(),
            "error": {
                "type": "object",
                "description": "why the last attempt did not send",
                "properties": {
                    "reason": {"type": "string", **nullable},
                    "code": {"type": "integer", **nullable},
                    "subcode": {"type": "integer", **nullable},
                    "message": {"type": "string", **nullable},
                    "fbtrace_id": {"type": "string", **nullable},
                },
            },
        },
    }


def _admin_schemas() -> dict[str, Any]:
    return {
        "DeadLetter": {
            "allOf": [
                _ref("Delivery"),
                {"type": "object", "required": ["dead_at"], "properties": {"dead_at": {"type": "number"}}},
            ]
        },
        "DeadLetterList": {
            "type": "object",
            "required": ["dead_letters", "count"],
            "properties": {
                "dead_letters": {"type": "array", "items": _ref("DeadLetter")},
                "count": {"type": "integer"},
                "retention_s": {
                    "type": "integer",
                    "nullable": True,
                    "description": "DEAD_LETTER_RETENTION; null: kept until replayed or purged",
                },
                "unavailable_shards": doc.UNAVAILABLE_SHARDS,
            },
        },
        "DeadLetterSelection": {
            "type": "object",
            "description": 'delivery_ids, a filter (every match) or "all": true; no other key',
            "additionalProperties": False,
            "properties": {
                "delivery_ids": {"type": "array", "items": {"type": "string"}},
                "all": {"type": "boolean", "description": "every dead letter, up to limit"},
                "dry_run": {"type": "boolean", "description": "answer what would be done; do nothing"},
                "page_id": {"type": "string"},
                "code": {"type": "integer"},
                "older_than": {"type": "number"},
                "limit": {"type": "integer", "description": f"default 1000, at most {MAX_LIMIT}"},
            },
        },
        "Replayed": {
            "type": "object",
            "required": ["replayed", "count"],
            "properties": {
                "replayed": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer"},
            },
        },
        "Purged": {"type": "object", "required": ["purged"], "properties": {"purged": {"type": "integer"}}},
        "DryRun": {
            "type": "object",
            "required": ["dry_run", "delivery_ids"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "would_replay": {"type": "integer"},
                "would_purge": {"type": "integer"},
                "delivery_ids": {"type": "array", "items": {"type": "string"}},
            },
        },
    }


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        **_message_schemas(),
        "Delivery": _delivery_schema(),
        **_admin_schemas(),
        **doc.campaign_schemas(),
        **health_schemas(),
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "braze-messenger-worker intake",
            "version": "0.1.0",
            "description": (
                'Every refusal is {"error": {"code", "message"}} with a stable code; an unknown '
                "path is 404 not_found, a wrong method 405 method_not_allowed."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
        },
        "paths": {
            **_send_paths(),
            **_delivery_paths(),
            **_dead_letter_paths(),
            **_webhook_paths(),
            **_operations_paths(),
            **doc.campaign_paths(),
            **lookup_paths(_param, _json, _error, _unauthorized, _unavailable),
        },
    }

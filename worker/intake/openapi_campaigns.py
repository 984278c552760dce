"""The OpenAPI paths and schemas of the campaign routes (:mod:`worker.intake.routes.campaigns`),
merged into the document by :mod:`worker.intake.openapi` (kept apart: that module is long)."""

from __future__ import annotations

from typing import Any

from worker.campaigns import COUNTERS
from worker.intake.routes.campaigns import MAX_LIMIT
from worker.intake.routes.send import ATTRIBUTION_HEADERS, MAX_ATTRIBUTION
from worker.states import State
from worker.store.records import ATTRIBUTION

_AUTH: list[dict[str, list[str]]] = [{"bearer": []}]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, *codes: str) -> dict[str, Any]:
    schema = {
        "allOf": [
            _ref("Error"),
            {"properties": {"error": {"properties": {"code": {"type": "string", "enum": list(codes)}}}}},
        ]
    }
    return _json(description, schema)


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _op(operation_id: str, summary: str, ok: dict[str, Any], *params: str, **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": ok,
        "401": _error("missing or wrong bearer token (WWW-Authenticate: Bearer)", "unauthorized"),
        "403": _error("a token of another role (admin tokens only)", "forbidden"),
        "404": _error("no such campaign, delivery or page id", "not_found"),
        "503": _error("Redis did not answer or refused; retry later", "unavailable"),
    }
    responses.update(extra.pop("responses", {}))
    return {
        "operationId": operation_id,
        "summary": summary,
        "security": _AUTH,
        "parameters": [_path(p) for p in params] + extra.pop("parameters", []),
        "responses": responses,
        **extra,
    }


_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer"},
    "description": f"default 100, at most {MAX_LIMIT}",
}
_PAUSE_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "seconds": {
                        "type": "number",
                        "description": "above 0, at most 31622400 (366 days); none: until resumed",
                    }
                },
            }
        }
    },
}


def attribution_params() -> list[dict[str, Any]]:
    """The send routes' X-Braze-* attribution headers."""
    return [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": MAX_ATTRIBUTION},
            "description": "attribution (printable ASCII, no spaces): stored, logged, counted per campaign",
        }
        for name in ATTRIBUTION_HEADERS
    ]


def delivery_campaign_properties() -> dict[str, Any]:
    """The Delivery view's attribution and receipt fields."""
    props: dict[str, Any] = {
        name: {"type": "string", "description": "given at the intake (X-Braze-* attribution)"}
        for name in ATTRIBUTION
    }
    props["delivered_at"] = {"type": "number", "description": "Messenger's delivery receipt (Unix s)"}
    props["read_at"] = {"type": "number", "description": "Messenger's read receipt (Unix s)"}
    return props


def campaign_paths() -> dict[str, Any]:
    limit, pause_body = _LIMIT, _PAUSE_BODY
    return {
        "/v1/campaigns": {
            "get": _op(
                "list_campaigns",
                "Campaigns by last activity (within CAMPAIGN_RETENTION), with their counters",
                _json("the campaigns", _ref("CampaignList")),
                parameters=[limit],
                responses={"422": _error("limit is not an integer", "invalid_filter")},
            )
        },
        "/v1/campaigns/{campaign_id}": {
            "get": _op(
                "get_campaign",
                "A campaign's counters",
                _json("the campaign", _ref("Campaign")),
                "campaign_id",
            )
        },
        "/v1/campaigns/{campaign_id}/stop": {
            "post": _op(
                "stop_campaign",
                "Stop a campaign: its open deliveries end cancelled, new requests are answered cancelled",
                _json("stopped", _ref("CampaignStopped")),
                "campaign_id",
            )
        },
        "/v1/campaigns/{campaign_id}/resume": {
            "post": _op(
                "resume_campaign",
                "Accept the campaign's new requests again",
                _json("resumed (false: it was not stopped)", _ref("CampaignResumed")),
                "campaign_id",
            )
        },
        "/v1/deliveries/{delivery_id}/cancel": {
            "post": _op(
                "cancel_delivery",
                "Cancel an open delivery (false: final already, or held by a worker: marked)",
                _json("the delivery's status now", _ref("DeliveryCancelled")),
                "delivery_id",
            )
        },
        "/v1/pages/{page_id}/pause": {
            "post": _op(
                "pause_page",
                "Pause a page: its deliveries wait unsent (no attempt burnt), for seconds or until resumed",
                _json("paused", _ref("PagePaused")),
                "page_id",
                requestBody=pause_body,
                responses={
                    "400": _error("the body is not JSON", "invalid_json"),
                    "422": _error("seconds is not a number above 0 and at most 366 days", "invalid_body"),
                },
            )
        },
        "/v1/pages/{page_id}/resume": {
            "post": _op(
                "resume_page",
                "Lift a page's pause; its waiting deliveries are due now",
                _json("resumed", _ref("PageResumed")),
                "page_id",
            )
        },
    }


#: With REDIS_SHARDS, the shards a listing leaves out because they did not answer (worker/fleet.py).
UNAVAILABLE_SHARDS: dict[str, Any] = {
    "type": "array",
    "items": {"type": "integer"},
    "description": "only when some shard did not answer (REDIS_SHARDS): the figures leave those shards out",
}


def _obj(**props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


def campaign_schemas() -> dict[str, Any]:
    integer, number, string, boolean = ({"type": t} for t in ("integer", "number", "string", "boolean"))
    counters = {name: integer for name in COUNTERS}
    campaign = _obj(campaign_id=string, **counters, open=integer, stopped=boolean)
    campaign["properties"].update(
        failed_reasons={"type": "object", "additionalProperties": integer},
        replayed=integer,
        sent_after_stop={**integer, "description": "sent after the stop: their call had started"},
        stopped_at=number,
        stopped_by=string,
        first_at={**number, "nullable": True},
        last_at={**number, "nullable": True},
        unavailable_shards=UNAVAILABLE_SHARDS,
    )
    campaign_list = _obj(campaigns={"type": "array", "items": _ref("Campaign")}, count=integer)
    campaign_list["properties"]["unavailable_shards"] = UNAVAILABLE_SHARDS
    return {
        "Campaign": campaign,
        "CampaignList": campaign_list,
        "CampaignStopped": _obj(campaign_id=string, stopped=boolean, cancelled=integer, known=boolean),
        "CampaignResumed": _obj(campaign_id=string, resumed=boolean),
        "DeliveryCancelled": _obj(
            delivery_id=string, cancelled=boolean, status={"type": "string", "enum": [s.value for s in State]}
        ),
        "PagePaused": _obj(page_id=string, paused_until=number, configured=boolean),
        "PageResumed": _obj(page_id=string, resumed=boolean, released=integer, configured=boolean),
    }

"""Campaign control over HTTP (admin tokens only): the service functions of
:mod:`worker.campaigns` behind the admin role.

* ``GET /v1/campaigns`` (``limit``, default 100, at most 1000): campaigns by last activity;
* ``GET /v1/campaigns/{campaign_id}``: its counters object (404 ``not_found`` when unknown);
* ``POST /v1/campaigns/{campaign_id}/stop`` and ``/resume``;
* ``POST /v1/deliveries/{delivery_id}/cancel``;
* ``POST /v1/pages/{page_id}/pause`` (optional body ``{"seconds": n}``, at most
  :data:`MAX_PAUSE_SECONDS`; none: until resumed) and ``/resume``.

A campaign id is what Braze sent in ``X-Braze-Campaign-Id``, which may hold '/': the campaign
routes take it whole, percent-encoded (``team%2Fa``) or not (``team/a``).
"""

from __future__ import annotations

import math

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.fleet import ShardUnavailable
from worker.intake import state
from worker.intake.auth import Role, authed, caller_of
from worker.intake.http import Handler, JSONResponse, across, counted, read_body
from worker.messenger.errors import InputError
from worker.states import State

_CANCELLED = State.CANCELLED.value  # the answers' count (or flag) of cancelled deliveries
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 128
#: The longest pause asked for (366 days): a longer one would overflow Redis's EXPIRE and leave
#: the page half paused (the same bound for ``messenger-worker pages pause --seconds``).
MAX_PAUSE_SECONDS = 31_622_400


def _id(request: Request, name: str) -> str:
    value: str = request.path_params[name]
    if not value or len(value) > MAX_ID:
        raise InputError(404, "not_found", f"no such {name.removesuffix('_id')}")
    return value


async def campaign_list(request: Request) -> Response:
    intake = state.of(request)
    raw = request.query_params.get("limit") or str(DEFAULT_LIMIT)
    try:
        limit = int(raw)
    except ValueError:
        raise InputError(422, "invalid_filter", "limit must be an integer") from None
    limit = max(1, min(limit, MAX_LIMIT))
    listed = await intake.fleet.list_campaigns(limit=limit)
    return JSONResponse(across({"campaigns": listed.value, "count": len(listed.value)}, listed))


async def campaign_get(request: Request) -> Response:
    intake = state.of(request)
    found = await intake.fleet.campaign(_id(request, "campaign_id"))
    if found.value is None and found.unavailable:  # it may be on the shard that did not answer
        raise ShardUnavailable(f"shard {found.unavailable[0]} did not answer")
    if found.value is None:
        raise InputError(404, "not_found", "no such campaign (never seen, or older than CAMPAIGN_RETENTION)")
    return JSONResponse(across(dict(found.value), found))


async def campaign_stop(request: Request) -> Response:
    intake = state.of(request)
    cid = _id(request, "campaign_id")
    by = f"api:{caller_of(request).id[:12]}"
    # known: false names a likely typo (no delivery of it within CAMPAIGN_RETENTION); still
    # stopped, as a campaign may be before its first send
    known = (await intake.fleet.campaign(cid)).value is not None
    cancelled = await intake.fleet.stop_campaign(cid, by=by)
    return JSONResponse({"campaign_id": cid, "stopped": True, _CANCELLED: cancelled, "known": known})


async def campaign_resume(request: Request) -> Response:
    intake = state.of(request)
    cid = _id(request, "campaign_id")
    resumed = await intake.fleet.resume_campaign(cid)
    return JSONResponse({"campaign_id": cid, "resumed": resumed})


async def delivery_cancel(request: Request) -> Response:
    intake = state.of(request)
    delivery_id = _id(request, "delivery_id")
    cancelled = await intake.fleet.cancel_delivery(delivery_id)
    rec = await intake.fleet.record(delivery_id)
    if not rec:
        raise InputError(404, "not_found", "no such delivery")
    return JSONResponse({"delivery_id": delivery_id, _CANCELLED: cancelled, "status": rec.get("status", "")})


def pause_seconds_ok(value: object) -> bool:
    """Whether ``value`` is a pause's length as the API and the CLI take it: a number of seconds
    above 0 and at most :data:`MAX_PAUSE_SECONDS` (not a bool, NaN, an infinity, a string)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and 0 < value <= MAX_PAUSE_SECONDS
    )


async def page_pause(request: Request) -> Response:
    intake = state.of(request)
    page_id = _id(request, "page_id")
    raw = await read_body(request)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InputError(400, "invalid_json", "body is not valid JSON") from None
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if not isinstance(body, dict) or (seconds is not None and not pause_seconds_ok(seconds)):
        raise InputError(
            422,
            "invalid_body",
            f'body is {{"seconds": a number above 0, at most {MAX_PAUSE_SECONDS} (366 days)}} '
            "or empty (until resumed)",
        )
    until = await intake.fleet.pause_page(page_id, seconds)
    # configured: false names a likely typo (no page of PAGE_ACCESS_TOKENS; nothing sends as it)
    configured = intake.pages.get(page_id) is not None
    return JSONResponse({"page_id": page_id, "paused_until": until, "configured": configured})


async def page_resume(request: Request) -> Response:
    intake = state.of(request)
    page_id = _id(request, "page_id")
    released = await intake.fleet.resume_page(page_id)
    configured = intake.pages.get(page_id) is not None
    return JSONResponse({"page_id": page_id, "resumed": True, "released": released, "configured": configured})


def _campaign_route(suffix: str, handler: Handler, method: str) -> Route:
    """``/v1/campaigns/{campaign_id}<suffix>`` whose id may hold '/' (Starlette's ``path``
    convertor: the fixed suffix ends the match). Its ``path`` stays the documented one
    (:mod:`worker.intake.openapi`): the convertor is how it matches, not a different route."""
    route = Route(f"/v1/campaigns/{{campaign_id:path}}{suffix}", handler, methods=[method])
    route.path = route.path_format
    return route


def routes(settings: Settings) -> list[Route]:
    def admin(name: str, handler: Handler) -> Handler:
        return counted(name, authed(settings, handler, Role.ADMIN))

    return [
        Route("/v1/campaigns", admin("campaigns", campaign_list), methods=["GET"]),
        # the suffixed routes first: the bare one's id would take '/stop' in too
        _campaign_route("/stop", admin("campaigns", campaign_stop), "POST"),
        _campaign_route("/resume", admin("campaigns", campaign_resume), "POST"),
        _campaign_route("", admin("campaigns", campaign_get), "GET"),
        Route(
            "/v1/deliveries/{delivery_id}/cancel", admin("delivery_cancel", delivery_cancel), methods=["POST"]
        ),
        Route("/v1/pages/{page_id}/pause", admin("pages", page_pause), methods=["POST"]),
        Route("/v1/pages/{page_id}/resume", admin("pages", page_resume), methods=["POST"]),
    ]

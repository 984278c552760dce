"""Dead letters over HTTP: ``GET /v1/dead-letters`` lists them, ``POST /v1/dead-letters/replay``
and ``/purge`` act on them (:mod:`worker.store.deadletters` does the work).

The filter is the same in the query (list) and in the JSON body (replay, purge): ``page_id``,
``code`` (the Graph error code), ``older_than`` (seconds since death) and ``limit`` (default 1000,
at most 10,000). A body with ``delivery_ids`` acts on those ids (those still dead and matching the
filter); without it, on every match of its filter. A body must say what it selects: ids, a filter
(``page_id``, ``code``, ``older_than``) or ``"all": true`` for every dead letter up to ``limit``;
an empty body, or one naming a key this route does not know (a misspelt ``page_idd`` read as no
filter at all purged every letter), is 422 ``invalid_body``, and nothing is done. ``"dry_run":
true`` answers what would be acted on and does nothing. A filter value that is not a finite
number, or an empty ``page_id``, is 422 ``invalid_filter``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.intake import state
from worker.intake.auth import Role, authed
from worker.intake.http import JSONResponse, across, counted, read_body
from worker.messenger.errors import InputError
from worker.store import deadletters

ACTIONS = ("replay", "purge")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


def _number(params: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = params.get(name)
    if value in (None, ""):
        return None
    if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
        raise InputError(
            422, "invalid_filter", f"{name} must be {'an integer' if kind is int else 'a number'}"
        )
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(422, "invalid_filter", f"{name} must be a number") from None
    # "nan" or "inf" would reach Redis as a score range
    if isinstance(number, float) and not math.isfinite(number):
        raise InputError(422, "invalid_filter", f"{name} must be a finite number")
    return number


def dead_filter(params: Mapping[str, Any]) -> deadletters.Filter:
    """The dead-letter filter of a query or a body. A page id is a string (a number from JSON is
    taken as its digits); anything else, or an empty one given, is refused rather than read as
    "every page". ``limit`` is at least 1 (absent: DEFAULT_LIMIT), at most MAX_LIMIT (more is
    taken as MAX_LIMIT)."""
    page = params.get("page_id")
    if isinstance(page, int) and not isinstance(page, bool):
        page = str(page)
    if page is not None and (not isinstance(page, str) or not page.strip()):
        raise InputError(422, "invalid_filter", "page_id must be a page id")
    limit = _number(params, "limit", int)
    if limit is not None and limit < 1:
        raise InputError(422, "invalid_filter", "limit must be at least 1")
    return deadletters.Filter(
        page_id=page or None,
        error_code=_number(params, "code", int),
        older_than=_number(params, "older_than", float),
        limit=DEFAULT_LIMIT if limit is None else min(limit, MAX_LIMIT),
    )


#: The keys a replay or purge body may have.
SELECTION_KEYS = ("delivery_ids", "page_id", "code", "older_than", "limit", "all", "dry_run")
_FILTERS = ("page_id", "code", "older_than")


def parse_selection(raw: bytes) -> tuple[list[str] | None, deadletters.Filter, bool]:
    """A replay or purge body: (delivery_ids or None for "every match", the filter, dry run)."""
    try:
        params: Any = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise InputError(400, "invalid_json", "body is not valid JSON") from None
    if not isinstance(params, dict):
        raise InputError(422, "invalid_body", "body must be a JSON object")
    unknown = sorted(str(k) for k in params if k not in SELECTION_KEYS)
    if unknown:
        raise InputError(
            422, "invalid_body", f"unknown keys {unknown}: a body takes {', '.join(SELECTION_KEYS)}"
        )
    for flag in ("all", "dry_run"):
        if not isinstance(params.get(flag, False), bool):
            raise InputError(422, "invalid_body", f"{flag} must be true or false")
    ids = params.get("delivery_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise InputError(422, "invalid_body", "delivery_ids must be a list of strings")
    if ids is None and not params.get("all") and all(params.get(f) is None for f in _FILTERS):
        raise InputError(
            422,
            "invalid_body",
            'say what to act on: delivery_ids, a filter (page_id, code, older_than) or "all": true',
        )
    return ids, dead_filter(params), bool(params.get("dry_run"))


async def dead_list(request: Request) -> Response:
    intake = state.of(request)
    flt = dead_filter(request.query_params)
    listed = await intake.fleet.list_dead(flt)
    retention = intake.settings.dead_letter_retention or None  # None: kept until replayed or purged
    return JSONResponse(
        across({"dead_letters": listed.value, "count": len(listed.value), "retention_s": retention}, listed)
    )


async def dead_action(request: Request) -> Response:
    intake = state.of(request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise InputError(404, "not_found", "no such route")
    ids, flt, dry_run = parse_selection(await read_body(request))
    listed = await intake.fleet.select_dead(ids, flt)
    chosen = [item["delivery_id"] for item in listed]
    if dry_run:
        return JSONResponse({"dry_run": True, f"would_{action}": len(chosen), "delivery_ids": chosen})
    if action == "replay":
        done = await intake.fleet.replay(chosen)
        return JSONResponse({"replayed": done, "count": len(done)})
    return JSONResponse({"purged": await intake.fleet.purge_dead(chosen)})


def routes(settings: Settings) -> list[Route]:
    return [
        Route(
            "/v1/dead-letters",
            counted("dead_letters", authed(settings, dead_list, Role.ADMIN)),
            methods=["GET"],
        ),
        Route(
            "/v1/dead-letters/{action}",
            counted("dead_letters", authed(settings, dead_action, Role.ADMIN)),
            methods=["POST"],
        ),
    ]

"""The control endpoints' shared plumbing (``/__sandbox/...``: control.py, templates.py): JSON
answers, the 400 they refuse with, and a request's JSON object body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


class BadRequest(Exception):
    """A control request the sandbox refuses (answered 400 ``{"error": <message>}``)."""


def json_response(payload: object, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def bad(message: str) -> Response:
    return json_response({"error": message}, 400)


async def json_payload(request: Request) -> dict[str, Any]:
    """The body as a JSON object, else :class:`BadRequest`."""
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    return payload

"""Operators' look-ups over HTTP (admin): a delivery's whole story, a recipient's state on a page.

``GET /v1/deliveries/{delivery_id}/history`` and ``GET /v1/pages/{page_id}/recipients/{psid}``
answer what :mod:`worker.lookup` reads (the console's look-up page and ``messenger-worker lookup``
show the same). Unknown delivery: 404 ``not_found``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.intake import state
from worker.intake.auth import Role, authed
from worker.intake.http import JSONResponse, counted
from worker.messenger.errors import InputError

MAX_ID = 600


async def delivery_history(request: Request) -> Response:
    intake = state.of(request)
    delivery_id = request.path_params["delivery_id"][:MAX_ID]
    story = await intake.fleet.delivery_story(delivery_id)
    if story is None:
        raise InputError(404, "not_found", "no such delivery (or past RECORD_RETENTION)")
    return JSONResponse(story)


async def recipient(request: Request) -> Response:
    intake = state.of(request)
    page_id, psid = request.path_params["page_id"][:MAX_ID], request.path_params["psid"][:MAX_ID]
    return JSONResponse(await intake.fleet.recipient_state(page_id, psid))


def routes(settings: Settings) -> list[Route]:
    return [
        Route(
            "/v1/deliveries/{delivery_id}/history",
            counted("lookups", authed(settings, delivery_history, Role.ADMIN)),
            methods=["GET"],
        ),
        Route(
            "/v1/pages/{page_id}/recipients/{psid}",
            counted("lookups", authed(settings, recipient, Role.ADMIN)),
            methods=["GET"],
        ),
    ]

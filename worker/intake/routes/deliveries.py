"""The status API: ``GET /v1/deliveries/{delivery_id}``, a delivery's public view.

The view (:func:`worker.store.records.public_view`) never shows the body or the raw PSID. An
intake token reads only the deliveries it sent (the record's ``caller``); an admin token reads
any. An unknown id, someone else's, or one longer than any id we issue, is 404 ``not_found``
(the same answer: it does not tell that the delivery exists).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.intake import state
from worker.intake.auth import Role, authed, caller_of
from worker.intake.http import JSONResponse, counted
from worker.messenger.errors import InputError
from worker.store import records

#: Longer path values are not ids we issued: refused without a Redis call.
MAX_DELIVERY_ID = 64


async def delivery(request: Request) -> Response:
    intake = state.of(request)
    delivery_id = request.path_params["delivery_id"]
    rec = await intake.fleet.record(delivery_id) if len(delivery_id) <= MAX_DELIVERY_ID else {}
    caller = caller_of(request)
    if not rec or (caller.role is Role.SEND and rec.get("caller", "") != caller.id):
        raise InputError(404, "not_found", "no such delivery")
    return JSONResponse(records.public_view(delivery_id, rec))


def routes(settings: Settings) -> list[Route]:
    endpoint = counted("delivery", authed(settings, delivery, Role.SEND, Role.ADMIN))
    return [Route("/v1/deliveries/{delivery_id}", endpoint, methods=["GET"])]

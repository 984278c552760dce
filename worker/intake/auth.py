"""Bearer-token authentication for the intake's own API (send, status, dead letters).

Braze's webhook template sends ``Authorization: Bearer <token>``; any of ``INTAKE_TOKENS`` is
accepted. Every configured token is compared, in constant time, whatever the first comparison
said, so the answer's timing does not tell which token (or how much of one) matched. The
Messenger webhook is not behind this check: Meta signs its requests instead (``routes/webhook``).
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response

from worker.config import Settings
from worker.intake.http import Handler, error


def bearer_ok(tokens: tuple[bytes, ...], header: str) -> bool:
    """Whether ``header`` (an Authorization value) carries one of ``tokens``."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    ok = False
    for expected in tokens:
        ok |= hmac.compare_digest(given, expected)
    return ok


def authed(settings: Settings, handler: Handler) -> Handler:
    """``handler`` behind the bearer check: 401 ``unauthorized`` (``WWW-Authenticate: Bearer``)
    without a valid token. With ``INTAKE_INSECURE_NO_AUTH`` (development only) it is ``handler``
    itself. The tokens are read from the settings once, here, not per request."""
    if settings.intake_insecure_no_auth:
        return handler
    tokens = settings.intake_token_values

    async def wrapper(request: Request) -> Response:
        if not bearer_ok(tokens, request.headers.get("authorization", "")):
            return error(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return wrapper

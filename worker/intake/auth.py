"""Bearer-token authentication and roles for the intake's own API.

Two powers, two kinds of token (``worker/config/__init__.py``; each at least 32 characters, and one
token has one role):

* **send** (``INTAKE_TOKENS``, the token every Braze webhook template carries): send as the
  pages the token may send as (all, or those INTAKE_TOKENS' JSON form names), and read the
  deliveries this token sent;
* **admin** (``ADMIN_TOKENS``): every delivery, dead letters (list, replay, purge) and what the
  operator console adds. An admin token cannot send.

``/metrics`` is on a listener of its own (INTAKE_METRICS_PORT, :mod:`worker.intake.metrics_server`),
not on the public port.

Linking Messenger users to Braze profiles is none of these: only Meta's signed webhooks with a
ref we signed do that (``routes/webhook``).

Every token of the route's roles is compared in constant time, whatever an earlier comparison
said, so the timing of the answer does not tell which token (or how much of one) matched. The
caller the route sees (:func:`caller_of`) carries the token's public id (a hash), never the token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request
from starlette.responses import Response

from worker.config import Settings, token_id
from worker.intake.http import Handler, error

#: Where the authenticated caller is kept in the ASGI scope for the route.
SCOPE_KEY = "bmw.caller"


class Role(StrEnum):
    SEND = "send"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    role: Role
    #: The token's public id (:func:`worker.config.token_id`); "" without authentication.
    id: str
    #: The pages it may send as; None: every configured page.
    pages: frozenset[str] | None = None

    def may_send_as(self, page_id: str) -> bool:
        return self.pages is None or page_id in self.pages


def credentials(settings: Settings, roles: tuple[Role, ...]) -> list[tuple[bytes, Caller]]:
    """The tokens a route accepts, each with the caller it stands for."""
    out: list[tuple[bytes, Caller]] = []
    if Role.SEND in roles:
        for secret in settings.intake_tokens:
            token = secret.get_secret_value()
            tid = token_id(token)
            out.append((token.encode(), Caller(Role.SEND, tid, settings.intake_token_pages.get(tid))))
    if Role.ADMIN in roles:
        for secret in settings.admin_tokens:
            token = secret.get_secret_value()
            out.append((token.encode(), Caller(Role.ADMIN, token_id(token))))
    return out


def identify(accepted: list[tuple[bytes, Caller]], header: str) -> Caller | None:
    """The caller whose token ``header`` (an Authorization value) carries, or None."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    given = token.strip().encode()
    found: Caller | None = None
    for expected, caller in accepted:
        if hmac.compare_digest(given, expected):
            found = caller
    return found


def authed(settings: Settings, handler: Handler, *roles: Role) -> Handler:
    """``handler`` for callers with one of ``roles`` (default: send): 401 ``unauthorized`` with
    ``WWW-Authenticate: Bearer`` without a valid token, 403 ``forbidden`` with a token of another
    role. With ``INTAKE_INSECURE_NO_AUTH`` (development only) every request is an unrestricted
    caller of the first role. The tokens are read from the settings once, here, not per request."""
    roles = roles or (Role.SEND,)
    if settings.intake_insecure_no_auth:
        anyone = Caller(roles[0], "")

        async def open_wrapper(request: Request) -> Response:
            request.scope[SCOPE_KEY] = anyone
            return await handler(request)

        return open_wrapper
    accepted = credentials(settings, roles)
    others = credentials(settings, tuple(r for r in Role if r not in roles))

    async def wrapper(request: Request) -> Response:
        header = request.headers.get("authorization", "")
        caller = identify(accepted, header)
        if caller is None:
            if identify(others, header) is not None:
                return error(403, "forbidden", "this token may not use this route (see README: Security)")
            return error(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        request.scope[SCOPE_KEY] = caller
        return await handler(request)

    return wrapper


def caller_of(request: Request) -> Caller:
    """The caller :func:`authed` let in."""
    caller: Caller = request.scope[SCOPE_KEY]
    return caller

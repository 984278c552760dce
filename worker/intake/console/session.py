"""The console's login session and CSRF tokens: stateless, signed, bound to one admin token.

Logging in takes an admin token (``ADMIN_TOKENS``; an intake token is refused) and sets one
cookie, ``__Host-bmw_console`` (``Secure``, ``HttpOnly``, ``SameSite=Strict``, ``Path=/``, no
``Domain``), whose value is ``<token_id>.<expires>.<mac>``: the token's public id
(:func:`worker.config.token_id`), when the session ends, and an HMAC-SHA256 of both under a key
derived from the admin token itself. So

* the cookie never holds the token, and Redis holds nothing for a session;
* removing a token from ``ADMIN_TOKENS`` (rotation) ends its sessions at once: no key verifies;
* a session lasts ``CONSOLE_SESSION_SECONDS`` at most (logging out clears the cookie).

Every action (a POST) carries a CSRF token in a hidden form field: the HMAC of the session's
cookie value under the same key, compared in constant time; and a POST whose ``Origin`` (or
``Referer``) names another host is refused. A cross-site page can neither read the token nor send
the cookie (``SameSite=Strict``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request

from worker.config import Settings, token_id

COOKIE: Final = "__Host-bmw_console"
#: How long a console session lasts at most.
SESSION_SECONDS: Final = 8 * 3600
#: An expiry is epoch seconds: a cookie whose expiry has more digits was not issued here.
_MAX_EXPIRES_DIGITS: Final = 12
_KEY_LABEL: Final = b"braze-messenger-worker console session v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A verified console session."""

    token_id: str
    expires: int
    #: The cookie's value: what the CSRF token is computed over.
    value: str
    key: bytes

    @property
    def csrf(self) -> str:
        return hmac.new(self.key, b"csrf:" + self.value.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.csrf.encode(), given.encode())


def _key(token: str) -> bytes:
    return hmac.new(token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, tid: str, expires: int) -> str:
    return hmac.new(key, f"{tid}.{expires}".encode(), hashlib.sha256).hexdigest()


def admin_token_for(settings: Settings, given: str) -> str | None:
    """The admin token ``given`` is, compared in constant time with every one; None otherwise
    (an intake token, an unknown string)."""
    found: str | None = None
    for secret in settings.admin_tokens:
        token = secret.get_secret_value()
        if hmac.compare_digest(token.encode(), given.strip().encode()):
            found = token
    return found


def issue(token: str, now: float | None = None, seconds: int = SESSION_SECONDS) -> str:
    """A new session cookie's value for the admin ``token``."""
    expires = int((time.time() if now is None else now) + seconds)
    tid = token_id(token)
    return f"{tid}.{expires}.{_mac(_key(token), tid, expires)}"


def verify(settings: Settings, value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value stands for, if it is well formed, unexpired and signed by a
    token still in ADMIN_TOKENS. Anything else (a malformed value included: non-ASCII digits or
    MAC, an expiry too long for ``int``) is no session, never an error."""
    if not value or not value.isascii() or value.count(".") != 2:
        return None
    tid, expires_text, mac = value.split(".")
    if not expires_text.isdigit() or len(expires_text) > _MAX_EXPIRES_DIGITS:
        return None
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return None
    for secret in settings.admin_tokens:
        token = secret.get_secret_value()
        if token_id(token) != tid:
            continue
        key = _key(token)
        if hmac.compare_digest(_mac(key, tid, expires).encode(), mac.encode()):
            return Session(tid, expires, value, key)
    return None


def same_origin(request: Request) -> bool:
    """A POST from a page of this host: ``Origin`` (else ``Referer``) absent or naming it."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")

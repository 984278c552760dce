"""The console's session cookie and CSRF tokens (worker/intake/console/session.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from worker.config import Settings, token_id
from worker.intake.console import session

ADMIN = "admin-token-0123456789abcdefghijklmnop"
OTHER_ADMIN = "admin-token-zyxwvutsrqponmlkjihgfedcb"
INTAKE = "intake-token-0123456789abcdefghijklmn"


def settings(*admins: str) -> Settings:
    return Settings(admin_tokens=list(admins or (ADMIN,)), intake_tokens=[INTAKE], _env_file=None)


def test_a_session_is_signed_by_its_admin_token_and_never_holds_it() -> None:
    value = session.issue(ADMIN, now=1000.0, seconds=3600)
    assert ADMIN not in value
    assert value.startswith(token_id(ADMIN) + ".4600.")
    verified = session.verify(settings(), value, now=2000.0)
    assert verified is not None
    assert verified.token_id == token_id(ADMIN)


def test_an_expired_tampered_or_rotated_session_is_refused() -> None:
    value = session.issue(ADMIN, now=1000.0, seconds=3600)
    assert session.verify(settings(), value, now=5000.0) is None  # expired
    tid, expires, mac = value.split(".")
    assert session.verify(settings(), f"{tid}.{int(expires) + 3600}.{mac}", now=2000.0) is None  # lengthened
    assert session.verify(settings(), f"{tid}.{expires}.{'0' * 64}", now=2000.0) is None
    assert session.verify(settings(OTHER_ADMIN), value, now=2000.0) is None  # the token was rotated out
    for junk in (None, "", "a.b", "a.b.c.d", f"{tid}.soon.{mac}"):
        assert session.verify(settings(), junk, now=2000.0) is None


def test_only_an_admin_token_signs_in() -> None:
    s = settings(ADMIN, OTHER_ADMIN)
    assert session.admin_token_for(s, f"  {OTHER_ADMIN} ") == OTHER_ADMIN
    assert session.admin_token_for(s, INTAKE) is None
    assert session.admin_token_for(s, ADMIN[:-1]) is None


def test_the_csrf_token_belongs_to_its_session() -> None:
    one = session.verify(settings(), session.issue(ADMIN, now=1000.0), now=1001.0)
    two = session.verify(settings(), session.issue(ADMIN, now=1002.0), now=1003.0)
    assert one is not None
    assert two is not None
    assert one.csrf_ok(one.csrf)
    assert not one.csrf_ok(two.csrf)
    assert not one.csrf_ok(None)
    assert not one.csrf_ok("")


def request(headers: dict[str, str]) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/console/dead-letters",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_a_post_from_another_origin_is_not_same_origin() -> None:
    host = {"Host": "console.example:8080"}
    assert session.same_origin(request(host))  # a form post without Origin (older browsers)
    assert session.same_origin(request({**host, "Origin": "https://console.example:8080"}))
    assert not session.same_origin(request({**host, "Origin": "https://evil.example"}))
    assert not session.same_origin(request({**host, "Origin": "null"}))
    assert not session.same_origin(request({**host, "Referer": "https://evil.example/page"}))


def malformed(tid: str) -> list[str]:
    """Cookie values no browser got from us, as Starlette reads a Cookie header's bytes (latin-1):
    the first three, and the fifth, once answered a plain-text 500."""
    superscripts, acute = "\u00b2\u00b3\u00b9", "\u00e9"
    return [
        "abc.\u00b2.def",  # a superscript two: str.isdigit() is true, int() refuses it
        f"{tid}.{superscripts * 4}.{'0' * 64}",
        "abc." + "9" * 5000 + ".def",  # more digits than int() converts
        f"{tid}.{'9' * 13}.{'0' * 64}",  # an expiry no session has
        f"{tid}.99999999999.{acute * 64}",  # a known token id, a non-ASCII MAC
        f"{tid}.99999999999.{acute}",
    ]


def test_a_malformed_cookie_is_no_session_never_an_error() -> None:
    for value in malformed(token_id(ADMIN)):
        assert session.verify(settings(), value, now=2000.0) is None, value[:40]
    good = session.issue(ADMIN, now=1000.0)
    tid, expires, mac = good.split(".")
    assert session.verify(settings(), good, now=2000.0) is not None  # the checks refuse only junk
    assert session.verify(settings(), f"{tid}.{expires}.{mac[:-1]}\u00e9", now=2000.0) is None
    assert session.verify(settings(), f"{tid}.{expires}.\u2603", now=2000.0) is None


def test_a_malformed_cookie_is_answered_as_no_cookie() -> None:
    """Over HTTP: the login form for a page, a refusal for an action; never a 500."""
    from starlette.testclient import TestClient

    from worker.intake import create_app

    app = create_app(
        Settings(
            admin_tokens=[ADMIN],
            intake_tokens=[INTAKE],
            redis_url="redis://127.0.0.1:1/0",  # never reached: no session, no read
            _env_file=None,
        )
    )
    with TestClient(app, base_url="https://testserver") as client:
        for value in malformed(token_id(ADMIN)):
            cookie = f"{session.COOKIE}={value}".encode("latin-1")
            for method, path in (
                ("GET", "/console/"),
                ("GET", "/console/pages"),
                ("POST", "/console/logout"),
            ):
                resp = client.request(method, path, headers={"Cookie": cookie}, follow_redirects=False)
                assert (resp.status_code, resp.headers.get("location")) == (303, "/console/login"), (
                    method,
                    path,
                    value[:40],
                    resp.text[:80],
                )

"""The operator console at ``/console/``: see and steer the service in a browser.

Served by the intake behind ``ADMIN_TOKENS`` (a login form takes an admin token and sets a
signed session cookie: :mod:`worker.intake.console.session`); server-rendered pages with no
JavaScript (:mod:`worker.intake.console.render`, ``templates/``); the pages and their actions
(:mod:`worker.intake.console.views`, :mod:`worker.intake.console.actions`) read and call what the
CLI and the admin API read and call. Nothing here runs on the send path.

==========================  =====================================================================
GET  /console/              overview: rates, backlog, scheduled, parked, dead letters, paused
                            pages, possible duplicates, the last hour, failures by class
GET  /console/pages         pages: limits, current rate and pacing factor, token, pause; pause
                            and resume
GET  /console/campaigns     campaigns: counters, stop (confirmed) and resume
GET  /console/dead-letters  filter by page, error code and age; replay or purge (confirmed)
GET  /console/lookup        a delivery's history; a recipient's window, suppression, parked
GET|POST /console/login     sign in with an admin token; POST /console/logout
==========================  =====================================================================
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from worker.config import Settings, token_id
from worker.intake import state
from worker.intake.console import actions, views
from worker.intake.console import session as sessions
from worker.intake.console.render import HEADERS, page
from worker.logging import get_logger

log = get_logger("worker.console")
View = Callable[[Request, sessions.Session], Awaitable[Response]]
Action = Callable[[Request, sessions.Session, list[tuple[str, str]]], Awaitable[Response]]


def _session(request: Request) -> sessions.Session | None:
    return sessions.verify(state.of(request).settings, request.cookies.get(sessions.COOKIE))


def signed_in(view: View) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in operator; anyone else is sent to the login form."""

    async def endpoint(request: Request) -> Response:
        s = _session(request)
        if s is None:
            return views.redirect("/console/login")
        return await view(request, s)

    return endpoint


def checked(action: Action) -> Callable[[Request], Awaitable[Response]]:
    """An action: a signed-in operator, a POST from this host, the session's CSRF token."""

    async def endpoint(request: Request) -> Response:
        s = _session(request)
        if s is None:
            return views.redirect("/console/login")
        fields = await views.form(request)
        if not sessions.same_origin(request) or not s.csrf_ok(dict(fields).get("csrf")):
            log.warning("console.csrf_refused", path=request.url.path, operator=s.token_id)
            return page("forbidden", s, status_code=403)
        log.info("console.action", path=request.url.path, operator=s.token_id)
        return await action(request, s, fields)

    return endpoint


async def login_form(request: Request) -> Response:
    if _session(request) is not None:
        return views.redirect("/console/")
    return page("login", None, error="")


async def login(request: Request) -> Response:
    settings = state.of(request).settings
    given = dict(await views.form(request)).get("token", "")
    token = sessions.admin_token_for(settings, given) if sessions.same_origin(request) else None
    if token is None:
        log.warning("console.login_refused")
        return page("login", None, status_code=401, error="That is not an admin token.")
    response = views.redirect("/console/")
    response.set_cookie(
        sessions.COOKIE,
        sessions.issue(token, seconds=settings.console_session_seconds),
        max_age=settings.console_session_seconds,
        path="/",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    log.info("console.login", operator=token_id(token))
    return response


async def logout(request: Request, s: sessions.Session, fields: list[tuple[str, str]]) -> Response:
    response = views.redirect("/console/login")
    response.delete_cookie(sessions.COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@cache
def _css() -> bytes:
    return (Path(__file__).parent / "static" / "console.css").read_bytes()


async def css(request: Request) -> Response:
    return Response(_css(), media_type="text/css", headers={**HEADERS, "Cache-Control": "max-age=300"})


def routes(settings: Settings) -> list[BaseRoute]:
    """The console, mounted at /console."""
    return [
        Mount(
            "/console",
            routes=[
                Route("/", signed_in(views.overview), methods=["GET"]),
                Route("/login", login_form, methods=["GET"]),
                Route("/login", login, methods=["POST"]),
                Route("/logout", checked(logout), methods=["POST"]),
                Route("/pages", signed_in(views.pages), methods=["GET"]),
                Route("/pages/{page_id}/{verb}", checked(actions.page_action), methods=["POST"]),
                Route("/campaigns", signed_in(actions.campaigns), methods=["GET"]),
                # a campaign id may hold '/' (X-Braze-Campaign-Id): the verb is the last segment
                Route(
                    "/campaigns/{campaign_id:path}/{verb}", checked(actions.campaign_action), methods=["POST"]
                ),
                Route("/dead-letters", signed_in(views.dead_letters), methods=["GET"]),
                Route("/dead-letters", checked(views.dead_action), methods=["POST"]),
                Route("/lookup", signed_in(views.lookups), methods=["GET"]),
                Route("/static/console.css", css, methods=["GET"]),
            ],
        )
    ]

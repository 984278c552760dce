"""The console's campaigns page and its page and campaign actions: the service functions of
:mod:`worker.campaigns` that the admin API (``/v1/campaigns/...``, ``/v1/pages/...``) and the CLI
(``messenger-worker campaigns|pages``) call. Stopping a campaign and pausing a page first answer
a confirmation page that says what will happen."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from worker.intake import state
from worker.intake.console import session as sessions
from worker.intake.console.render import page, segment
from worker.intake.console.views import redirect
from worker.states import State

#: The columns of the campaigns table, in the order a campaign's life goes (the final states'
#: counters are named by their state).
COUNTERS = (
    "accepted",
    "open",
    State.SENT.value,
    "delivered",
    "read",
    State.FAILED.value,
    State.EXPIRED.value,
    State.DEAD.value,
    State.CANCELLED.value,
)
#: Campaigns listed: the most recently active.
SHOWN = 100


def _row(view: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": view["campaign_id"],
        "counters": {name: view.get(name, 0) for name in COUNTERS},
        "stopped": bool(view.get("stopped")),
        "last_activity": view.get("last_at"),
        "failed_reasons": view.get("failed_reasons", {}),
    }


async def campaigns(request: Request, s: sessions.Session) -> Response:
    intake = state.of(request)
    listed = await intake.fleet.list_campaigns(limit=SHOWN)
    return page(
        "campaigns",
        s,
        campaigns=[_row(v) for v in listed.value],
        counters=COUNTERS,
        notice=request.query_params.get("done"),
        unavailable=listed.unavailable,
    )


async def campaign_action(request: Request, s: sessions.Session, fields: list[tuple[str, str]]) -> Response:
    """``stop`` (confirmed first: its open messages are cancelled) or ``resume``."""
    intake = state.of(request)
    campaign_id, verb = request.path_params["campaign_id"], request.path_params["verb"]
    if verb == "resume":
        resumed = await intake.fleet.resume_campaign(campaign_id)
        done = f"resumed {campaign_id}" if resumed else f"{campaign_id} was not stopped"
        return redirect(f"/console/campaigns?done={segment(done)}")
    if verb != "stop":
        return redirect("/console/campaigns")
    if dict(fields).get("confirmed") != "1":
        view = (await intake.fleet.campaign(campaign_id)).value
        open_now = int(view.get("open", 0)) if view else 0
        return page(
            "confirm",
            s,
            heading=f"Stop campaign {campaign_id}",
            question=f"Stop campaign {campaign_id}? Its {open_now} open message{'s' if open_now != 1 else ''} "
            "end cancelled without a Graph call, and new requests for it are answered cancelled until you resume it.",
            action=f"/console/campaigns/{segment(campaign_id)}/stop",
            fields=[],
            button="Stop the campaign",
            back="/console/campaigns",
        )
    cancelled = await intake.fleet.stop_campaign(campaign_id, by=f"console:{s.token_id}")
    return redirect(f"/console/campaigns?done={segment(f'stopped {campaign_id}: {cancelled} cancelled')}")


async def page_action(request: Request, s: sessions.Session, fields: list[tuple[str, str]]) -> Response:
    """``pause`` (confirmed first; until resumed) or ``resume`` (its waiting messages go now)."""
    intake = state.of(request)
    page_id, verb = request.path_params["page_id"], request.path_params["verb"]
    if verb == "resume":
        released = await intake.fleet.resume_page(page_id)
        return redirect(f"/console/pages?done={segment(f'resumed {page_id}: {released} released')}")
    if verb != "pause":
        return redirect("/console/pages")
    if dict(fields).get("confirmed") != "1":
        return page(
            "confirm",
            s,
            heading=f"Pause page {page_id}",
            question=f"Pause page {page_id}? Nothing is sent as it until you resume it; its messages wait.",
            action=f"/console/pages/{segment(page_id)}/pause",
            fields=[],
            button="Pause the page",
            back="/console/pages",
        )
    await intake.fleet.pause_page(page_id, None)
    return redirect(f"/console/pages?done={segment(f'paused {page_id}')}")

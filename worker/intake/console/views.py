"""The console's pages and actions: overview, pages, campaigns, dead letters, look-ups.

Every number comes from the read models the CLI and the admin API use (:mod:`worker.status`,
:mod:`worker.lookup`, :mod:`worker.store.deadletters`, :mod:`worker.campaigns`), and every
action calls the same function as its admin API route and CLI command: the console adds no
power the API lacks. Reads are bounded (pipelined, a fixed number of keys, at most
:data:`DEAD_SHOWN` dead letters), so a page answers in the same time with 100 or 100,000 open
deliveries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker import status
from worker.intake import state
from worker.intake.console import session as sessions
from worker.intake.console.render import HEADERS, page, sparkline
from worker.intake.http import read_body
from worker.intake.routes import admin
from worker.messenger.errors import InputError
from worker.ratelimit import page_rate
from worker.states import State
from worker.store import deadletters

#: Dead letters shown (and acted on without a selection) per console page.
DEAD_SHOWN = 50
#: A console form is small: a token, a CSRF token, a selection of ids.
FORM_LIMIT = 64 * 1024


async def form(request: Request) -> list[tuple[str, str]]:
    """The urlencoded form of a POST (bounded in size, and in time: the login form's caller is
    not authenticated yet), as (name, value) pairs in order."""
    raw = await read_body(request, FORM_LIMIT, seconds=state.of(request).settings.intake_body_seconds)
    return parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)


def redirect(to: str) -> Response:
    return RedirectResponse(to, status_code=303, headers=HEADERS)


async def overview(request: Request, s: sessions.Session) -> Response:
    intake = state.of(request)
    now, sync = time.time(), intake.sync_clients()
    each, hour = await asyncio.gather(
        asyncio.to_thread(status.read_each, sync, now=now),
        asyncio.to_thread(status.last_hour_all, sync, now=now),
    )
    current = status.merge(status.answering(each))
    sent = [m[State.SENT.value] for m in hour["minutes"]]
    bad = (State.FAILED.value, State.DEAD.value, State.EXPIRED.value)
    failed = sum(m[name] for m in hour["minutes"] for name in bad)
    return page(
        "overview",
        s,
        status=current,
        shards=each if len(each) > 1 else [],
        hour=hour,
        chart=sparkline(sent),
        sent_hour=sum(sent),
        failed_hour=failed,
    )


async def pages(request: Request, s: sessions.Session) -> Response:
    intake = state.of(request)
    settings = intake.settings
    each = await asyncio.to_thread(status.read_each, intake.sync_clients())
    current = status.merge(status.answering(each))
    down = status.unavailable(each)
    rows: dict[str, dict[str, Any]] = {}
    for page_id in intake.pages.page_ids():
        rows[page_id] = _page_row(settings, page_id, configured=True)
    for row in current.pages:
        entry = rows.setdefault(row.page_id, _page_row(settings, row.page_id, configured=False))
        entry[f"{row.kind}_rate"] = row.effective_rate
        if row.kind == "text":
            entry["factor"] = row.effective_rate / row.rate_limit if row.rate_limit else 1.0
        if row.paused_until:
            entry["paused_until"], entry["pause_reason"] = row.paused_until, row.pause_reason
    for paused in current.paused_pages:
        entry = rows.setdefault(paused.page_id, _page_row(settings, paused.page_id, configured=False))
        entry["paused_until"], entry["pause_reason"] = paused.paused_until, paused.reason
    by_shard: dict[int, list[str]] = {}
    for page_id in rows:  # one HMGET per shard
        by_shard.setdefault(intake.for_page(page_id).shard.index, []).append(page_id)
    usage: dict[str, Any] = {}
    for index, wanted in by_shard.items():
        if index in down:  # its pages are listed from the configuration, without figures
            continue
        link = intake.links[index]
        values = await link.redis.hmget(link.keys.page_usage, wanted)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        usage.update(zip(wanted, values, strict=True))
    for page_id, raw in usage.items():
        if raw is not None:
            pct, _, at = raw.decode().partition(":")
            rows[page_id]["usage_pct"], rows[page_id]["usage_at"] = int(pct), float(at or 0)
    return page(
        "pages",
        s,
        pages=[rows[k] for k in sorted(rows)],
        notice=request.query_params.get("done"),
        unavailable=down,
    )


def _page_row(settings: Any, page_id: str, *, configured: bool) -> dict[str, Any]:
    text_limit, media_limit = page_rate(settings, page_id, "text"), page_rate(settings, page_id, "media")
    return {
        "page_id": page_id,
        "configured": configured,
        "text_limit": text_limit,
        "text_rate": text_limit,
        "media_limit": media_limit,
        "media_rate": media_limit,
        "factor": 1.0,
        "paused_until": None,
        "pause_reason": None,
        "usage_pct": None,
        "usage_at": None,
    }


def _dead_filter(params: Any) -> deadletters.Filter:
    """The console form's filter, read by the admin API's own parser (InputError 422
    ``invalid_filter`` for a value that is not a finite number), at most DEAD_SHOWN + 1 rows."""
    fields = {name: value for form, name in _FILTER_FIELDS if (value := (params.get(form) or "").strip())}
    return dataclasses.replace(admin.dead_filter(fields), limit=DEAD_SHOWN + 1)


#: The console's filter fields and the admin API's names for them.
_FILTER_FIELDS = (("page", "page_id"), ("code", "code"), ("older_than", "older_than"))


def _filter_fields(flt: deadletters.Filter) -> list[tuple[str, str]]:
    fields = [("page", flt.page_id or ""), ("code", "" if flt.error_code is None else str(flt.error_code))]
    return [*fields, ("older_than", "" if flt.older_than is None else f"{flt.older_than:.15g}")]


async def dead_letters(request: Request, s: sessions.Session) -> Response:
    intake = state.of(request)
    notice = request.query_params.get("done")
    try:
        flt = _dead_filter(request.query_params)
    except InputError as exc:  # the same refusal as the API's; the page shows it, unfiltered
        flt, notice = deadletters.Filter(limit=DEAD_SHOWN + 1), exc.message
    listed, total = await asyncio.gather(intake.fleet.list_dead(flt), intake.fleet.dead_count())
    rows = listed.value
    return page(
        "dead_letters",
        s,
        unavailable=listed.unavailable or total.unavailable,
        rows=rows[:DEAD_SHOWN],
        more=len(rows) > DEAD_SHOWN,
        total=total.value,
        flt=flt,
        filter_fields=_filter_fields(flt),
        notice=notice,
    )


async def dead_action(request: Request, s: sessions.Session, fields: list[tuple[str, str]]) -> Response:
    """Replay or purge the selected dead letters (or the filter's, up to DEAD_SHOWN): first a
    confirmation page that says how many, then the action."""
    intake = state.of(request)
    params = dict(fields)
    action = params.get("action")
    if action not in ("replay", "purge"):
        return redirect("/console/dead-letters")
    try:
        flt = _dead_filter(params)
    except InputError:
        return redirect("/console/dead-letters")
    chosen = [value for name, value in fields if name == "id"]
    if params.get("confirmed") == "1":  # exactly the letters the confirmation page named
        ids = chosen[:DEAD_SHOWN]
        if not ids:  # it named none: nothing was confirmed (the filter is not asked again)
            return redirect(f"/console/dead-letters?done={_DONE[action]}+0")
    else:
        targets = await intake.fleet.select_dead(chosen or None, flt)
        ids = [t["delivery_id"] for t in targets][:DEAD_SHOWN]
        what = "the selected" if chosen else "the newest matching"
        return page(
            "confirm",
            s,
            heading=f"{action.capitalize()} dead letters",
            question=f"{action.capitalize()} {len(ids)} dead letter{'s' if len(ids) != 1 else ''} ({what})?"
            + (" Purged messages cannot be replayed." if action == "purge" else " They are sent again."),
            action="/console/dead-letters",
            fields=[("action", action), *[("id", i) for i in ids], *_filter_fields(flt)],
            button=f"{action.capitalize()} {len(ids)}",
            back="/console/dead-letters",
        )
    if action == "replay":
        done = len(await intake.fleet.replay(ids))
    else:
        done = await intake.fleet.purge_dead(ids)
    return redirect(f"/console/dead-letters?done={_DONE[action]}+{done}")


_DONE = {"replay": "replayed", "purge": "purged"}


async def lookups(request: Request, s: sessions.Session) -> Response:
    intake = state.of(request)
    params = request.query_params
    delivery_id = (params.get("delivery") or "").strip()[:64]
    page_id, psid = (params.get("page") or "").strip()[:64], (params.get("psid") or "").strip()[:600]
    story = recipient = None
    missing = ""
    if delivery_id:
        story = await intake.fleet.delivery_story(delivery_id)
        missing = "" if story else f"No delivery {delivery_id} (unknown, or past RECORD_RETENTION)."
    elif page_id and psid:
        recipient = await intake.fleet.recipient_state(page_id, psid)
    return page(
        "lookup",
        s,
        story=story,
        recipient=recipient,
        missing=missing,
        delivery_id=delivery_id,
        page_id=page_id,
        psid=psid,
    )

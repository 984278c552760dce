"""The console's URLs (worker/intake/console/render.py, templates/): every id a page puts in a URL
path or query is one percent-encoded segment, whatever a caller with send power named it."""

from __future__ import annotations

import html
import re
from urllib.parse import unquote, urljoin

from worker.config import Settings
from worker.intake.console import session
from worker.intake.console.render import page, segment
from worker.store import deadletters

ADMIN = "admin-token-0123456789abcdefghijklmnop"
BASE = "https://console.example/console/"
#: Campaign ids an intake token may send (X-Braze-Campaign-Id: printable ASCII, no space).
HOSTILE = ("../pages/1234567890/resume?", "team/a", "50%off#x", "a?b=c&d", "..%2Fpages")


def signed_in() -> session.Session:
    settings = Settings(admin_tokens=[ADMIN], _env_file=None)
    verified = session.verify(settings, session.issue(ADMIN, now=1000.0), now=1001.0)
    assert verified is not None
    return verified


def urls(body: bytes | memoryview, attribute: str) -> list[str]:
    return [html.unescape(u) for u in re.findall(rf'{attribute}="([^"]*)"', bytes(body).decode())]


def test_segment_encodes_every_reserved_character() -> None:
    assert segment("team/a") == "team%2Fa"
    assert segment("../pages/1/resume?") == "..%2Fpages%2F1%2Fresume%3F"
    assert segment("50%off#x&y=z") == "50%25off%23x%26y%3Dz"
    assert segment(1234) == "1234"
    for value in HOSTILE:
        assert unquote(segment(value)) == value


def campaign_row(cid: str, *, stopped: bool) -> dict[str, object]:
    return {"id": cid, "counters": {}, "stopped": stopped, "last_activity": None, "failed_reasons": {}}


def test_a_campaigns_stop_and_resume_buttons_stay_on_that_campaign() -> None:
    rows = [campaign_row(cid, stopped=i % 2 == 1) for i, cid in enumerate(HOSTILE)]
    body = page("campaigns", signed_in(), campaigns=rows, counters=()).body
    actions = [a for a in urls(body, "action") if a.startswith("/console/campaigns/")]
    assert len(actions) == len(HOSTILE)
    for cid, action, row in zip(HOSTILE, actions, rows, strict=True):
        verb = "resume" if row["stopped"] else "stop"
        assert action == f"/console/campaigns/{segment(cid)}/{verb}"
        # what a browser posts to: the same campaign, never another route
        resolved = urljoin(BASE + "campaigns", action)
        assert resolved == f"https://console.example/console/campaigns/{segment(cid)}/{verb}", resolved


def page_row(page_id: str, *, paused: bool) -> dict[str, object]:
    return {
        "page_id": page_id,
        "configured": False,
        "text_limit": 1.0,
        "text_rate": 1.0,
        "media_limit": 1.0,
        "media_rate": 1.0,
        "factor": 1.0,
        "paused_until": 2000.0 if paused else None,
        "pause_reason": None,
        "usage_pct": None,
        "usage_at": None,
    }


def test_page_buttons_and_delivery_links_are_encoded() -> None:
    s = signed_in()
    rows = [page_row("1/resume?", paused=False), page_row("2#x", paused=True)]
    actions = [
        a for a in urls(page("pages", s, pages=rows).body, "action") if a.startswith("/console/pages/")
    ]
    assert actions == ["/console/pages/1%2Fresume%3F/pause", "/console/pages/2%23x/resume"]

    dead = [{"delivery_id": "d&x=1#y", "page_id": "1", "error": None, "dead_at": 1.0, "attempts": 1}]
    body = page(
        "dead_letters", s, rows=dead, total=1, more=False, flt=deadletters.Filter(), filter_fields=[]
    ).body
    assert "/console/lookup?delivery=d%26x%3D1%23y" in urls(body, "href")

    parked = {
        "recipient": "9",
        "page_id": "1",
        "parked_count": 1,
        "parked_deliveries": [{"delivery_id": "p?q"}],
    }
    body = page("lookup", s, recipient=parked, story=None, missing="").body
    assert "/console/lookup?delivery=p%3Fq" in urls(body, "href")

"""The console's HTML: Jinja2 templates (autoescaped) and the small pieces they share.

Server-rendered pages, no JavaScript: every action is a form POST with its CSRF token, and a
destructive one first answers a confirmation page that says what it will do (how many dead
letters, which campaign). The last hour's chart is an inline SVG drawn here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
from starlette.responses import HTMLResponse

from worker.intake.console.session import Session

_HERE: Final = Path(__file__).parent
ENV: Final = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    undefined=jinja2.ChainableUndefined,  # optional fields of a record render as nothing
    trim_blocks=True,
    lstrip_blocks=True,
)
#: Every console answer: not cached, not framed, no scripts at all, nothing loaded from elsewhere.
HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
NAV: Final = (
    ("overview", "Overview", "/console/"),
    ("pages", "Pages", "/console/pages"),
    ("campaigns", "Campaigns", "/console/campaigns"),
    ("dead_letters", "Dead letters", "/console/dead-letters"),
    ("lookup", "Look-up", "/console/lookup"),
)


def when(at: float | None) -> str:
    """An epoch time as UTC text ('' for none)."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at)) if at else ""


def ago(at: float | None, now: float | None = None) -> str:
    """How long ago (or from now) ``at`` is, in words a person reads at a glance."""
    if not at:
        return ""
    delta = (time.time() if now is None else now) - at
    future, delta = delta < 0, abs(delta)
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if delta >= size:
            text = f"{delta / size:.0f} {unit}"
            break
    else:
        text = f"{delta:.0f} s"
    return f"in {text}" if future else f"{text} ago"


def segment(value: object) -> str:
    """``value`` percent-encoded as one URL path segment or query value: every id the console puts
    in a URL (campaign, page, delivery) goes through this (the ``segment`` filter in templates).

    An id may come from a caller with send power only (``X-Braze-Campaign-Id`` takes any
    printable ASCII): unencoded, ``../pages/1/resume?`` would turn a campaign's Stop button into
    another page's Resume. Encoded, '/', '?', '#', '%' and '&' stay inside the segment."""
    return quote(str(value), safe="")


ENV.filters["when"] = when
ENV.filters["ago"] = ago
ENV.filters["segment"] = segment


def sparkline(points: list[int], width: int = 600, height: int = 60) -> dict[str, Any]:
    """An SVG polyline's points for ``points`` (a per-minute series), scaled to the box."""
    top = max(points) if points and max(points) > 0 else 1
    step = width / max(1, len(points) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 4) - 2:.1f}" for i, v in enumerate(points)
    )
    return {"points": coords, "width": width, "height": height, "top": top}


def page(name: str, session: Session | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A console page from ``templates/<name>.html`` with the navigation and the CSRF token."""
    context.setdefault("notice", None)
    context.setdefault("unavailable", ())
    body = ENV.get_template(f"{name}.html").render(
        nav=NAV, active=name, csrf=session.csrf if session else "", signed_in=session is not None, **context
    )
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)

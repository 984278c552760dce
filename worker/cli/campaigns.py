"""The campaign commands: ``campaigns list|show|stop|resume``, ``deliveries cancel``,
``pages pause|resume`` and ``queue purge``: thin wrappers around :mod:`worker.campaigns` (the
same functions the admin API and the console call), printing JSON."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from typing import Any

from worker.cli.common import settings, warn_partial, with_fleet
from worker.states import State

_CANCELLED = State.CANCELLED.value


def _print(value: Any, *, indent: int | None = None) -> None:
    """One JSON line (what scripts parse), or indented for the listings."""
    print(json.dumps(value, indent=indent))


def cmd_campaigns(args: argparse.Namespace) -> int:
    action = args.campaigns_command
    if action == "list":
        _print(warn_partial(with_fleet(lambda f: f.list_campaigns(limit=args.limit))), indent=2)
        return 0
    if action == "show":
        view = warn_partial(with_fleet(lambda f: f.campaign(args.id)))
        if view is None:
            print(f"no campaign {args.id} (never seen, or older than CAMPAIGN_RETENTION)", file=sys.stderr)
            return 1
        _print(view, indent=2)
        return 0
    if action == "stop":
        by = f"cli:{getpass.getuser()}"

        async def stop(fleet: Any) -> tuple[bool, int]:
            known = (await fleet.campaign(args.id)).value is not None
            return known, await fleet.stop_campaign(args.id, by=by)

        known, cancelled = with_fleet(stop)
        if not known:  # still stopped: a campaign may be before its first send
            print(
                f"messenger-worker campaigns: note: no delivery of campaign {args.id} is known "
                "(a typo?); its new requests are answered cancelled until `campaigns resume`",
                file=sys.stderr,
            )
        _print({"campaign_id": args.id, "stopped": True, _CANCELLED: cancelled, "known": known})
        return 0
    resumed = with_fleet(lambda f: f.resume_campaign(args.id))
    _print({"campaign_id": args.id, "resumed": resumed})
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    cancelled = with_fleet(lambda f: f.cancel_delivery(args.id))
    _print({"delivery_id": args.id, _CANCELLED: cancelled})
    return 0 if cancelled else 1


def _campaign_id(text: str) -> str:
    """What the intake takes as a campaign id: 1 to 128 characters."""
    from worker.campaigns import MAX_CAMPAIGN_ID

    if not 1 <= len(text) <= MAX_CAMPAIGN_ID:
        raise argparse.ArgumentTypeError(f"a campaign id is 1 to {MAX_CAMPAIGN_ID} characters")
    return text


def _list_limit(text: str) -> int:
    """``campaigns list --limit``: 1 to the admin API's bound (one listing is one MULTI)."""
    from worker.campaigns import MAX_LIST

    try:
        limit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= limit <= MAX_LIST:
        raise argparse.ArgumentTypeError(f"a listing is 1 to {MAX_LIST} campaigns")
    return limit


def _pause_seconds(text: str) -> float:
    """``pages pause --seconds``: the admin API's bound (above 0, at most 366 days), checked by
    the API's own reader."""
    from worker.intake.routes.campaigns import MAX_PAUSE_SECONDS, pause_seconds_ok

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not pause_seconds_ok(seconds):
        raise argparse.ArgumentTypeError(f"a pause is above 0 and at most {MAX_PAUSE_SECONDS} s (366 days)")
    return seconds


def _unknown_page_note(page: str, loaded: Any) -> None:
    """A page this shell's PAGE_ACCESS_TOKENS does not name is likely a typo: said, not refused
    (a page may be paused before it is configured; a shell without the tokens says nothing)."""
    if loaded.page_access_tokens and page not in loaded.page_access_tokens:
        print(
            f"messenger-worker pages: note: page {page} is not in PAGE_ACCESS_TOKENS: nothing sends as it",
            file=sys.stderr,
        )


def cmd_pages(args: argparse.Namespace) -> int:
    loaded = settings()  # read once: the note and the fleet
    _unknown_page_note(args.page, loaded)
    if args.pages_command == "pause":
        until = with_fleet(lambda f: f.pause_page(args.page, args.seconds), loaded)
        _print({"page_id": args.page, "paused_until": until})
        return 0
    released = with_fleet(lambda f: f.resume_page(args.page), loaded)
    _print({"page_id": args.page, "resumed": True, "released": released})
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    if not args.yes and not sys.stdin.isatty():
        print("refusing to purge the queue without --yes", file=sys.stderr)
        return 1
    if not args.yes and input("purge the queue, cancelling its deliveries? [y/N] ").strip().lower() not in (
        "y",
        "yes",
    ):
        return 1
    _print(with_fleet(lambda f: f.purge_queue()))
    return 0


def add_parsers(sub: Any, parser: Callable[[Any, str, str], argparse.ArgumentParser]) -> None:
    """The commands above, on the CLI's subparsers (``parser`` is the CLI's own factory)."""
    p = parser(
        sub, "campaigns", "per-campaign counters; stop a campaign (cancel its open messages), resume it"
    )
    csub = p.add_subparsers(dest="campaigns_command", required=True)
    c = csub.add_parser("list", help="campaigns by last activity, with their counters")
    c.add_argument("--limit", type=_list_limit, default=100, help="at most this many (1 to 1000)")
    for name, text in (
        ("show", "one campaign's counters"),
        ("stop", "cancel every open message of the campaign; new ones are answered cancelled"),
        ("resume", "accept the campaign's new messages again"),
    ):
        c = csub.add_parser(name, help=text)
        c.add_argument(
            "id", type=_campaign_id, help="the campaign id (X-Braze-Campaign-Id, or the Canvas id)"
        )
    p.set_defaults(func=cmd_campaigns)

    p = parser(sub, "deliveries", "one delivery")
    dsub = p.add_subparsers(dest="deliveries_command", required=True)
    d = dsub.add_parser("cancel", help="cancel an open delivery (never sent afterwards)")
    d.add_argument("id", help="delivery id")
    p.set_defaults(func=cmd_deliveries)

    p = parser(sub, "pages", "page pauses")
    psub = p.add_subparsers(dest="pages_command", required=True)
    r = psub.add_parser("resume", help="lift a page's pause and release its waiting messages")
    r.add_argument("page", help="page id")
    r = psub.add_parser("pause", help="pause a page: its messages wait, unsent (until resumed)")
    r.add_argument("page", help="page id")
    r.add_argument(
        "--seconds",
        type=_pause_seconds,
        default=None,
        help="pause this long, at most 366 days (default: until resumed)",
    )
    p.set_defaults(func=cmd_pages)

    p = parser(sub, "queue", "the Celery queue")
    qsub = p.add_subparsers(dest="queue_command", required=True)
    q = qsub.add_parser("purge", help="empty the queue, cancelling the messages it held (not celery purge)")
    q.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_queue)

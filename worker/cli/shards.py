"""``messenger-worker shards plan|check``: change REDIS_SHARDS without stranding a page's state.

A page's pause, limiter, recipients' windows and suppressions, links and parked
messages live in its shard (:mod:`worker.store.residents`). Appending URLs to REDIS_SHARDS
re-routes the pages the new shards win; without a pin their new traffic starts on a shard with
none of that.

* ``plan --shards N``: the pages with state that N shards would move, and SHARD_PAGES with each
  pinned where it is. Roll the pins out first, with the current list (they change nothing
  there), then the longer list: no page with state moves, and only pages never seen go to the
  new shards.
* ``check``: the pages with state on a shard that does not hold them now (a list changed
  without pins, a pin removed). Exit 1 when there are any; the pins that would send their
  traffic back to their state. A page with state on two shards (its traffic moved and ran
  there) is listed as split: which side to keep is the operator's call.

Both read every key of every shard once (SCAN; measured in docs/scaling.md). URLs are never
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from worker.cli.common import settings as _settings
from worker.cli.common import with_fleet

#: Pages listed one per line in the text output (--json lists every one).
LISTED = 20


def add_parser(sub: Any, make: Any) -> None:
    p = make(
        sub, "shards", "plan a change of REDIS_SHARDS (the pins that keep pages with their state), check one"
    )
    p.add_argument("shards_command", choices=["plan", "check"], help="plan: before a change; check: after")
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="plan: how many URLs REDIS_SHARDS will have (the current ones first, new ones appended)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_shards)


def _moves(moves: list[Any]) -> list[dict[str, Any]]:
    return [{"page": m.page, "on": m.home, "to": m.to, "state": list(m.state)} for m in moves]


def _pins_line(pins: dict[str, int]) -> str:
    return "SHARD_PAGES=" + json.dumps(pins, separators=(",", ":"))


def cmd_shards(args: argparse.Namespace) -> int:
    from worker.store import shards

    settings = _settings()
    now = shards.count(settings)
    if args.shards_command == "plan":
        if args.shards is None or args.shards < now:
            print(
                f"shards plan: --shards must be at least the current count ({now}): shards are only "
                "appended (docs/scaling.md)",
                file=sys.stderr,
            )
            return 2
    elif args.shards is not None:
        print("shards check: --shards is plan's; check reads the current REDIS_SHARDS", file=sys.stderr)
        return 2
    found = with_fleet(lambda fleet: fleet.pages_with_state(), settings)
    held = [r.pages for r in found]
    scanned = [{"shard": i, "keys": r.keys, "pages": len(r.pages)} for i, r in enumerate(found)]
    found_check = shards.check(settings, held)
    if args.shards_command == "plan":
        return _plan(args, settings, held=held, scanned=scanned, stranded=found_check.stranded, now=now)
    return _check(args, found_check, scanned, now)


def _check(args: argparse.Namespace, found: Any, scanned: list[dict[str, Any]], now: int) -> int:
    if args.json:
        out = {
            "shards": now,
            "scanned": scanned,
            "misrouted": _moves(found.stranded),
            "draining": _moves(found.draining),
            "split": found.split,
            "shard_pages": found.pins,
        }
        print(json.dumps(out, indent=2))
        return 1 if found.stranded else 0
    _print_scanned(scanned)
    for m in found.draining[:LISTED]:
        print(
            f"page {m.page}: deliveries on shard {m.home}, held by shard {m.to}: shard {m.home}'s workers send them"
        )
    _more(found.draining)
    if not found.stranded:
        print("Every page's state is on the shard that holds it.")
        return 0
    print(
        f"{len({m.page for m in found.stranded})} page(s) have state on a shard that does not hold them now:"
    )
    for m in found.stranded[:LISTED]:
        mark = " (split: state on several shards)" if m.page in found.split else ""
        print(f"  page {m.page}: state on shard {m.home} ({', '.join(m.state)}), held by shard {m.to}{mark}")
    _more(found.stranded)
    if found.pins is not None:
        print("To send their traffic back to their state, roll out:")
        print(_pins_line(found.pins))
    if found.split:
        print(
            "A split page's traffic has run on several shards: pin it to the one whose state to keep, "
            "or leave it (docs/scaling.md)."
        )
    return 1


def _plan(
    args: argparse.Namespace,
    settings: Any,
    *,
    held: list[dict[str, set[str]]],
    scanned: list[dict[str, Any]],
    stranded: list[Any],
    now: int,
) -> int:
    from worker.store import shards

    moves = shards.plan(settings, held, args.shards)
    pins = shards.pins(settings, moves) if moves else None
    if args.json:
        out = {
            "shards": {"now": now, "after": args.shards},
            "scanned": scanned,
            "moves": _moves(moves),
            "misrouted": _moves(stranded),
            "shard_pages": pins,
        }
        print(json.dumps(out, indent=2))
        return 0
    _print_scanned(scanned)
    if stranded:
        print(
            f"warning: {len({m.page for m in stranded})} page(s) already have state on a shard that "
            "does not hold them: see `messenger-worker shards check`",
            file=sys.stderr,
        )
    if not moves:
        print(f"No page with state moves with {args.shards} shards: roll out the longer REDIS_SHARDS as is.")
        return 0
    by_target: dict[int, int] = {}
    for m in moves:
        by_target[m.to] = by_target.get(m.to, 0) + 1
    targets = ", ".join(f"{n} to shard {to}" for to, n in sorted(by_target.items()))
    print(f"With {args.shards} shards, {len(moves)} page(s) with state would move ({targets}):")
    for m in moves[:LISTED]:
        print(f"  page {m.page}: shard {m.home} -> {m.to} ({', '.join(m.state)})")
    _more(moves)
    if now > 1:
        print(
            "Keep them where their state is: roll out these pins first, with the current REDIS_SHARDS "
            "(they change nothing there), then the longer list:"
        )
    else:
        print("Keep them where their state is: set these pins with REDIS_SHARDS (the current Redis first):")
    print(_pins_line(pins or {}))
    return 0


def _more(listed: list[Any]) -> None:
    if len(listed) > LISTED:
        print(f"  ... and {len(listed) - LISTED} more (--json lists them all)")


def _print_scanned(scanned: list[dict[str, Any]]) -> None:
    for s in scanned:
        print(f"shard {s['shard']}: {s['keys']} keys read, {s['pages']} page(s) with state")

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
* ``move PAGE --to N``: copies the page's state to shard N and prints the pin to roll out;
  ``--finish``, once the pin is out and the old shard has none of the page's messages open,
  copies what changed meanwhile and drops the old copy (worker/store/pagemove.py).

Both read every key of every shard once (SCAN; measured in docs/scaling.md). URLs are never
printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from worker.cli.common import settings as _settings
from worker.cli.common import with_fleet

#: Pages listed one per line in the text output (--json lists every one).
LISTED = 20
#: Pins printed as an environment variable's value up to this size; beyond, as a file to write.
PINS_INLINE = 64 * 1024


def add_parser(sub: Any, make: Any) -> None:
    p = make(
        sub, "shards", "plan a change of REDIS_SHARDS (the pins that keep pages with their state), check one"
    )
    p.add_argument(
        "shards_command",
        choices=["plan", "check", "move"],
        help="plan: before a change; check: after; move PAGE --to N: a page's state to another shard",
    )
    p.add_argument("page", nargs="?", default=None, help="move: the page id")
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="plan: how many URLs REDIS_SHARDS will have (the current ones first, new ones appended)",
    )
    p.add_argument("--to", type=int, default=None, help="move: the shard the page goes to")
    p.add_argument(
        "--finish",
        action="store_true",
        help="move: after the pin to --to is rolled out and the old shard sent the page's messages",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_shards)


def _moves(moves: list[Any]) -> list[dict[str, Any]]:
    return [{"page": m.page, "on": m.home, "to": m.to, "state": list(m.state)} for m in moves]


def _pins_line(pins: dict[str, int]) -> str:
    """``SHARD_PAGES=...`` to roll out; for pins too long for one environment variable (128 KiB on
    Linux), how to give them as a file instead."""
    value = json.dumps(pins, separators=(",", ":"))
    if len(value) <= PINS_INLINE:
        return "SHARD_PAGES=" + value
    return (
        f"SHARD_PAGES=@/path/to/shard-pages.json  # {len(pins)} pins, {len(value)} bytes: too long for an "
        "environment variable; write --json's shard_pages to that file"
    )


def cmd_shards(args: argparse.Namespace) -> int:
    from worker.store import shards

    settings = _settings()
    now = shards.count(settings)
    if args.shards_command == "move":
        return _move(args, settings, now)
    if args.page is not None or args.to is not None or args.finish:
        print(f"shards {args.shards_command}: PAGE, --to and --finish are move's", file=sys.stderr)
        return 2
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
    return _check(args, found_check, scanned, now, with_fleet(_marks, settings))


async def _marks(fleet: Any) -> list[dict[str, Any]]:
    """Every shard's moved pages (P:moved): the pages whose requests' keys are asked elsewhere too."""
    from worker.store import pagemove

    out = []
    for shard in fleet.shards:
        for page, (source, until) in sorted((await pagemove.moved_marks(shard.redis, shard.keys)).items()):
            out.append({"page": page, "on": shard.index, "keys_asked_on": source, "until": round(until)})
    return out


def _draining(state: tuple[str, ...], home: int, to: int) -> str:
    """What a page's records left on shard ``home`` become: none of it strands the page."""
    said = []
    if "deliveries" in state:
        said.append(f"deliveries on shard {home}: shard {home}'s workers send them")
    if "dead letters" in state:
        said.append(f"dead letters on shard {home}: a replay moves them to shard {to}")
    return "; ".join(said)


def _check(
    args: argparse.Namespace, found: Any, scanned: list[dict[str, Any]], now: int, moved: list[dict[str, Any]]
) -> int:
    if args.json:
        out = {
            "shards": now,
            "scanned": scanned,
            "misrouted": _moves(found.stranded),
            "draining": _moves(found.draining),
            "split": found.split,
            "shard_pages": found.pins,
            "moved": moved,
        }
        print(json.dumps(out, indent=2))
        return 1 if found.stranded else 0
    _print_scanned(scanned)
    for m in moved[:LISTED]:
        until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(m["until"]))
        print(
            f"page {m['page']}: moved to shard {m['on']}; its requests' Idempotency-Keys are asked on "
            f"shard {m['keys_asked_on']} too until {until}"
        )
    _more(moved)
    for m in found.draining[:LISTED]:
        print(f"page {m.page}, held by shard {m.to}: {_draining(m.state, m.home, m.to)}")
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


def _move(args: argparse.Namespace, settings: Any, now: int) -> int:
    """``shards move PAGE --to N [--finish]`` (worker/store/pagemove.py has the procedure)."""
    from worker.store import shards

    page, to = args.page, args.to
    if page is None or to is None or not 0 <= to < now or args.shards is not None:
        print(f"shards move: give PAGE and --to N, a shard of REDIS_SHARDS (0..{now - 1})", file=sys.stderr)
        return 2
    route = shards.of_page(settings, page)
    if not args.finish and route == to:
        print(
            f"shards move: page {page} is routed to shard {to} already (its pin is out): "
            f"`shards move {page} --to {to} --finish`",
            file=sys.stderr,
        )
        return 2
    if args.finish and route != to:
        print(
            f"shards move: page {page} is routed to shard {route}: roll out its pin to shard {to} first "
            f"(SHARD_PAGES), then --finish",
            file=sys.stderr,
        )
        return 2
    result = with_fleet(lambda fleet: _moved(fleet, page, route, to, finish=args.finish), settings)
    pins = shards.pins(settings, [])
    pins[page] = to
    result["shard_pages"] = dict(sorted(pins.items()))
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["open"]:
        print(
            f"Shard {result['open_on']} still holds {result['open']} of page {page}'s messages open "
            "(queued, waiting, parked or in flight): its workers send them. Run this again when "
            "they are; nothing was changed."
        )
    elif args.finish:
        where = ", ".join(map(str, result["from"])) or "none: nothing was left there"
        print(
            f"Page {page}: {result['copied']} key(s) copied to shard {to} ({result['kept']} it had "
            f"already), {result['dropped']} dropped from shard(s) {where}. `shards check` should find "
            "nothing now."
        )
        if result["keys_asked_on"] is not None:
            print(_asked(result))
    else:
        print(
            f"Page {page}: {result['copied']} key(s) copied from shard {route} to shard {to} "
            f"({result['kept']} it had already). Now roll out this pin (with the pins you have):"
        )
        print(_pins_line(result["shard_pages"]))
        print(
            f"Its new requests and webhooks then go to shard {to}; shard {route}'s workers send what "
            f"it holds. Then run `messenger-worker shards move {page} --to {to} --finish`."
        )
        print(_asked(result))
    return 1 if result["open"] else 0


async def _moved(fleet: Any, page: str, route: int, to: int, *, finish: bool) -> dict[str, Any]:
    from worker.store import pagemove

    target = fleet.shards[to]
    until = pagemove.mark_until(target.settings.idempotency_ttl)
    if not finish:
        source = fleet.shards[route]
        first = await pagemove.copy_page(source.redis, target.redis, target.keys, page)
        await pagemove.mark_moved(target.redis, target.keys, page, route, until)
        return {
            "page": page,
            "from": [route],
            "to": to,
            "copied": first.copied,
            "kept": first.kept,
            "open": 0,
            "keys_asked_on": route,
            "keys_asked_until": round(until),
        }
    others = [s for s in fleet.shards if s.index != to]
    for shard in others:  # every other shard: no message of the page open there, or nothing moves
        waiting = await pagemove.open_deliveries(shard.redis, shard.keys, page)  # parked ones too
        if waiting:
            return {"page": page, "to": to, "open": waiting, "open_on": shard.index}
    copied = kept = dropped = 0
    held: list[int] = []
    for shard in others:
        done = await pagemove.copy_page(
            shard.redis, target.redis, target.keys, page, families=pagemove.MERGED
        )
        gone = await pagemove.drop_page(shard.redis, shard.keys, page)
        if done.copied or done.kept or gone:
            held.append(shard.index)
        copied, kept, dropped = copied + done.copied, kept + done.kept, dropped + gone
    # the old shard may have accepted requests until every process had the pin: its keys are
    # asked for two IDEMPOTENCY_TTLs from now (the shard the first step noted; else the one that
    # held the page's state)
    mark = (await pagemove.moved_marks(target.redis, target.keys)).get(page)
    asked = mark[0] if mark is not None else (held[0] if len(held) == 1 else None)
    if asked is not None:
        await pagemove.mark_moved(target.redis, target.keys, page, asked, until)
    return {
        "page": page,
        "from": held,
        "to": to,
        "copied": copied,
        "kept": kept,
        "dropped": dropped,
        "open": 0,
        "keys_asked_on": asked,
        "keys_asked_until": round(until) if asked is not None else None,
    }


def _asked(result: dict[str, Any]) -> str:
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result["keys_asked_until"]))
    return (
        f"Until {until}, a request for page {result['page']} whose Idempotency-Key shard "
        f"{result['keys_asked_on']} remembers is answered as a repeat on shard {result['to']}."
    )


def _more(listed: list[Any]) -> None:
    if len(listed) > LISTED:
        print(f"  ... and {len(listed) - LISTED} more (--json lists them all)")


def _print_scanned(scanned: list[dict[str, Any]]) -> None:
    for s in scanned:
        print(f"shard {s['shard']}: {s['keys']} keys read, {s['pages']} page(s) with state")

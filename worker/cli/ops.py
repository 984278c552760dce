"""The operator's commands: ``send``, ``status``, ``dead-letters``, ``seal``, ``link-ref``.

Run from the directory of a running ``messenger-worker up``, they find its Redis, intake and dev
tokens in its state file (:mod:`worker.cli.state`; applied in :func:`worker.cli.main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from worker.cli.common import settings as _settings
from worker.cli.common import warn_partial, warn_unavailable, with_fleet
from worker.states import FINAL as _FINAL
from worker.states import State

_SENT = State.SENT.value
FINAL = {s.value for s in _FINAL}


def cmd_send(args: argparse.Namespace) -> int:
    settings = _settings()
    token = settings.intake_tokens[0].get_secret_value() if settings.intake_tokens else ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"recipient": {"id": args.psid}, "messaging_type": "UPDATE", "message": {"text": args.text}}
    from worker.cli import state

    base = (
        args.intake or state.running_state(Path(args.data_dir)).get("intake_url") or "http://127.0.0.1:8080"
    ).rstrip("/")
    with httpx.Client(timeout=10) as client:
        resp = client.post(
            f"{base}/{settings.graph_api_version}/{args.page}/messages", json=body, headers=headers
        )
        if resp.status_code not in (200, 202):
            print(resp.text)
            return 1
        delivery_id = resp.json()["delivery_id"]
        deadline = time.monotonic() + args.timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = client.get(f"{base}/v1/deliveries/{delivery_id}", headers=headers).json()
            if view.get("status") in FINAL:
                break
            time.sleep(0.2)
    print(json.dumps(view, indent=2))
    return 0 if view.get("status") == _SENT else 1


#: What ``status`` shows per shard with REDIS_SHARDS.
_SHARD_FIELDS = ("open", "queue_depth", "oldest_open_age_s", "dead_letters", "redis_used_memory")


def cmd_status(args: argparse.Namespace) -> int:
    from worker import status
    from worker.store import connections, shards

    every = [(s, connections.sync_client(s)) for s in shards.every(_settings())]
    statuses = status.read_each(every)  # a shard that does not answer: None
    current = status.merge(status.answering(statuses))
    out = current.as_dict()
    if len(statuses) > 1:  # which shard is behind: the totals above are sums
        out["shards"] = [
            {"shard": i, "up": False}
            if st is None
            else {name: getattr(st, name) for name in _SHARD_FIELDS} | {"shard": i, "up": True}
            for i, st in enumerate(statuses)
        ]
        down = status.unavailable(statuses)
        if down:
            out["unavailable_shards"] = list(down)
            warn_unavailable(down)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("last 5 minutes:")
    for key, value in out.items():
        if key not in ("paused", "pages", "shards", "unavailable_shards"):
            print(f"{key:>20}: {value}")
    for row in out.get("shards", []):
        figures = (
            ", ".join(f"{n} {row[n]}" for n in _SHARD_FIELDS) if row["up"] else "down: Redis does not answer"
        )
        print(f"{'shard ' + str(row['shard']):>20}: {figures}")
    for row in current.pages:
        until = time.ctime(row.paused_until) if row.paused_until else "-"
        print(
            f"{'page':>20}: {row.page_id} {row.kind} limit {row.rate_limit:.0f}/s "
            f"now {row.effective_rate:.1f}/s tokens {row.tokens:.1f} paused until {until}"
        )
    for p in current.paused_pages:
        print(f"{'paused':>20}: page {p.page_id} until {time.ctime(p.paused_until)} ({p.reason})")
    return 0


def _confirmed(args: argparse.Namespace, count: int) -> bool:
    """A replay or purge of every dead letter (no filter, no --id) asks first, or needs --yes."""
    unfiltered = not (args.ids or args.page or args.code is not None or args.older_than is not None)
    if args.yes or not unfiltered or count == 0:
        return True
    if not sys.stdin.isatty():
        print(
            f"refusing to {args.action} all {count} dead letters without a filter: "
            "add --yes (or --dry-run to see them)",
            file=sys.stderr,
        )
        return False
    answer = input(f"{args.action} all {count} dead letters? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_dead_letters(args: argparse.Namespace) -> int:
    from worker.fleet import Fleet
    from worker.store import deadletters

    flt = deadletters.Filter(
        page_id=args.page, error_code=args.code, older_than=args.older_than, limit=args.limit
    )

    async def run(fleet: Fleet) -> int:
        if args.action == "list" and not args.ids:  # a listing: the shards that answer
            print(json.dumps(warn_partial(await fleet.list_dead(flt)), indent=2))
            return 0
        items = await fleet.select_dead(args.ids or None, flt)
        ids = [i["delivery_id"] for i in items]
        if args.action == "list":
            print(json.dumps(items, indent=2))
        elif args.dry_run:
            print(json.dumps({"dry_run": True, f"would_{args.action}": len(ids), "delivery_ids": ids}))
        elif not _confirmed(args, len(ids)):
            return 1
        elif args.action == "replay":
            print(json.dumps({"replayed": await fleet.replay(ids)}))
        else:
            print(json.dumps({"purged": await fleet.purge_dead(ids)}))
        return 0

    return with_fleet(run)


def cmd_seal(args: argparse.Namespace) -> int:
    """The seal pass to its end on every shard (worker/store/seals.py): the workers run it a little
    at a time; this is for an operator, e.g. with --through-now before a rollback."""
    from worker.fleet import Fleet
    from worker.store import seals

    async def run(fleet: Fleet) -> int:
        done = [
            await seals.to_the_end(s.redis, s.keys, s.settings, through_now=args.through_now)
            for s in fleet.shards
        ]
        print(json.dumps({"bucket_names_sealed": dict(enumerate(done))}))
        return 0

    return with_fleet(run)


def cmd_unpack_records(args: argparse.Namespace) -> int:
    """Open records and dead letters whose intake part is packed (worker/store/records.py) back
    into fields on every shard: before rolling back past the version that packs them, once its
    intakes are rolled back (README, "Upgrading")."""
    from worker.fleet import Fleet
    from worker.store import records

    async def run(fleet: Fleet) -> int:
        done = [await records.unpack_all(s.redis, s.keys) for s in fleet.shards]
        print(json.dumps({"records_unpacked": dict(enumerate(done))}))
        return 0

    return with_fleet(run)


def cmd_link_ref(args: argparse.Namespace) -> int:
    """The ref the README's Braze Liquid renders for this user, page and expiry (with LINK_SECRET):
    compare it with Braze's preview of the link when a signed link does not link."""
    from worker.messenger.refs import sign_ref

    settings = _settings()
    if settings.link_secret is None:
        raise SystemExit("LINK_SECRET is not set: no ref can link anything")
    expires = args.expires if args.expires is not None else int(time.time()) + args.ttl
    try:
        print(sign_ref(settings.link_secret.get_secret_value(), args.page, args.external_id, expires))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return 0

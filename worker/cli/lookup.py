"""``messenger-worker lookup delivery ID`` and ``lookup recipient --page P PSID``: what the console's
look-up page and the admin API show (:mod:`worker.lookup`), as JSON."""

from __future__ import annotations

import argparse
import json

from worker.cli.common import with_fleet


def cmd_lookup(args: argparse.Namespace) -> int:
    from worker.fleet import Fleet

    async def run(fleet: Fleet) -> int:
        if args.what == "delivery":
            found = await fleet.delivery_story(args.id)
            if found is None:
                print(json.dumps({"error": f"no delivery {args.id} (or past RECORD_RETENTION)"}))
                return 1
            print(json.dumps(found, indent=2))
            return 0
        if not args.page:
            print(json.dumps({"error": "lookup recipient needs --page"}))
            return 2
        print(json.dumps(await fleet.recipient_state(args.page, args.id), indent=2))
        return 0

    return with_fleet(run)

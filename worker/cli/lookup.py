"""``messenger-worker lookup delivery ID`` and ``lookup recipient --page P PSID``: what the console's
look-up page and the admin API show (:mod:`worker.lookup`), as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json

from worker.cli.common import settings as _settings


def cmd_lookup(args: argparse.Namespace) -> int:
    from worker import lookup
    from worker.store import connections

    settings = _settings()

    async def run() -> int:
        client = connections.async_client(settings)
        try:
            if args.what == "delivery":
                found = await lookup.delivery_story(client, settings, args.id)
                if found is None:
                    print(json.dumps({"error": f"no delivery {args.id} (or past RECORD_RETENTION)"}))
                    return 1
                print(json.dumps(found, indent=2))
                return 0
            if not args.page:
                print(json.dumps({"error": "lookup recipient needs --page"}))
                return 2
            print(json.dumps(await lookup.recipient_state(client, settings, args.page, args.id), indent=2))
            return 0
        finally:
            await client.aclose()

    return asyncio.run(run())

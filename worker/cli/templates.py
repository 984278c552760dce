"""``messenger-worker templates sync|list``: the pages' utility-template catalogue (worker/templates)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx

from worker.cli.common import settings as _settings


def cmd_templates(args: argparse.Namespace) -> int:
    """``templates sync``: read the pages' utility templates from Graph into the catalogue (exit 1
    if a page failed; its old catalogue stays); ``templates list``: what the catalogue holds."""
    from worker.logging import configure_logging
    from worker.store import Keys, connections
    from worker.templates import page_templates, synced_pages

    settings = _settings()
    configure_logging(settings, stream=sys.stderr)  # stdout is the command's answer

    async def run() -> int:
        client, keys = connections.async_client(settings), Keys.of(settings)
        try:
            if args.templates_command == "sync":
                from worker.templates.sync import sync_all

                async with httpx.AsyncClient() as http:
                    done = await sync_all(client, settings, http, pages=[args.page] if args.page else None)
                print(json.dumps({"synced": done}))
                return 0 if None not in done.values() else 1
            synced = await synced_pages(client, keys)
            out: dict[str, Any] = {}
            for page in [args.page] if args.page else sorted(set(settings.page_access_tokens) | set(synced)):
                rows = [t.as_dict() for t in await page_templates(client, keys, page)]
                out[page] = {"synced_at": synced.get(page), "templates": rows}
        finally:
            await client.aclose()
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        for page, catalogue in out.items():
            when = time.ctime(catalogue["synced_at"]) if catalogue["synced_at"] else "never synced"
            print(f"page {page} ({when})")
            for t in catalogue["templates"]:
                params = ",".join(t["parameter_names"]) or t["parameter_count"]
                print(f"  {t['name']:<32} {t['language']:<8} {t['status']:<12} params={params}")
        return 0

    return asyncio.run(run())

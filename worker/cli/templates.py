"""``messenger-worker templates sync|list``: the pages' utility-template catalogue (worker/templates)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from worker.cli.common import settings as _settings
from worker.cli.common import with_fleet


def cmd_templates(args: argparse.Namespace) -> int:
    """``templates sync``: read the pages' utility templates from Graph into the catalogue (exit 1
    if a page failed; its old catalogue stays); ``templates list``: what the catalogue holds."""
    from worker.fleet import Fleet
    from worker.logging import configure_logging
    from worker.templates import page_templates, synced_pages

    settings = _settings()
    configure_logging(settings, stream=sys.stderr)  # stdout is the command's answer
    out: dict[str, Any] = {}

    async def run(fleet: Fleet) -> int:
        if args.templates_command == "sync":
            from worker.templates.sync import sync_all

            done: dict[str, int | None] = {}
            wanted = [args.page] if args.page else sorted(settings.page_access_tokens)
            async with httpx.AsyncClient() as http:
                for shard in fleet.shards:  # each shard's pages into that shard's catalogue
                    mine = [p for p in wanted if fleet.for_page(p) is shard]
                    if mine:
                        done |= await sync_all(shard.redis, shard.settings, http, pages=mine)
            print(json.dumps({"synced": done}))
            return 0 if None not in done.values() else 1
        synced: dict[str, float] = {}
        for shard in fleet.shards:
            synced |= await synced_pages(shard.redis, shard.keys)
        for page in [args.page] if args.page else sorted(set(settings.page_access_tokens) | set(synced)):
            shard = fleet.for_page(page)
            rows = [t.as_dict() for t in await page_templates(shard.redis, shard.keys, page)]
            out[page] = {"synced_at": synced.get(page), "templates": rows}
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

    return with_fleet(run, settings)

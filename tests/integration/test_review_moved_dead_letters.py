"""A dead letter of a page moved to another shard (`shards move`, then `--finish`) stays on the
shard where it died, which no longer holds the page's pause, suppressions, limiter, links or
windows. Its replay (the CLI's, the admin API's, the console's: all through worker/fleet.py) moves
it to the page's shard first and replays it there, so the new shard's workers send it with the
page's state: a pause set there holds it. Before, it went back to the old shard's queue and was
sent at once, paused or not. Campaign counters summed over the shards still add up, and a move cut
short half way (the letter copied, not yet let go) is finished by the next replay: one send."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import ADMIN_HEADERS, Sandbox, wait_until
from tests.integration.test_shards import _page, _shards_cli, body, path, sent
from tests.shards import Shards, two_shards
from worker.states import FINAL, State
from worker.store import deadletters, outcomes

pytestmark = pytest.mark.integration
FINAL_STATES = {s.value for s in FINAL}


@pytest.fixture
def shards(sandbox: Sandbox, tmp_path: Path) -> Iterator[Shards]:
    yield from two_shards(sandbox, tmp_path)


def _campaign(shards: Shards, campaign: str) -> dict[str, Any]:
    """The campaign as the intake shows it: its counters summed over the shards."""
    got = httpx.get(f"{shards.stack.intake_url}/v1/campaigns/{campaign}", headers=ADMIN_HEADERS, timeout=10)
    assert got.status_code == 200, got.text
    view: dict[str, Any] = got.json()
    ended = sum(view[k] for k in ("sent", "failed", "expired", "dead", "cancelled"))
    assert view["accepted"] == ended + view["open"], view
    return view


def _dead_on_0_then_moved(shards: Shards, run: str) -> tuple[str, str, str, dict[str, str]]:
    """A page of shard 0 whose message dies there (3 transient failures), then moved to shard 1
    and finished with the pin out (the intake and the CLI's env have it). Returns the page, the
    dead letter's id, its campaign and the pinned env."""
    stack = shards.stack
    page, campaign = _page(0, 2), f"camp-{run}"
    headers = {"X-Braze-Campaign-Id": campaign, "X-Braze-Send-Id": "s1"}
    posted = stack.post(body(f"flaky3-2-{run}"), path=path(page), headers=headers)
    assert posted.status_code == 202, posted.text
    dead = posted.json()["delivery_id"]
    assert shards.index_of(dead) == 0
    assert shards.wait_final([dead])[dead]["status"] == State.DEAD
    code, copy = _shards_cli(dict(stack.env), "move", page, "--to", "1")
    assert code == 0, copy
    pinned = {**stack.env, "SHARD_PAGES": json.dumps(copy["shard_pages"])}
    stack.procs[0].stop()  # the pin rolled out: a new intake with it
    stack.env = pinned
    stack.start_intake()
    code, done = _shards_cli(pinned, "move", page, "--to", "1", "--finish")
    assert code == 0, done
    view = _campaign(shards, campaign)
    assert (view["accepted"], view["dead"]) == (1, 1)
    return page, dead, campaign, pinned


def _held(shards: Shards, index: int, delivery_id: str) -> dict[str, str]:
    client = shards.servers[index].client()
    try:
        return outcomes.read_sync(client, shards.keys(), delivery_id, shards.stack.record_retention)
    finally:
        client.close()


def test_a_moved_pages_dead_letter_is_replayed_on_its_new_shard(shards: Shards) -> None:
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    page, dead, campaign, pinned = _dead_on_0_then_moved(shards, run)
    # the letter left on shard 0 strands nothing: `shards check` says a replay moves it (it said
    # "deliveries on shard 0 ... shard 0's workers send them")
    code, check = _shards_cli(pinned, "check")
    assert code == 0, check
    assert [(m["page"], m["state"]) for m in check["draining"]] == [(page, ["dead letters"])], check
    assert not check["misrouted"], check
    assert shards.cli("pages", "pause", page, "--seconds", "600")  # on shard 1, the page's now
    replayed = shards.cli("dead-letters", "replay", "--id", dead)
    assert replayed == {"replayed": [dead]}
    # it left shard 0 (record and dead index) and waits on shard 1 for the page's pause
    keys = shards.keys()
    old = shards.servers[0].client()
    try:
        assert not old.exists(keys.delivery(dead))
        assert old.zscore(keys.dead, dead) is None
    finally:
        old.close()
    assert wait_until(lambda: _held(shards, 1, dead).get("status") not in (None, State.QUEUED), 20)
    time.sleep(2)
    assert _held(shards, 1, dead).get("status") not in FINAL_STATES, _held(shards, 1, dead)
    assert not sent(stack.sandbox, page, f"flaky3-2-{run}")  # the pause held it: not sent by shard 0
    view = _campaign(shards, campaign)
    assert (view["accepted"], view["dead"], view["replayed"], view["open"]) == (1, 0, 1, 1)
    # resumed: shard 1's workers send it, once
    shards.cli("pages", "resume", page)
    assert wait_until(lambda: _held(shards, 1, dead).get("status") == State.SENT, 30), _held(shards, 1, dead)
    assert len(sent(stack.sandbox, page, f"flaky3-2-{run}")) == 1
    assert stack.delivery(dead)["status"] == State.SENT  # the status API finds it on shard 1
    view = _campaign(shards, campaign)
    assert (view["accepted"], view["sent"], view["dead"], view["replayed"], view["open"]) == (1, 1, 0, 1, 0)


def test_a_move_cut_short_is_finished_by_the_next_replay(shards: Shards) -> None:
    """The move copies the letter to shard 1, then "crashes" before shard 0 lets it go: both hold
    it dead (each shard's counters count it, and still add up). The next replay finishes the
    move and sends it once, from shard 1; the counters are those of one letter again."""
    stack, run = shards.stack, uuid.uuid4().hex[:6]
    page, dead, campaign, pinned = _dead_on_0_then_moved(shards, run)

    async def copy_only() -> list[str]:
        from worker.store import shards as shard_map

        clients = [aioredis.Redis.from_url(s.url) for s in shards.servers]
        try:
            one = shard_map.settings_for(_settings(pinned), 1)
            _letters, arrived = await deadletters.copy_to(clients[0], clients[1], one, [dead])
            return arrived
        finally:
            for c in clients:
                await c.aclose()

    assert asyncio.run(copy_only()) == [dead]
    assert _held(shards, 0, dead)["status"] == State.DEAD
    assert _held(shards, 1, dead)["status"] == State.DEAD
    view = _campaign(shards, campaign)
    assert (view["accepted"], view["dead"]) == (2, 2)  # counted on both until the move ends
    replayed = shards.cli("dead-letters", "replay", "--id", dead)
    assert replayed == {"replayed": [dead]}
    assert wait_until(lambda: _held(shards, 1, dead).get("status") == State.SENT, 30), _held(shards, 1, dead)
    assert _held(shards, 0, dead) == {}
    assert len(sent(stack.sandbox, page, f"flaky3-2-{run}")) == 1
    assert shards.cli("dead-letters", "replay", "--id", dead) == {"replayed": []}  # nothing left to send
    view = _campaign(shards, campaign)
    assert (view["accepted"], view["sent"], view["dead"], view["replayed"], view["open"]) == (1, 1, 0, 1, 0)


def _settings(env: dict[str, str]) -> Any:
    """The Settings a process with ``env`` reads."""
    import os
    from unittest import mock

    from worker.config import Settings

    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()

"""A dead letter outlives its campaign's counters (``P:camp:{id}`` expires CAMPAIGN_RETENTION after
the campaign's last activity; a dead letter has no expiry). Replaying it then must not leave the
campaign with a negative ``dead``: the campaign comes back with what is known (the replayed
delivery accepted and open), and ``accepted = sent + failed + expired + dead + cancelled + open``
still holds. Real redis-server; accepted by the intake's group commit, claimed and recorded by the
scripts the workers run, replayed as the CLI and the admin API do (``deadletters.replay``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from tests.conftest import PAGE, RedisServer
from tests.integration.test_fence import claim, make_settings, sent, write
from worker import campaigns
from worker.config import Settings
from worker.delivery.model import Outcome
from worker.intake.committer import GroupCommitter
from worker.messenger.validation import validate
from worker.states import Event, State
from worker.store import Keys, deadletters

#: Short enough to wait for; every step before the wait takes milliseconds.
RETENTION = 2


def _settings(redis: RedisServer) -> Settings:
    return make_settings(redis, intake_insecure_no_auth=True, campaign_retention=RETENTION)


def _run(s: Settings, work: Any) -> Any:
    async def main() -> Any:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


async def _accept(client: aioredis.Redis, s: Settings, campaign: str, psids: list[str]) -> list[str]:
    committer = GroupCommitter(client, s)
    try:
        out = []
        for psid in psids:
            body = orjson.dumps({"recipient": {"id": psid}, "message": {"text": "hi"}})
            delivery_id, status = await committer.submit_with_status(
                validate(body, s, path_page_id=PAGE), "", "", attribution=(campaign, "", "", "", "")
            )
            assert status == "queued"
            out.append(delivery_id)
        return out
    finally:
        committer.close()


async def _kill(client: aioredis.Redis, s: Settings, ids: list[str]) -> None:
    """The deliveries run out of attempts: dead letters, counted `dead` in their campaign."""
    held = await claim(client, s, "w1.1", ids)
    assert [d.id for d in held] == ids
    assert await write(client, s, *(Outcome(d, Event.DEAD_LETTER, reason="max_attempts") for d in held)) == [
        1
    ] * len(ids)


def _adds_up(view: dict[str, Any]) -> bool:
    ended = sum(view[k] for k in ("sent", "failed", "expired", "dead", "cancelled"))
    return bool(view["accepted"] == ended + view["open"])


async def _expire(client: aioredis.Redis, keys: Keys, campaign: str) -> None:
    """Wait (CAMPAIGN_RETENTION, for real) until the campaign's counters are gone."""
    for _ in range((RETENTION + 5) * 10):
        if not await client.exists(keys.campaign(campaign)):
            break
        await asyncio.sleep(0.1)
    assert await campaigns.campaign(client, keys, campaign) is None


def test_a_dead_letter_replayed_after_its_campaign_expired_brings_it_back_with_what_is_known(
    redis_server: RedisServer,
) -> None:
    s = _settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        gone = await _accept(client, s, "camp-old", ["rp-1", "rp-2"])
        live = await _accept(client, s, "camp-live", ["rp-3"])
        await _kill(client, s, gone + live)
        view = await campaigns.campaign(client, keys, "camp-old")
        assert view is not None
        assert (view["accepted"], view["dead"]) == (2, 2)
        await _expire(client, keys, "camp-old")
        await _accept(client, s, "camp-live", ["rp-4"])  # camp-live is kept alive meanwhile
        # both letters of the expired campaign and one of the live one, in one replay call
        assert sorted(await deadletters.replay(client, s, [*gone, *live])) == sorted(gone + live)

        back = await campaigns.campaign(client, keys, "camp-old")
        assert back is not None
        assert (back["accepted"], back["dead"], back["open"], back["replayed"]) == (2, 0, 2, 2), back
        assert _adds_up(back), back
        listed = {v["campaign_id"]: v for v in await campaigns.list_campaigns(client, keys)}
        assert listed["camp-old"]["dead"] == 0
        # the campaign that did not expire: the letter moves from dead to replayed, as before
        kept = await campaigns.campaign(client, keys, "camp-live")
        assert kept is not None
        assert (kept["accepted"], kept["dead"], kept["open"], kept["replayed"]) == (2, 0, 2, 1), kept
        # sent now: the campaign that came back counts them sent, and still adds up
        held = await claim(client, s, "w2.1", gone)
        assert await write(client, s, *(sent(d) for d in held)) == [1, 1]
        done = await campaigns.campaign(client, keys, "camp-old")
        assert done is not None
        assert (done["accepted"], done["sent"], done["dead"], done["open"]) == (2, 2, 0, 0), done

    _run(s, go)


def test_an_old_dead_letter_replayed_into_its_campaign_made_anew_leaves_the_new_dead_alone(
    redis_server: RedisServer,
) -> None:
    """A recurring campaign keeps its id: its counters expired, then a new send made them anew
    and one of its deliveries died. Replaying the letter that died before counts it accepted; the
    new letter is still dead and still counted so."""
    s = _settings(redis_server)
    keys = Keys.of(s)

    async def go(client: aioredis.Redis) -> None:
        (old,) = await _accept(client, s, "camp-rec", ["rq-1"])
        await _kill(client, s, [old])
        await _expire(client, keys, "camp-rec")
        (new,) = await _accept(client, s, "camp-rec", ["rq-2"])
        await _kill(client, s, [new])
        assert await deadletters.replay(client, s, [old]) == [old]

        view = await campaigns.campaign(client, keys, "camp-rec")
        assert view is not None
        assert (view["accepted"], view["dead"], view["open"], view["replayed"]) == (2, 1, 1, 1), view
        assert _adds_up(view), view
        letters = await deadletters.list_dead(client, s, deadletters.Filter())
        assert [v["delivery_id"] for v in letters] == [new]
        # the new letter replayed in turn: it was counted in this hash, so it leaves `dead`
        assert await deadletters.replay(client, s, [new]) == [new]
        again = await campaigns.campaign(client, keys, "camp-rec")
        assert again is not None
        assert (again["accepted"], again["dead"], again["open"], again["replayed"]) == (2, 0, 2, 2), again
        assert await deadletters.find_dead(client, s, [old, new], deadletters.Filter()) == []
        states = [await client.hget(keys.delivery(i), "status") for i in (old, new)]  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        assert states == [State.QUEUED.encode()] * 2

    _run(s, go)

"""Page pauses: a page whose token is invalid (190), that is restricted (368) or throttled as a
whole waits instead of burning its messages.

A pause is the hash ``P:pause:{page}`` (until, reason, code, the fingerprint of the token that
was refused, strikes) and the page's entry in ``P:paused`` (``pause.lua`` sets both, never
shortening a pause). While it lasts the limiter grants the page nothing; once it is over one probe
send goes first (``acquire.lua``) and the pause is lifted when the probe is answered. A
token-invalid pause is lifted early when the page's configured token changes (the token file was
reloaded), and ``messenger-worker pages resume`` lifts any pause at once.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from worker.config import PageTokens, Settings
from worker.delivery.model import PauseRequest
from worker.logging import get_logger
from worker.store import Keys, records, scripts, text
from worker.store.pages import resume_page

__all__ = ["PagePause", "PauseKeeper", "queue_lift", "queue_pause", "resume_page", "token_fingerprint"]

log = get_logger("worker.delivery")


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PagePause:
    until: float
    reason: str
    token_fp: str = ""

    @classmethod
    def from_record(cls, rec: dict[str, str], now: float) -> PagePause | None:
        """The pause in force (paused, or over with its probe still out), or None."""
        if not rec:
            return None
        until = max(records.number(rec, "until"), records.number(rec, "probe"))
        if until <= now:
            return None
        return cls(until, rec.get("reason", ""), rec.get("token_fp", ""))

    def lifted_by(self, token: str) -> bool:
        """A token-invalid pause no longer applies once the page has another token."""
        return (
            self.reason == "token_invalid"
            and bool(self.token_fp)
            and self.token_fp != token_fingerprint(token)
        )


def queue_pause(
    pipe: Any, keys: Keys, settings: Settings, page_id: str, *, pause: PauseRequest, token: str
) -> None:
    """Add ``pause.lua`` for ``page_id`` to a pipeline (the outcome write)."""
    scripts.queue(
        pipe,
        "pause",
        keys=[keys.pause(page_id), keys.paused],
        args=[
            repr(time.time()),
            pause.seconds,
            pause.reason,
            str(pause.code or 0),
            token_fingerprint(token) if token else "",
            "1" if pause.reason == "rate_limited" else "0",
            settings.retry_cap_seconds,
            page_id,
        ],
    )


def queue_lift(pipe: Any, keys: Keys, page_id: str) -> None:
    """The probe was answered: the page is open again for everyone."""
    pipe.delete(keys.pause(page_id))
    pipe.zrem(keys.paused, page_id)


class PauseKeeper:
    """The scheduler's pause housekeeping, every few seconds: say when pauses ended, and lift
    token-invalid pauses whose page has a new token."""

    def __init__(self, client: aioredis.Redis, keys: Keys, tokens: PageTokens) -> None:
        self._client = client
        self._keys = keys
        self._tokens = tokens

    async def tick(self) -> int:
        """The pause housekeeping's round. Returns how many waits it made due now."""
        released = await self.lift_replaced_token_pauses()
        await self.log_expired_pauses()
        return released

    async def log_expired_pauses(self) -> None:
        """Pauses end by themselves (their ``until``); say so once, and drop them from the index."""
        for member in await self._client.zrangebyscore(self._keys.paused, "-inf", time.time()):
            if await self._client.zrem(self._keys.paused, member):
                log.info("page.resumed", page_id=text(member), reason="pause_elapsed")

    async def lift_replaced_token_pauses(self) -> int:
        """Resumes the token-invalid pauses whose page has another token now. Returns how many
        waits that made due."""
        now = time.time()
        released = 0
        for member in await self._client.zrangebyscore(self._keys.paused, now, "+inf"):
            page = text(member)
            raw = await self._client.hgetall(self._keys.pause(page))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
            pause = PagePause.from_record(records.decode(raw), now)
            token = self._tokens.get(page)
            if pause is not None and token and pause.lifted_by(token):
                released += await self.resume(page, "token_replaced")
        return released

    async def resume(self, page_id: str, why: str) -> int:
        released = await resume_page(self._client, self._keys, page_id)
        log.info("page.resumed", page_id=page_id, reason=why, released=released)
        return released

"""The distributed per-page limiter: one Lua script, shared by every worker process on every host.

Meta allows a page 300 Send API calls/s for text, links, reactions and stickers, and 10/s for
audio and video; calls over the limit extend the block. Celery's ``rate_limit`` is per worker, so
the limit lives in Redis and is taken atomically by ``acquire.lua``, a GCRA ("virtual
scheduling") limiter using Redis's own clock (``TIME``), so hosts with skewed clocks agree.

Design (no head-of-line blocking): every send *reserves* an exact slot. If the slot is due within
``PACE_MAX_HOLD_SECONDS`` the engine awaits it on its event loop (no thread sleeps; other sends of
the batch proceed). If it is further away, the delivery is *deferred* with its reservation: it
goes back to the schedule (``P:sched``) to be released just before its slot (``slot_at`` in its
record) and is sent at the slot without asking again. A backlog of one page therefore leaves the
Celery queue at the speed of claims, not of the page's rate, and drains from the schedule at
exactly that rate, so other pages' messages never wait behind it. A reservation found stale (its
delivery came back more than ``SLOT_GRACE_SECONDS`` late) is dropped and a new slot is taken,
so a late delivery cannot bunch with on-time ones.

Keys (``P`` = KEY_PREFIX)::

    P:rl:{page}:{class}     hash  tat  (theoretical arrival time, µs, Redis clock)
                                  f, ft (adaptive factor in (0, 1] and when it was set, µs)
    P:rl:r:{page}:{psid}    hash  tat for the optional per-recipient pace
    P:rl:used               zset  "{page}:{class}" -> its last use (status; pruned after a day)
    P:pause:{page}          hash  until (epoch seconds): a paused page grants nothing; once it is
                                  over, ``probe`` marks the one send that goes first (PROBE_SECONDS)

The scripts and their contracts: ``store/lua/acquire.lua``, ``acquire_many.lua`` and
``slow_down.lua`` (shared helpers in ``_gcra.lua``).

Slot times are turned into this process's clock with :class:`RedisClock`, which keeps the
smallest observed ``local time after the answer - Redis now``: a slot is never taken as due
before it is (only up to the fastest round trip late), whatever the event loop's lag was.

Failure policy: **fail closed**. Without Redis there is no slot: the acquire raises, nothing is
sent, and the engine hands that recipient's deliveries back (released, due again after a short
wait; written under their fence as soon as Redis answers). The other recipients of the batch are
not affected.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from worker import metrics
from worker.config import Settings
from worker.store import Keys, scripts

SLOT_GRACE_SECONDS = 0.01
MAX_LATE_RETRIES = 5
#: After a page pause, one probe send goes first; the others wait this long for its answer.
PROBE_SECONDS = 10.0
#: A page's last usage percentage is written at most this often per process.
USAGE_NOTE_SECONDS = 5.0


@dataclass(frozen=True)
class Grant:
    granted: bool
    delay: float  # seconds from Redis's answer: until the slot (granted) or until worth asking again
    probe: bool = False  # the first send after a page pause
    #: granted: the slot on Redis's clock (epoch seconds; what a deferred delivery keeps)
    slot: float = 0.0
    #: granted: when the slot is due on this process's wall clock (never earlier than it is)
    at: float = 0.0
    #: refused because the page is paused (for ``delay``, until its pause ends): a wait for the
    #: page, which resuming it releases; not a probe's answer awaited or a recipient's pace
    paused: bool = False


class RedisClock:
    """This process's wall clock minus Redis's, from the scripts' answers.

    Each answer carries Redis's ``TIME``; ``local time after the answer - Redis time`` is the
    offset plus the answer's trip (and any event-loop lag before we looked). The smallest sample
    of the last ``WINDOW`` to ``2 x WINDOW`` seconds is kept: the true offset plus the fastest
    return trip, so converted slots are never early and late only by that trip (tens of µs on one
    host). Renewed every window, so a stepped clock is forgotten within ``2 x WINDOW``.
    """

    WINDOW = 10.0

    def __init__(self) -> None:
        self._current = math.inf
        self._previous = math.inf
        self._since = time.monotonic()

    def observe(self, redis_now_us: int) -> None:
        sample = time.time() - redis_now_us / 1_000_000
        if time.monotonic() - self._since > self.WINDOW:
            self._previous, self._current, self._since = self._current, math.inf, time.monotonic()
        self._current = min(self._current, sample)

    @property
    def offset(self) -> float:
        best = min(self._current, self._previous)
        return 0.0 if best == math.inf else best

    def to_local(self, redis_epoch: float) -> float:
        return redis_epoch + self.offset


class Limiter:
    """Per-page pacing for one process; all state is in Redis."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys.of(settings)
        self.clock = RedisClock()
        self._usage_noted: dict[str, float] = {}

    async def note_usage(self, page_id: str, pct: int) -> None:
        """Remember Graph's last ``X-Business-Use-Case-Usage`` percentage for the page (the
        console's pages view): at most one write per page per USAGE_NOTE_SECONDS per process."""
        now = time.monotonic()
        if now - self._usage_noted.get(page_id, -USAGE_NOTE_SECONDS) < USAGE_NOTE_SECONDS:
            return
        self._usage_noted[page_id] = now
        await self._client.hset(self._keys.page_usage, page_id, f"{pct}:{int(time.time())}")  # type: ignore[misc]  # redis-py: Awaitable[T] | T

    def bucket(self, page_id: str, kind: str) -> str:
        return self._keys.bucket(page_id, kind)

    def rate(self, page_id: str, kind: str) -> float:
        return page_rate(self._settings, page_id, kind)

    def burst(self, rate: float) -> int:
        return burst_for(self._settings, rate)

    def _grant(self, granted: bool, delay_us: int, probe: bool, now_us: int, paused: bool = False) -> Grant:
        self.clock.observe(now_us)
        if not granted:
            return Grant(False, delay_us / 1_000_000, paused=paused)
        slot = (now_us + delay_us) / 1_000_000
        return Grant(True, delay_us / 1_000_000, probe, slot, self.clock.to_local(slot))

    async def acquire(self, page_id: str, kind: str, psid: str) -> Grant:
        s = self._settings
        rate = self.rate(page_id, kind)
        recipient = self._keys.recipient_bucket(page_id, psid) if s.recipient_rate_limit > 0 else ""
        res = await scripts.run(
            self._client,
            "acquire",
            keys=[self.bucket(page_id, kind), recipient, self._keys.pause(page_id), self._keys.buckets],
            args=[
                rate,
                self.burst(rate),
                int(PROBE_SECONDS * 1_000_000),
                s.recipient_rate_limit,
                f"{page_id}:{kind}",
                s.pace_recovery_per_second,
            ],
        )
        return self._grant(bool(int(res[0])), int(res[1]), bool(int(res[2])), int(res[3]), bool(int(res[4])))

    async def acquire_many(self, page_id: str, kind: str, count: int) -> list[Grant]:
        """``count`` consecutive slots of one page's bucket (:meth:`acquire_pages` of one group)."""
        return (await self.acquire_pages([(page_id, kind, count)]))[0]

    async def acquire_pages(self, groups: Sequence[tuple[str, str, int]]) -> list[list[Grant]]:
        """For each (page, class, count): ``count`` consecutive slots, all groups in one round
        trip. A group gets [] when its page has a pause hash (each send then asks :meth:`acquire`,
        which runs the pause and probe logic); every group does when the per-recipient pace is on
        (it needs each recipient's bucket)."""
        s = self._settings
        wanted = [g for g in groups if g[2] > 0]
        if not wanted or s.recipient_rate_limit > 0:
            return [[] for _ in groups]
        args: list[Any] = [s.pace_recovery_per_second]
        for page_id, kind, count in wanted:
            rate = self.rate(page_id, kind)
            args += [self.bucket(page_id, kind), self._keys.pause(page_id), rate, self.burst(rate)]
            args += [f"{page_id}:{kind}", count]
        res = await scripts.run(self._client, "acquire_many", keys=[self._keys.buckets], args=args)
        now_us, at = int(res[0]), 1
        granted: dict[tuple[str, str, int], list[Grant]] = {}
        for group in wanted:
            n = int(res[at])
            granted[group] = [self._grant(True, int(d), False, now_us) for d in res[at + 1 : at + 1 + n]]
            at += 1 + n
        return [granted.get(g, []) for g in groups]

    async def wait_for_slot(
        self, page_id: str, kind: str, psid: str, reserved: float = 0.0, *, reserved_free: bool = False
    ) -> Grant:
        """A slot for one send, awaited here on the event loop (never a thread) when it is due
        within ``PACE_MAX_HOLD_SECONDS``; ``reserved`` is a slot taken earlier (Redis clock).

        Returns a grant with ``delay == 0`` when it is time to send; a grant whose slot is further
        than the hold (the caller defers the delivery, keeping ``slot``); or a refusal (paused).
        A slot we wake up for more than ``SLOT_GRACE_SECONDS`` late (a busy loop), or a reservation
        that came back that late, is left unused and a new one is taken: sending late would bunch
        with other workers' on-time sends. A *free* slot (:func:`is_free`: due within
        ``SLOT_GRACE_SECONDS`` of being granted, so the bucket was at most that far behind) is used
        however late we get to it: asking again cannot be sooner (what was slow is this loop), it
        would only burn a slot, and what such slots can add to any 1-s window is the grace's worth
        of the rate (1%).
        """
        hold = self._settings.pace_max_hold_seconds
        for _ in range(MAX_LATE_RETRIES):
            if reserved:
                at = self.clock.to_local(reserved)
                grant = Grant(True, max(0.0, at - time.time()), False, reserved, at)
                free = reserved_free
                reserved, reserved_free = 0.0, False
            else:
                grant = await self.acquire(page_id, kind, psid)
                if not grant.granted:
                    return grant
                free = is_free(grant)
            wait = grant.at - time.time()
            if wait > hold:
                return grant
            if wait > 0:
                await asyncio.sleep(wait)
            if free or time.time() - grant.at <= SLOT_GRACE_SECONDS:
                return Grant(True, 0.0, grant.probe, grant.slot, grant.at)
            metrics.PACE_LATE_SLOTS.inc()
        return Grant(True, 0.0)  # bounded: the loop is overloaded; send rather than starve

    async def slow_down(self, page_id: str) -> float:
        """Usage header above the threshold: halve the page's rate (both classes); it recovers linearly."""
        s = self._settings
        factor = 1.0
        for kind in ("text", "media"):
            factor = float(
                await scripts.run(
                    self._client,
                    "slow_down",
                    keys=[self.bucket(page_id, kind)],
                    args=[0.5, s.pace_min_factor, s.pace_recovery_per_second],
                )
            )
        return factor


def is_free(grant: Grant) -> bool:
    """A slot granted due within SLOT_GRACE_SECONDS: the page's bucket was at most that far
    behind, so using the slot late cannot bunch sends by more than the grace's worth."""
    return grant.granted and grant.delay <= SLOT_GRACE_SECONDS


def page_rate(settings: Settings, page_id: str, kind: str) -> float:
    """The configured sends/s of a page's ``text`` or ``media`` bucket (PAGE_RATE_OVERRIDES first)."""
    override = settings.page_rate_overrides.get(page_id, {})
    if kind == "media":
        return float(override.get("media", settings.page_media_rate_limit))
    return float(override.get("text", settings.page_rate_limit))


def burst_for(settings: Settings, rate: float) -> int:
    """Slots that may go at once: 1% of the rate, so that with late slots dropped after 10 ms
    no trailing 1 s window exceeds the rate by more than a few percent."""
    return max(1, min(settings.pace_burst, int(rate * 0.01)))

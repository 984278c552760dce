"""The distributed per-page limiter: one Lua script, shared by every worker process on every host.

Meta allows a page 300 Send API calls/s for text, links, reactions and stickers, and 10/s for
audio and video; calls over the limit extend the block. Celery's ``rate_limit`` is per worker, so
the limit lives in Redis and is taken atomically by :data:`ACQUIRE_LUA`, a GCRA ("virtual
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
    P:rl:pages              set   "{page}:{class}" of every bucket ever used (status)
    P:pause:{page}          hash  until (epoch seconds): a paused page grants nothing; once it is
                                  over, ``probe`` marks the one send that goes first (PROBE_SECONDS)

ACQUIRE_LUA contract:
    KEYS[1] page bucket, KEYS[2] recipient bucket or "" , KEYS[3] page pause hash, KEYS[4] pages set
    ARGV[1] rate per second, ARGV[2] burst (slots), ARGV[3] probe window µs, ARGV[4] recipient
    rate (0 = off), ARGV[5] member for the pages set, ARGV[6] factor recovery per second.
    Returns {granted (1/0), delay µs, probe (1/0), now µs (Redis TIME)}: granted -> a slot is
    reserved ``delay`` after ``now`` (probe: the first send after a pause; the engine lifts the
    pause when it succeeds); not granted -> the page is paused, or the recipient's pace is not
    due, for ``delay`` (nothing reserved: the delivery asks again then).

ACQUIRE_MANY_LUA contract (a batch's first sends to each recipient, when RECIPIENT_RATE_LIMIT is
off: one round trip instead of one per send):
    KEYS[1] page bucket, KEYS[2] page pause hash, KEYS[3] pages set
    ARGV[1] rate, ARGV[2] burst, ARGV[3] member for the pages set, ARGV[4] factor recovery per
    second, ARGV[5] count.
    Returns {now µs, delay µs for each of count}: ``count`` consecutive slots of the same GCRA as ACQUIRE;
    or just {now} when the page has a pause hash (each send then asks ACQUIRE, which runs the
    pause and probe logic).

Slot times are turned into this process's clock with :class:`RedisClock`, which keeps the
smallest observed ``local time after the answer - Redis now``: a slot is never taken as due
before it is (only up to the fastest round trip late), whatever the event loop's lag was.

Failure policy: **fail closed**. Without Redis there is no slot, the acquire raises, and the
delivery is not sent (it stays claimed until its lease ends and is swept back when Redis returns).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from worker import metrics, store
from worker.config import Settings

# Shared by the scripts below: Redis's clock (µs) and the page bucket as it stands now.
_GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- the adaptive factor, recovered linearly since it was lowered (at ft)
local function recovered(f, ft, recover)
  if f < 1 then f = math.min(1, f + (now - tonumber(ft or now)) / 1000000 * recover) end
  return f
end
-- a page bucket's slot interval and burst tolerance (µs, at the recovered factor) and its tat
local function bucket(key, rate, burst, recover)
  local b = redis.call('HMGET', key, 'tat', 'f', 'ft')
  local interval = 1000000 / (rate * recovered(tonumber(b[2] or '1'), b[3], recover))
  return interval, (burst - 1) * interval, math.max(tonumber(b[1] or now), now)
end
"""

ACQUIRE_LUA = (
    _GCRA_LUA
    + """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local rrate = tonumber(ARGV[4])
local recover = tonumber(ARGV[6])
local is_probe = 0
local pz = redis.call('HMGET', KEYS[3], 'until', 'probe')
if pz[1] then
  local until_us = tonumber(pz[1]) * 1000000
  if until_us > now then return {0, math.floor(until_us - now), 0, now} end
  -- the pause is over: one probe goes first; the others wait for its answer (or its expiry)
  local probe_us = tonumber(pz[2] or '0') * 1000000
  if probe_us > now then return {0, math.floor(probe_us - now), 0, now} end
  redis.call('HSET', KEYS[3], 'probe', string.format('%.3f', (now + tonumber(ARGV[3])) / 1000000))
  is_probe = 1
end
local interval, tau, tat = bucket(KEYS[1], rate, burst, recover)
local slot = math.max(tat - tau, now)
local rtat = nil
if rrate > 0 and KEYS[2] ~= '' then
  rtat = math.max(tonumber(redis.call('HGET', KEYS[2], 'tat') or now), now)
  -- the recipient is not due before the page slot: reserve nothing, come back when it is
  if rtat > slot then return {0, math.floor(rtat - now), 0, now} end
end
-- integers as %.0f: Lua would print 16-digit µs timestamps with 14 significant digits
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + interval))
redis.call('PEXPIRE', KEYS[1], 3600000 + math.floor((tat - now) / 1000))
if rtat then
  redis.call('HSET', KEYS[2], 'tat', string.format('%.0f', slot + 1000000 / rrate))
  redis.call('PEXPIRE', KEYS[2], 600000)
end
redis.call('SADD', KEYS[4], ARGV[5])
return {1, math.floor(slot - now), is_probe, now}
"""
)

ACQUIRE_MANY_LUA = (
    _GCRA_LUA
    + """
-- a pause hash (paused, or its probe pending or due): every send asks on its own (ACQUIRE)
if redis.call('EXISTS', KEYS[2]) == 1 then return {now} end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local recover = tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local interval, tau, tat = bucket(KEYS[1], rate, burst, recover)
local out = {now}
for i = 1, count do
  out[i + 1] = math.floor(math.max(tat - tau, now) - now)
  tat = tat + interval
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], 3600000 + math.floor((tat - now) / 1000))
redis.call('SADD', KEYS[3], ARGV[3])
return out
"""
)

# SLOW_DOWN: KEYS[1] page bucket. ARGV[1] factor multiplier, ARGV[2] minimum factor,
# ARGV[3] recovery per second. Lowers the adaptive factor (taking recovery so far into account).
SLOT_GRACE_SECONDS = 0.01
MAX_LATE_RETRIES = 5
#: After a page pause, one probe send goes first; the others wait this long for its answer.
PROBE_SECONDS = 10.0

SLOW_DOWN_LUA = (
    _GCRA_LUA
    + """
local b = redis.call('HMGET', KEYS[1], 'f', 'ft')
local f = recovered(tonumber(b[1] or '1'), b[2], tonumber(ARGV[3]))
f = math.max(tonumber(ARGV[2]), f * tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'f', f, 'ft', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], 3600000)
return tostring(f)
"""
)


@dataclass(frozen=True)
class Grant:
    granted: bool
    delay: float  # seconds from Redis's answer: until the slot (granted) or until worth asking again
    probe: bool = False  # the first send after a page pause
    #: granted: the slot on Redis's clock (epoch seconds; what a deferred delivery keeps)
    slot: float = 0.0
    #: granted: when the slot is due on this process's wall clock (never earlier than it is)
    at: float = 0.0


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
        self._keys = store.Keys(settings.key_prefix, settings.queue_name)
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._acquire_many = client.register_script(ACQUIRE_MANY_LUA)
        self._slow = client.register_script(SLOW_DOWN_LUA)
        self.clock = RedisClock()

    def bucket(self, page_id: str, kind: str) -> str:
        return f"{self._settings.key_prefix}:rl:{page_id}:{kind}"

    def rate(self, page_id: str, kind: str) -> float:
        return page_rate(self._settings, page_id, kind)

    def burst(self, rate: float) -> int:
        return burst_for(self._settings, rate)

    def _grant(self, granted: bool, delay_us: int, probe: bool, now_us: int) -> Grant:
        self.clock.observe(now_us)
        if not granted:
            return Grant(False, delay_us / 1_000_000)
        slot = (now_us + delay_us) / 1_000_000
        return Grant(True, delay_us / 1_000_000, probe, slot, self.clock.to_local(slot))

    async def acquire(self, page_id: str, kind: str, psid: str) -> Grant:
        s = self._settings
        rate = self.rate(page_id, kind)
        recipient = f"{s.key_prefix}:rl:r:{page_id}:{psid}" if s.recipient_rate_limit > 0 else ""
        res = await self._acquire(
            keys=[
                self.bucket(page_id, kind),
                recipient,
                self._keys.pause(page_id),
                f"{s.key_prefix}:rl:pages",
            ],
            args=[
                rate,
                self.burst(rate),
                int(PROBE_SECONDS * 1_000_000),
                s.recipient_rate_limit,
                f"{page_id}:{kind}",
                s.pace_recovery_per_second,
            ],
        )
        return self._grant(bool(int(res[0])), int(res[1]), bool(int(res[2])), int(res[3]))

    async def acquire_many(self, page_id: str, kind: str, count: int) -> list[Grant]:
        """``count`` consecutive slots in one round trip; [] when the page has a pause hash (each
        send then asks :meth:`acquire`, which runs the pause and probe logic) or when the
        per-recipient pace is on (it needs each recipient's bucket)."""
        s = self._settings
        if count <= 0 or s.recipient_rate_limit > 0:
            return []
        rate = self.rate(page_id, kind)
        res = await self._acquire_many(
            keys=[self.bucket(page_id, kind), self._keys.pause(page_id), f"{s.key_prefix}:rl:pages"],
            args=[rate, self.burst(rate), f"{page_id}:{kind}", s.pace_recovery_per_second, count],
        )
        now_us = int(res[0])
        return [self._grant(True, int(delay_us), False, now_us) for delay_us in res[1:]]

    async def wait_for_slot(
        self, page_id: str, kind: str, psid: str, reserved: float = 0.0, *, reserved_free: bool = False
    ) -> Grant:
        """A slot for one send, awaited here on the event loop (never a thread) when it is due
        within ``PACE_MAX_HOLD_SECONDS``; ``reserved`` is a slot taken earlier (Redis clock).

        Returns a grant with ``delay == 0`` when it is time to send; a grant whose slot is further
        than the hold (the caller defers the delivery, keeping ``slot``); or a refusal (paused).
        A slot we wake up for more than ``SLOT_GRACE_SECONDS`` late (a busy loop), or a reservation
        that came back that late, is left unused and a new one is taken: sending late would bunch
        with other workers' on-time sends. A slot that was free when Redis granted it (a fresh one,
        or ``reserved_free``: the bucket had room) is used however late we get to it: asking
        again cannot be sooner (what was slow is this loop), it would only burn a slot.
        """
        hold = self._settings.pace_max_hold_seconds
        for _ in range(MAX_LATE_RETRIES):
            free = not reserved or reserved_free
            if reserved:
                at = self.clock.to_local(reserved)
                grant = Grant(True, max(0.0, at - time.time()), False, reserved, at)
                reserved, reserved_free = 0.0, False
            else:
                grant = await self.acquire(page_id, kind, psid)
                if not grant.granted:
                    return grant
            wait = grant.at - time.time()
            if wait > hold:
                return grant
            if wait > 0:
                await asyncio.sleep(wait)
            elif free and grant.delay <= 0:  # free when granted (see above)
                return Grant(True, 0.0, grant.probe, grant.slot, grant.at)
            if time.time() - grant.at <= SLOT_GRACE_SECONDS:
                return Grant(True, 0.0, grant.probe, grant.slot, grant.at)
            metrics.PACE_LATE_SLOTS.inc()
        return Grant(True, 0.0)  # bounded: the loop is overloaded; send rather than starve

    async def slow_down(self, page_id: str) -> float:
        """Usage header above the threshold: halve the page's rate (both classes); it recovers linearly."""
        s = self._settings
        factor = 1.0
        for kind in ("text", "media"):
            factor = float(
                await self._slow(
                    keys=[self.bucket(page_id, kind)],
                    args=[0.5, s.pace_min_factor, s.pace_recovery_per_second],
                )
            )
        return factor


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


def page_state(client: Any, settings: Settings) -> list[dict[str, Any]]:
    """Per-page limiter state for ``messenger-worker status`` (sync client)."""
    now = time.time()
    out: list[dict[str, Any]] = []
    for member in sorted(store._s(m) for m in client.smembers(f"{settings.key_prefix}:rl:pages")):
        page, _, kind = member.rpartition(":")
        rec = store.decode_record(client.hgetall(f"{settings.key_prefix}:rl:{member}"))
        rate = page_rate(settings, page, kind)
        factor = float(rec.get("f", "1"))
        if factor < 1:
            factor = min(
                1.0, factor + (now - float(rec.get("ft", "0")) / 1e6) * settings.pace_recovery_per_second
            )
        tat = float(rec.get("tat", "0")) / 1e6
        effective = rate * factor
        burst = burst_for(settings, rate)
        tokens = (
            max(0.0, min(float(burst), (now - (tat - burst / effective)) * effective)) if effective else 0.0
        )
        pause = store.decode_record(client.hgetall(f"{settings.key_prefix}:pause:{page}"))
        until = float(pause.get("until", "0"))
        out.append(
            {
                "page_id": page,
                "class": kind,
                "rate_limit": rate,
                "effective_rate": round(effective, 2),
                "tokens": round(tokens, 2),
                "paused_until": until if until > now else None,
                "pause_reason": pause.get("reason") if until > now else None,
            }
        )
    return out

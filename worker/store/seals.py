"""Bucket expiries set once per window by the housekeeping, not once per write.

Three layouts keep their entries in buckets named ``{prefix}{window}:{hex suffix}`` that expire
whole: outcomes (:mod:`worker.store.outcomes`, windows of an hour), recipients' unread deliveries
(:mod:`worker.store.unread`, windows of RECORD_RETENTION) and Idempotency-Keys
(:mod:`worker.store.idempotency`, windows of IDEMPOTENCY_TTL). A bucket needs its expiry once,
but a write cannot tell whether it made the bucket, so each write used to send an
``EXPIREAT … NX``: three Redis commands per delivered message that do nothing nearly every time,
about 3 µs of Redis CPU each with the Lua call around them (docs/benchmarks.md).

Now a write into a window leaves the expiry to the **seal pass** (``store/lua/seal.lua``), which
each worker's scheduler runs in its housekeeping (:func:`run`): once a window is over, the pass
notes in the layout's ``meta`` hash that it has begun it (``open:{length}`` moves past it), and
from then on any write into that window (a writer whose clock is behind) sets the expiry
itself; then the pass gives every name the window's buckets can have (16**SUFFIX of them: the
suffixes are hex) its expiry, :data:`NAMES_PER_CALL` per script call, the calls of all workers
sharing one cursor. A name that has no bucket costs a lookup. For a window of a day with the
unread and idempotency layouts' 16**5 names that is about a second of Redis CPU a day each, and
for outcomes 16**4 names an hour, where the writes' expiries cost about 3 µs per message (about
260 s a day at 1,000 messages/s). Windows shorter than :data:`SEAL_MIN` seconds keep an expiry
per write.

What this trades: until its window is over and the pass has run (a few minutes with one worker),
a bucket has no expiry. A shard whose workers all stop keeps its buckets of the current window
until one runs again, and a pass that lags gives late expiries that are already past (Redis
deletes such a bucket at once). The first write of a layout on a shard starts the windows at
its own: buckets written before (by a version with an expiry per write) have theirs. A change of
the window length (IDEMPOTENCY_TTL, RECORD_RETENTION) leaves the windows of the length before to
the pass too, until a whole window of it is empty; then that length is retired (its writes, if
a process still uses it, set their own expiries).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from worker.config import Settings
from worker.store import idempotency, outcomes, scripts, unread
from worker.store.keys import Keys

#: Windows shorter than this (seconds) keep an expiry per write: their names would be sealed
#: too often for what it saves (and the tests' short windows keep the plain behaviour).
SEAL_MIN: Final = 3600
#: Bucket names one seal.lua call gives an expiry (about 1.5-3 ms of Redis).
NAMES_PER_CALL: Final = 1024
#: Calls one housekeeping run makes at most (16,384 names: a day's 16**5 unread or idempotency
#: names in about 64 runs of one worker, five minutes at HOUSEKEEPING_SECONDS).
CALLS_PER_RUN: Final = 16
#: Seconds one housekeeping run spends on the pass at most (a call is not started after it).
BUDGET_SECONDS: Final = 0.05


@dataclass(frozen=True)
class Layout:
    """A bucketed layout: its meta hash, bucket prefix, the window length its writers use, and
    when a bucket of window ``w`` expires: ``(w + k) * length + extra``."""

    name: str
    meta: str
    prefix: str
    length: int
    k: int
    extra: int
    digits: int


def metas(keys: Keys) -> list[str]:
    """The three layouts' meta hashes (what the status reads for :func:`lag`)."""
    return [keys.outcome_meta, keys.unread_meta, keys.idem_meta]


def layouts(keys: Keys, record_retention: int, idempotency_ttl: int) -> list[Layout]:
    """The three layouts, their windows numbered by these settings."""
    return [
        Layout(
            "outcomes",
            keys.outcome_meta,
            keys.outcome_prefix,
            outcomes.SPAN,
            1,
            record_retention,
            outcomes.SUFFIX,
        ),
        Layout(
            "unread",
            keys.unread_meta,
            keys.unread_bucket_prefix,
            record_retention,
            2,
            0,
            unread.SUFFIX,
        ),
        Layout(
            "idempotency",
            keys.idem_meta,
            keys.idem_bucket_prefix,
            idempotency_ttl,
            2,
            0,
            idempotency.SUFFIX,
        ),
    ]


#: The `open:` of a length no pass has left to do (every write with it sets its expiry): seal.lua
#: gets it as SEAL_RETIRED (worker/store/scripts.py's prelude).
RETIRED: Final = 1e15


def lag(meta: dict[str, str], now: float) -> float:
    """Seconds since the end of the oldest window of a layout (its ``meta`` hash, decoded) that
    is over and whose buckets are still waiting for their expiries (0: none waits). The pass
    keeps it at a few minutes; a lag of hours means no worker runs it, and those buckets grow."""
    worst = 0.0
    for name, value in meta.items():
        if not name.startswith("open:") or not name[5:].isdigit():
            continue
        length, first = int(name[5:]), float(value)
        if first >= RETIRED:
            continue
        if f"sealing:{length}" in meta:  # window first - 1 is under way: it ended at first * length
            worst = max(worst, now - first * length)
        elif first < now // length:  # window first is over and not begun
            worst = max(worst, now - (first + 1) * length)
    return max(0.0, worst)


def args(layout: Layout, now: float, names: int = NAMES_PER_CALL) -> list[Any]:
    """seal.lua's arguments for one call (its key: ``layout.meta``)."""
    return [repr(now), layout.prefix, layout.length, layout.k, layout.extra, layout.digits, names]


async def step(client: Any, layout: Layout, now: float, names: int = NAMES_PER_CALL) -> int:
    """One seal.lua call for ``layout``: the bucket names it gave an expiry (0: none is due)."""
    return int(await scripts.run(client, "seal", keys=[layout.meta], args=args(layout, now, names)))


def ahead(layout: Layout, now: float) -> float:
    """A clock one window of ``layout`` ahead of ``now``: the pass then takes the current window
    as over (:func:`to_the_end`)."""
    return (int(now // layout.length) + 1) * layout.length + 1.0


async def to_the_end(client: Any, keys: Keys, settings: Settings, *, through_now: bool = False) -> int:
    """The whole pass at once, for an operator (``messenger-worker seal``): every window due now,
    and with ``through_now`` the current ones too, so that no bucket written so far is left
    without an expiry (before rolling back to a version that sets them per write; writes after
    it set their own). Returns the bucket names done."""
    done, now = 0, time.time()
    for layout in layouts(keys, settings.record_retention, settings.idempotency_ttl):
        at = ahead(layout, now) if through_now else now
        while n := await step(client, layout, at, names=16 * NAMES_PER_CALL):
            done += n
    return done


async def run(
    client: Any,
    keys: Keys,
    settings: Settings,
    *,
    now: float | None = None,
    calls: int = CALLS_PER_RUN,
    budget_s: float = BUDGET_SECONDS,
) -> int:
    """The housekeeping's share of the pass: seal.lua calls, each layout's while it has a window
    due, in turn, at most ``calls`` of them and none started after ``budget_s`` (a slow Redis
    must not make the scheduler's tick a stall). Returns the bucket names done."""
    done = 0
    started = time.monotonic()
    for layout in layouts(keys, settings.record_retention, settings.idempotency_ttl):
        while calls > 0 and time.monotonic() - started < budget_s:
            calls -= 1
            n = await step(client, layout, time.time() if now is None else now)
            done += n
            if n == 0:
                break
    return done

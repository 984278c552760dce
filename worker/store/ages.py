"""The open deliveries' ages: what the backlog age (``oldest_open_age_s``, the backlog alert) reads.

Counts per second of acceptance, not an index entry per delivery::

    P:open:n    hash   second -> how many deliveries accepted in that second are open and not
                       parked (a parked delivery waits for its user on purpose: not a backlog)
    P:open:s    zset   those seconds, score = the second: the oldest is the first member

The scripts that accept, end, park, release and replay deliveries gather their changes per
second and write them at the end of the call (``store/lua/_ages.lua``): one ``HINCRBY`` per
second a call touched (a commit touches one), where a sorted set of every open delivery cost a
``ZADD`` and a ``ZREM`` per delivery and 146 bytes of Redis per open one. How many deliveries are
open is the counts' sum, kept as they change::

    P:open:c    string the sum of P:open:n (one INCRBY per script call; seeded from P:open:n by
                       the first call that finds it missing), so the status reads one key, not
                       every second; parked deliveries are ``P:parked``'s size

(``pending`` no longer has an entry per open delivery: a queued batch and a claim have one each,
store/lua/sweep.lua.)

Before this layout ``P:open`` was that sorted set. Its members are not counted here; they leave it
as they end, park or are released (the scripts check it while it exists), and the status read
(worker/status.py) reads it too while it has members: at most MESSAGE_TTL after an upgrade.

A count can only be wrong if a record vanishes while open (a manual ``DEL``; the service never
does it, and Redis evicts nothing under ``noeviction``, README.md): its second stays counted.
:func:`prune` (the scheduler's housekeeping) drops the seconds older than :func:`horizon`, so
such a count cannot hold the backlog age up for longer than that.
"""

from __future__ import annotations

from typing import Any, Final

from worker.store import scripts
from worker.store.keys import Keys

#: Seconds pruned per housekeeping run (bounded; older ones go the next run).
PRUNE_BATCH: Final = 1_000


def horizon(now: float, message_ttl: float) -> float:
    """Seconds before this no longer count: two MESSAGE_TTLs back. A delivery open that long is
    past its TTL (it ends EXPIRED when a worker next takes it) and still counted in ``open``."""
    return now - 2 * message_ttl


def first_second(reply: list[Any]) -> float | None:
    """The oldest counted second from ``ZRANGE P:open:s 0 0 WITHSCORES`` (None: none counted)."""
    return float(reply[0][1]) if reply else None


async def prune(client: Any, keys: Keys, before: float) -> int:
    """Drop the seconds before ``before`` (:func:`horizon`), at most PRUNE_BATCH, and their counts
    from the total (``ages_prune.lua``). Returns how many went. A script that later decrements a
    second pruned here writes a negative count, which it removes at once without taking it off
    the total again (_ages.lua)."""
    gone = await scripts.run(
        client,
        "ages_prune",
        keys=[keys.open_counts, keys.open_seconds, keys.open_total],
        args=[before, PRUNE_BATCH],
    )
    return int(gone)

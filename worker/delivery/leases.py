"""The claims a worker process holds, and their heartbeat.

Every claim (one ``claim.lua`` call: one Celery message's deliveries) has a fence token and a
lease of DELIVERY_LEASE_SECONDS. While the process works on a delivery (waiting for a pacing
slot, a free connection or Graph's answer) the heartbeat renews its lease every third of the
lease, in one ``renew.lua`` call per claim, so a live worker never loses a delivery it is working
on and the sweeper takes only deliveries whose holder stopped renewing (dead, or cut off from
Redis). When Redis does not answer, the heartbeat tries again every half second.

Before a Send API call the engine asks :meth:`Leases.safe_to_send`: the lease, as this process
last renewed it, must outlive the call's whole deadline (GRAPH_DEADLINE_SECONDS, at most half
the lease). A worker cut off from Redis therefore stops calling Graph before anyone else could
claim the deliveries it holds: the only duplicates left are a worker dying after Graph accepted
(the next claim is a *reclaim*, counted) and ambiguous answers (counted).

A renewal that finds a claim gone (the lease ran out while Redis was unreachable and another
worker claimed the delivery) marks it lost: this process no longer sends it, and its writes would
be refused by the fence anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
import redis.exceptions

from worker.config import Settings
from worker.delivery.model import Delivery
from worker.logging import get_logger
from worker.store import Keys, scripts, text

log = get_logger("worker.delivery")


@dataclass(frozen=True, slots=True)
class Unit:
    """A claim of a batch, as pending knows it: one entry (``t:{batch}:{token}``) for all its
    deliveries, and the list of their ids it keeps (store/lua/sweep.lua)."""

    member: str
    taken: str

    async def release(self, client: aioredis.Redis, pending: str) -> None:
        """The claim holds nothing more: its entry and its list go (if this fails, the sweeper
        removes them once the lease has ended)."""
        pipe = client.pipeline(transaction=True)
        pipe.zrem(pending, self.member)
        pipe.delete(self.taken)
        await pipe.execute()


#: How often a failed renewal is tried again.
RETRY_SECONDS = 0.5
#: Ids per renew.lua call.
CHUNK = 1000


class Leases:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        on_lost: Callable[[Sequence[Delivery]], None],
    ) -> None:
        self._client = client
        self._keys = Keys.of(settings)
        self._lease = settings.delivery_lease_seconds
        self._interval = settings.lease_renew_seconds
        self._deadline = settings.graph_deadline_seconds
        self._on_lost = on_lost
        #: fence token -> the deliveries held under it
        self._held: dict[str, dict[str, Delivery]] = {}
        #: fence token -> until when its lease is surely valid (local clock: sent before renewing)
        self._valid_until: dict[str, float] = {}
        self._lost: set[str] = set()
        #: fence token -> the claim's entry in pending, when it took a batch (claim.lua)
        self._units: dict[str, Unit] = {}
        self._renewed = asyncio.Event()

    def hold(
        self, token: str, deliveries: Iterable[Delivery], claimed_at: float, unit: Unit | None = None
    ) -> None:
        """Deliveries just claimed under ``token`` (``claimed_at``: the time sent in the claim;
        ``unit``: its entry in pending when it took a batch)."""
        held = self._held.setdefault(token, {})
        for d in deliveries:
            held[d.id] = d
        self._valid_until[token] = claimed_at + self._lease
        if unit is not None:
            self._units[token] = unit

    def drop(self, d: Delivery) -> Unit | None:
        """The delivery's outcome was written (or refused): it is no longer held. Returns the
        claim's unit once the claim holds nothing more (the caller removes it from Redis)."""
        held = self._held.get(d.claim)
        self._lost.discard(d.id)
        if held is not None:
            held.pop(d.id, None)
            if not held:
                del self._held[d.claim]
                self._valid_until.pop(d.claim, None)
                return self._units.pop(d.claim, None)
        return None

    def is_lost(self, d: Delivery) -> bool:
        return d.id in self._lost

    @property
    def count(self) -> int:
        return sum(len(h) for h in self._held.values())

    def remaining(self, d: Delivery, now: float | None = None) -> float:
        """Seconds the delivery's lease surely has left (0 once lost)."""
        if d.id in self._lost:
            return 0.0
        return self._valid_until.get(d.claim, 0.0) - (time.time() if now is None else now)

    async def safe_to_send(self, d: Delivery) -> bool:
        """True when a call started now ends before the lease could: waits (at most one renewal
        interval) for a renewal when the lease is short, False when it stays short or is lost."""
        deadline = time.monotonic() + self._interval
        while self.remaining(d) <= self._deadline:
            if d.id in self._lost or time.monotonic() >= deadline:
                return False
            self._renewed.clear()
            try:
                await asyncio.wait_for(self._renewed.wait(), timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                continue
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every held lease each interval (sooner after a failure), until ``stop`` is set."""
        failures = 0
        while not stop.is_set():
            wait = self._interval
            try:
                await self.renew_once()
                if failures:
                    log.info("lease.renewed_after_failures", failures=failures, held=self.count)
                failures = 0
            except (redis.exceptions.RedisError, OSError) as exc:
                failures += 1
                if failures == 1 or failures % 20 == 0:  # once, then every ~10 s of trouble
                    log.warning(
                        "lease.renew_failed", error=type(exc).__name__, failures=failures, held=self.count
                    )
                wait = RETRY_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def renew_once(self) -> int:
        """One round of renewals; returns how many claims were found lost."""
        lost_now: list[Delivery] = []
        for token, held in list(self._held.items()):
            ids = list(held)
            sent_at = time.time()
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start : start + CHUNK]
                lost = await scripts.run(
                    self._client,
                    "renew",
                    keys=[self._keys.pending],
                    args=[
                        repr(sent_at),
                        self._lease,
                        self._keys.delivery_prefix,
                        token,
                        unit.member if (unit := self._units.get(token)) else "",
                        *chunk,
                    ],
                )
                for raw in lost:
                    d = held.get(text(raw))
                    if d is not None and d.id not in self._lost:
                        self._lost.add(d.id)
                        lost_now.append(d)
            if token in self._valid_until:
                self._valid_until[token] = sent_at + self._lease
        self._renewed.set()
        if lost_now:
            self._on_lost(lost_now)
        return len(lost_now)

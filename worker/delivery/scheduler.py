"""The scheduler, in every worker process: waits that fall due go back to the queue, stalled
deliveries are swept back, and the housekeeping that belongs to no single delivery runs.

Every SCHEDULER_INTERVAL_SECONDS (0.1 s) while there is work, and up to SCHEDULER_IDLE_SECONDS
(1 s) apart when there is none (below), it

* releases due waits from ``P:sched`` (retries, rate limits, paused pages, deferred pacing
  slots; ``release_due.lua``) and publishes them at the head of the queue, where their reserved
  slots must not wait behind a backlog;
* sweeps ``P:pending`` (``sweep.lua``): open deliveries past their deadline whose Celery message
  was lost, or whose holder stopped renewing its lease, go back to the queue;
* every few seconds: says when page pauses ended and lifts token-invalid pauses whose page has a
  new token; purges dead letters past DEAD_LETTER_RETENTION (when set); gives the buckets of
  windows that are over their expiry (the seal pass, :mod:`worker.store.seals`);
* every minute, with REDIS_SHARDS: counts the pages whose state stayed on this shard while the
  shard list routes them elsewhere (``bmw_shard_stranded_pages``; docs/scaling.md).

The Braze outbox drains in a loop of its own (:meth:`worker.braze.OutboxDrainer.run`), so a slow
Braze does not hold these rounds up. A round that fails for any reason is logged and the next
one runs: the scheduler never ends before the process.

**Idle rounds.** A round that released and swept nothing, with nothing due in
``P:sched`` within SCHEDULER_IDLE_SECONDS, is followed by a wait of SCHEDULER_IDLE_SECONDS; while
a wait falls due sooner, rounds keep the interval's cadence. Waits this process schedules (a
retry, a deferred pacing slot, a page's pause: the recorder calls :meth:`Scheduler.expect`) wake
an idle scheduler for their due time, so they are released as promptly as before; one that
another process schedules is released by that process's scheduler, or by any one within
SCHEDULER_IDLE_SECONDS. An idle worker made about 13 Redis calls a second, most of them this
round's script: 1.8-2.7 ms of Redis CPU a second per idle worker, 0.4 now (``python -m
benchmarks.idle``). The idle wait never exceeds a quarter of a lease renewal, the stall that
makes the sweeper hold back (below), so no outage long enough to matter goes unnoticed between
two rounds.

**Sweeping after an outage.** A holder renews its leases every third of the lease. When Redis
was unreachable, stalled, or refusing writes (maxmemory, a read-only replica) for longer than
that, leases may have run out meanwhile although their holders are alive and renew as soon as
Redis takes writes again. So after any such trouble the scheduler does not sweep until Redis has
taken its writes for two renewal intervals: every live holder has renewed by then, and what is
left has really been abandoned. Each tick's first call writes (the tick key), so a Redis that
refuses writes is noticed on every tick, not only when there is something to sweep.
"""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics
from worker.config import PageTokens, Settings
from worker.delivery.pauses import PauseKeeper
from worker.logging import get_logger
from worker.store import Keys, ages, deadletters, envelope, scripts, seals, shards, text

log = get_logger("worker.delivery")
#: How often the pause housekeeping and the dead-letter retention run.
HOUSEKEEPING_SECONDS = 5.0
#: A page bucket unused this long leaves the status (P:rl:used).
BUCKETS_KEPT_SECONDS = 86_400
#: Ids released or swept per tick, at most.
CHUNK = 1000
#: How often a sharded worker looks for pages routed away from their state on its shard.
STRANDED_SECONDS = 60.0
#: Members of P:rl:used and of P:paused read for that, at most.
STRANDED_READ = 10_000


class Scheduler:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: Settings,
        tokens: PageTokens,
    ) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys.of(settings)
        self._pauses = PauseKeeper(client, self._keys, tokens)
        self._housekeeping_at = 0.0
        self._connected_since = time.monotonic()
        self._hold_off = 2 * settings.lease_renew_seconds
        #: A Redis call slower than this is a stall (holders may not have renewed meanwhile).
        self._stall = settings.lease_renew_seconds / 4
        self._stranded_at = 0.0
        self._stranded_noted: set[str] = set()
        #: When a round last succeeded (monotonic): the worker's /readyz (worker/health.py).
        self.last_ok = time.monotonic()
        self._idle = settings.scheduler_idle_wait
        #: What the last round saw: work done (the next round comes after the interval) and
        #: when the first wait left in P:sched falls due (epoch seconds; None: nothing waits).
        self._busy = True
        self._next_due: float | None = None
        #: The soonest wait this process scheduled that no round has reached yet (epoch seconds).
        self._expected: float | None = None
        #: When the next round starts (monotonic), and what wakes the wait for it early.
        self._wake_at = 0.0
        self._nudge = asyncio.Event()

    async def _stranded(self) -> None:
        """With REDIS_SHARDS: the pages that sent within a day (``P:rl:used``) or are paused on
        this shard but are routed to another now (a shard appended without the pins of
        ``messenger-worker shards plan``, a pin removed): their pause, windows, suppressions and
        links stayed here. A gauge (the BmwShardPagesStranded alert) and a warning naming each
        page once. Two bounded reads a minute (at most STRANDED_READ members each)."""
        keys, settings = self._keys, self._settings
        used = await self._client.zrange(keys.buckets, 0, STRANDED_READ - 1)
        pages = {keys.page_of_used(text(m)) for m in used}
        pages.update(text(p) for p in await self._client.zrange(keys.paused, 0, STRANDED_READ - 1))
        stranded = sorted(p for p in pages if p and not shards.owns_page(settings, p))
        metrics.SHARD_STRANDED.labels(str(settings.shard_index)).set(len(stranded))
        new = [p for p in stranded if p not in self._stranded_noted]
        if new:
            log.warning(
                "shards.stranded",
                shard=settings.shard_index,
                pages=new[:20],
                count=len(stranded),
                hint="messenger-worker shards check",
            )
        self._stranded_noted = set(stranded)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set (never cancelled mid-command: a cancelled Redis call can
        leave its connection in a state that blocks the pool's shutdown)."""
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
                failures = 0
                self.last_ok = time.monotonic()
            except (redis.exceptions.RedisError, OSError) as exc:
                failures += 1
                if failures == 1 or failures % 100 == 0:  # once, then every ~10 s of trouble
                    log.warning("scheduler.redis_error", error=type(exc).__name__, failures=failures)
                self._connected_since = time.monotonic()
            except Exception as exc:  # a bad round must not end the scheduler
                failures += 1
                log.exception("scheduler.round_failed", error=type(exc).__name__, failures=failures)
            else:
                if time.monotonic() - started > self._stall:
                    self._connected_since = time.monotonic()  # a stall: leases may have run out
            interval = self._settings.scheduler_interval_seconds
            self._wake_at = time.monotonic() + (self._wait_after(time.time()) if failures == 0 else interval)
            await self._sleep(stop)

    def _wait_after(self, now: float) -> float:
        """How long to wait after the last round, at epoch time ``now``: the interval after a
        round that did something or while a wait falls due within the idle wait (the rounds'
        cadence is then what it always was: pacing's deferred slots keep it), else the idle
        wait."""
        interval = self._settings.scheduler_interval_seconds
        if self._busy:
            return interval
        due = min((d for d in (self._next_due, self._expected) if d is not None), default=None)
        if due is not None and due - now < self._idle:
            return interval
        return self._idle

    def expect(self, due: float) -> None:
        """A wait this process scheduled falls due at ``due`` (epoch seconds): the next round
        comes no later (and no sooner than the interval after the last). Called on the engine's
        loop."""
        if self._expected is None or due < self._expected:
            self._expected = due
        at = time.monotonic() + (due - time.time())
        if at < self._wake_at:
            self._wake_at = at
            self._nudge.set()

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Until ``_wake_at`` (which :meth:`expect` may bring forward) or ``stop``."""
        earliest = time.monotonic() + self._settings.scheduler_interval_seconds
        while not stop.is_set():
            left = max(self._wake_at, earliest) - time.monotonic()
            if left <= 0:
                return
            self._nudge.clear()
            stopping = asyncio.ensure_future(stop.wait())
            nudged = asyncio.ensure_future(self._nudge.wait())
            try:
                await asyncio.wait({stopping, nudged}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                nudged.cancel()

    @property
    def may_sweep(self) -> bool:
        return time.monotonic() - self._connected_since >= self._hold_off

    async def _seal(self) -> None:
        """The housekeeping's share of the seal pass (bucket expiries, store/seals.py). Its
        failure is logged and left to the next run: the tick goes on."""
        try:
            sealed = await seals.run(self._client, self._keys, self._settings)
        except redis.exceptions.ResponseError as exc:  # a script error: the next run tries again
            log.warning("buckets.seal_failed", error=str(exc)[:200])
            return
        if sealed:
            log.debug("buckets.sealed", names=sealed)

    async def tick(self) -> int:
        """Release due waits and sweep stalled deliveries to the queue. Returns ids enqueued."""
        s, keys = self._settings, self._keys
        started = time.monotonic()
        if self._expected is not None and self._expected <= time.time():
            self._expected = None  # this round releases it
        released, first_due = await scripts.run(  # fails while Redis refuses writes: no sweep then
            self._client,
            "release_due",
            keys=[keys.sched, keys.scheduler_tick],
            args=[repr(time.time()), CHUNK],
        )
        self._next_due = float(first_due) if first_due else None
        if time.monotonic() - started > self._stall:
            # Redis just answered after a stall (or a SIGSTOP): holders have not renewed yet
            self._connected_since = time.monotonic()
        swept: list[bytes] = []
        if self.may_sweep:  # "now" as of this call: a sweep delayed by a stall judges the past
            swept = await scripts.run(
                self._client,
                "sweep",
                keys=[keys.pending, keys.sched, keys.open, keys.queue],
                args=[
                    repr(time.time()),
                    CHUNK,
                    s.sweep_after_seconds,
                    keys.delivery_prefix,
                    keys.batch_prefix,
                ],
            )
        # each id once: one falling due as its deadline passes is both released and swept
        ids = list(dict.fromkeys(text(i) for i in [*released, *swept]))
        await envelope.publish(self._client, s.queue_name, ids, s.batch_max, front=True)
        if swept:
            log.info("scheduler.swept", count=len(swept))
            metrics.SWEPT.inc(len(swept))
        lifted = 0  # waits a lifted pause made due: released by the next round, not an idle wait on
        if time.monotonic() - self._housekeeping_at >= HOUSEKEEPING_SECONDS:
            self._housekeeping_at = time.monotonic()
            lifted = await self._pauses.tick()
            await self._client.zremrangebyscore(keys.buckets, "-inf", time.time() - BUCKETS_KEPT_SECONDS)
            await ages.prune(self._client, keys, ages.horizon(time.time(), s.message_ttl))
            purged = await deadletters.purge_expired(self._client, s)
            if purged:
                log.info("deadletters.expired", count=purged, retention_s=s.dead_letter_retention)
            await self._seal()
        if (
            self._settings.shard_index is not None
            and time.monotonic() - self._stranded_at >= STRANDED_SECONDS
        ):
            self._stranded_at = time.monotonic()
            await self._stranded()
        self._busy = bool(ids or lifted)
        return len(ids)

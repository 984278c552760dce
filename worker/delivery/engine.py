"""The delivery engine: one asyncio event loop per worker process that sends claimed deliveries.

A Celery task hands the engine a batch (:meth:`Engine.run_batch`, from a pool thread that returns
once the batch is claimed). The engine

1. **admits** it when the process holds fewer than ENGINE_MAX_CLAIMED deliveries (the task's
   thread waits for room: backpressure);
2. **claims** it in one ``claim.lua`` call under a fresh fence token (retried on a Redis error:
   a retry with the same token takes back what the lost answer had claimed) and hands the claim
   to :class:`~worker.delivery.leases.Leases`, whose heartbeat renews it while it is held;
3. runs each **recipient group** (deliveries to one PSID, oldest first, one after another;
   groups concurrently) through :class:`~worker.delivery.attempt.Sender`;
4. **records** each outcome the moment it is decided (:class:`~worker.delivery.recorder.Recorder`:
   batched writes, fenced, retried until they land), not when the batch's slowest member returns.

An error in one group (Redis refusing its pacing call, a bug) hands back only that group's
deliveries (released, due again after ENGINE_ERROR_RETRY_SECONDS); the others carry on. On
shutdown no new call starts, deliveries not yet sent are handed back at once, calls in flight
are answered (each has a deadline), every outcome is written, and only then do the heartbeat and
the connections stop.

Duplicates: a live worker sends a delivery at most once per claim, only while its lease outlives
the call, and a claim is only granted to one worker at a time. What is left (README
"At-least-once"): a worker that dies after Graph accepted and before the outcome was written (the
next claim is a reclaim, counted), and ambiguous calls (counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions

from worker.braze import OutboxDrainer, braze_config
from worker.config import PageTokens, Settings
from worker.delivery.attempt import BatchContext, Released, Sender
from worker.delivery.leases import Leases, Unit
from worker.delivery.model import Delivery, Outcome
from worker.delivery.observers import Observer, default_observers
from worker.delivery.recorder import Recorder
from worker.delivery.scheduler import Scheduler
from worker.graph import GraphClient
from worker.logging import get_logger
from worker.ratelimit import Limiter
from worker.states import Event
from worker.store import Keys, campaign_ctx, connections, ids, records, scripts, text
from worker.templates.sync import TemplateRefresher

log = get_logger("worker.delivery")
T = TypeVar("T")
#: A group handed back after an engine error is due again this much later.
ENGINE_ERROR_RETRY_SECONDS = 1.0
#: How long a claim is retried while Redis does not answer, before the task gives up (its
#: message is then requeued: worker/tasks.py).
CLAIM_RETRY_SECONDS = 60.0
#: A batch list taken by a claim is kept this long, for a retry of that claim.
TAKEN_LIST_SECONDS = int(CLAIM_RETRY_SECONDS) + 30
#: On shutdown, how long the outcomes still queued may take to be written.
FLUSH_SECONDS = 30.0
#: How often the engine reads the stopped campaigns (P:campstop): a delivery it holds whose
#: campaign was stopped starts no Graph call once this has passed (worker/campaigns.py).
STOP_WATCH_SECONDS = 0.5
#: How often a process that holds no delivery looks whether it holds one now (in memory).
IDLE_LOOK_SECONDS = 0.05


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (uvicorn[standard] brings it; the intake runs on it too), else
    asyncio's own loop (measured: about 10% less worker CPU per message on uvloop)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows, where uvloop does not exist
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class ClaimUnavailable(Exception):
    """Redis did not answer the claim for CLAIM_RETRY_SECONDS."""


class Room:
    """How many claimed deliveries the process holds, at most ENGINE_MAX_CLAIMED (a batch
    larger than that goes alone)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._changed = asyncio.Event()
        #: the smallest room a waiting batch needs (0: nobody waits)
        self._wanted = 0

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.size:
            self._wanted = min(self._wanted, n) if self._wanted else n
            self._changed.clear()
            await self._changed.wait()
        self.used += n

    def give(self, n: int) -> None:
        """Called once per delivery written: wakes the waiting batches only when one fits."""
        self.used -= n
        if self._wanted and (self.used == 0 or self.used + self._wanted <= self.size):
            self._wanted = 0
            self._changed.set()


class Engine:
    """Owns the process's event loop thread, its Redis client, its Graph client and the parts."""

    def __init__(self, settings: Settings, graph: GraphClient | None = None) -> None:
        self.settings = settings
        self.keys = Keys.of(settings)
        self.tokens = PageTokens(settings)
        self.worker_id = ids.new_delivery_id()
        self._graph = graph
        self._claims = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._redis: aioredis.Redis | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stop: asyncio.Event
        self._closing = False
        self.room: Room
        self.observer: Observer
        self.leases: Leases
        self.recorder: Recorder
        self.sender: Sender
        self.scheduler: Scheduler | None = None
        self._drainer: OutboxDrainer | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self, *, scheduler: bool = True) -> None:
        with self._lock:
            if self._loop is not None:
                return
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run_loop, args=(ready,), name="engine", daemon=True)
            self._thread.start()
            ready.wait()
        self.submit(self._setup(scheduler)).result()

    def _run_loop(self, ready: threading.Event) -> None:
        loop = _new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        ready.set()
        loop.run_forever()
        loop.close()

    async def _setup(self, with_scheduler: bool) -> None:
        s = self.settings
        self._redis = client = connections.async_client(s, max_connections=32, timeout=10)
        if self._graph is None:
            self._graph = GraphClient(
                base_url=s.graph_base,
                app_secret=s.app_secret.get_secret_value() if s.app_secret else None,
                connect_timeout=s.graph_connect_timeout,
                read_timeout=s.graph_read_timeout,
                max_connections=max(s.worker_max_inflight, 10),
            )
        config = braze_config(s)
        self.observer = default_observers(s, config.psid_attribute if config else None)
        self.room = Room(s.engine_max_claimed)
        self.leases = Leases(client, s, self._on_lost)
        self.recorder = Recorder(client, s, self.tokens, self.observer)
        self.sender = Sender(
            s,
            self.tokens,
            limiter=Limiter(client, s),
            graph=self._graph,
            leases=self.leases,
            observer=self.observer,
        )
        self._stop = asyncio.Event()
        self._background.append(asyncio.create_task(self.leases.run(self._stop)))
        self._background.append(asyncio.create_task(self._watch_stops()))
        if with_scheduler:
            self.scheduler = Scheduler(client, s, self.tokens)
            if config is not None:  # the Braze outbox drains in a loop of its own
                self._drainer = OutboxDrainer(client, self.keys, config, self.worker_id)
                drain = self._drainer.run(self._stop, s.scheduler_interval_seconds, s.scheduler_idle_wait)
                self._background.append(asyncio.create_task(drain))
            self.recorder.on_due = self.scheduler.expect  # its waits wake an idle scheduler
            self._background.append(asyncio.create_task(self.scheduler.run(self._stop)))
            # the utility-template catalogues' periodic sync (TEMPLATE_SYNC_SECONDS; one worker a turn)
            refresher = TemplateRefresher(client, s, self.tokens)
            self._background.append(asyncio.create_task(refresher.run(self._stop)))

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            raise RuntimeError("engine not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self.submit(self._teardown()).result(
                timeout=self.settings.graph_deadline_seconds + FLUSH_SECONDS + 15
            )
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop = None

    async def _teardown(self) -> None:
        self._closing = True
        self.sender.draining = True  # no new call; what is not sent yet is handed back
        if self._batches:
            _, late = await asyncio.wait(
                list(self._batches), timeout=self.settings.graph_deadline_seconds + 5
            )
            for task in late:  # cannot happen with every call under its deadline; their leases end
                task.cancel()
            if late:
                log.warning("engine.drain_timeout", batches=len(late))
        flush = asyncio.ensure_future(self.recorder.flush())
        _, unfinished = await asyncio.wait({flush}, timeout=FLUSH_SECONDS)
        if unfinished:  # Redis stayed away: those deliveries' leases end, the sweeper has them
            flush.cancel()
            log.error("engine.outcomes_unwritten", count=self.recorder.waiting)
        self._stop.set()  # the heartbeat and the scheduler finish their round and stop
        _, stuck = await asyncio.wait(self._background, timeout=15)
        for task in stuck:
            log.warning("engine.stop_stuck", task=repr(task.get_coro()), stack=str(task.get_stack()))
            task.cancel()
        if self._graph is not None:
            await self._graph.aclose()
        if self._drainer is not None:
            await self._drainer.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def _watch_stops(self) -> None:
        """Keep the Sender's set of stopped campaigns fresh while the process holds deliveries
        (one ZRANGE every STOP_WATCH_SECONDS; a Redis error keeps the last answer). A process
        that holds none reads nothing, and reads again within IDLE_LOOK_SECONDS of its next
        claim: claim.lua takes no delivery of a campaign stopped before it, and a set older than
        a resume only makes a delivery wait briefly (record.lua decides atomically)."""
        key = self.keys.campaigns_stopped
        while not self._stop.is_set():
            held = self.room.used > 0
            if held:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    self.sender.stopped = frozenset(text(m) for m in await self.redis.zrange(key, 0, -1))
            try:
                await asyncio.wait_for(self._stop.wait(), STOP_WATCH_SECONDS if held else IDLE_LOOK_SECONDS)
            except TimeoutError:
                continue

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("engine not started")
        return self._redis

    # --- a batch ----------------------------------------------------------------------------------
    def run_batch(self, ids: list[str] | None = None, *, batch: str | None = None) -> dict[str, int]:
        """For Celery tasks: claim ``ids`` (or the intake's gathered ``batch``) and start sending
        them on the engine's loop. Returns once they are claimed (never waits for slots or Graph).
        Raises ClaimUnavailable when Redis did not answer for CLAIM_RETRY_SECONDS."""
        return self.submit(self.accept_batch(ids or [], batch=batch)).result()

    async def accept_batch(self, ids: list[str], *, batch: str | None = None) -> dict[str, int]:
        if self._closing:
            raise ClaimUnavailable("the engine is stopping")
        # a gathered batch's size is known once it is taken: room for the most it can hold first
        admitted = len(ids) if batch is None else self.settings.queue_batch_max
        await self.room.take(admitted)
        try:
            looked_at, claimed = await self._claim(ids, batch)
        except BaseException:
            self.room.give(admitted)
            raise
        if looked_at > admitted:  # one commit bigger than QUEUE_BATCH_MAX makes a batch alone
            self.room.used += looked_at - admitted
            admitted = looked_at
        self.room.give(admitted - len(claimed))  # what was not claimed needs no room
        if claimed:
            task = asyncio.create_task(self._run(claimed))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
        return {"claimed": len(claimed)}

    async def _claim(self, ids: list[str], batch: str | None) -> tuple[int, list[Delivery]]:
        """(ids looked at, the deliveries claimed). One fence token for the whole claim, reused
        when a Redis error makes us ask again (so the retry takes back what the first got)."""
        s = self.settings
        token = f"{self.worker_id}.{next(self._claims):x}"
        keys = [self.keys.pending]
        args: list[Any] = [s.delivery_lease_seconds, self.keys.delivery_prefix, token, TAKEN_LIST_SECONDS]
        named: list[str] = ids
        unit: Unit | None = None  # a claim of a batch: its one entry in pending and its taken list
        if batch is not None:  # the list is taken whole (and the gather pointer cleared)
            unit = Unit(self.keys.claim_entry(batch, token), self.keys.batch_taken(batch, token))
            keys += [self.keys.batch(batch), self.keys.gather, unit.taken]
            named = [batch]
        give_up = time.monotonic() + CLAIM_RETRY_SECONDS
        failures = 0
        # the lease is counted from the first try: a retry with the token may take back
        # deliveries whose lease the first (its answer lost) set, and claim.lua keeps it
        first = time.time()
        # what the claim ended CANCELLED itself (a stopped campaign's, an operator's), from each
        # answer received: a retry does not cancel them again (an answer lost loses their count)
        cancels: list[tuple[str, str, int]] = []
        while True:
            now = time.time()
            context = campaign_ctx.of_settings(self.keys, s, now)
            try:
                raw = await scripts.run(
                    self.redis, "claim", keys=keys, args=[repr(now), *args, *context, *named]
                )
                cancels += scripts.cancels(raw[1])
                taken = [text(i) for i in raw[2:]]
                # a failed read asks the claim again: with this token it gives back the same ids
                recs = await records.read_claimed(self.redis, self.keys.delivery_prefix, taken)
                break
            except (redis.exceptions.RedisError, OSError) as exc:
                failures += 1
                if time.monotonic() >= give_up:
                    raise ClaimUnavailable(type(exc).__name__) from None
                log.warning("engine.claim_retry", error=type(exc).__name__, failures=failures)
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))
        if cancels:
            self.observer.cancelled_at_claim(cancels)
        claimed = [Delivery.from_record(i, token, rec) for i, rec in zip(taken, recs, strict=True) if rec]
        if len(claimed) < len(taken):  # cannot happen: only the holder ends a claimed delivery
            log.warning("engine.claimed_record_missing", count=len(taken) - len(claimed))
        if claimed:
            self.leases.hold(token, claimed, first, unit)
            self.observer.claimed(claimed)
        return int(raw[0]), claimed

    async def _run(self, claimed: list[Delivery]) -> None:
        try:
            ctx = await self.sender.context(self.redis, claimed)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("engine.batch_released", error=type(exc).__name__, count=len(claimed))
            for d in claimed:
                self._finish(
                    Outcome(d, Event.RELEASE, reason="engine_error", delay=ENGINE_ERROR_RETRY_SECONDS)
                )
            return
        early = {}
        for d in claimed:
            outcome = self.sender.precheck(d, ctx)
            if outcome is not None:
                early[d.id] = outcome
        # deliveries to one recipient go one after another, oldest first; recipients concurrently
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for d in sorted(claimed, key=lambda d: d.created_at):
            groups.setdefault((d.page_id, d.psid), []).append(d)
        try:
            await self.sender.reserve([g[0] for g in groups.values() if g[0].id not in early])
        except (redis.exceptions.RedisError, OSError) as exc:  # each send asks for its own slot
            log.warning("engine.reserve_failed", error=type(exc).__name__)
        await asyncio.gather(*(self._run_group(g, ctx, early) for g in groups.values()))

    async def _run_group(
        self, group: Sequence[Delivery], ctx: BatchContext, early: dict[str, Outcome]
    ) -> None:
        for i, d in enumerate(group):
            if self.leases.is_lost(d):
                self._abandon(d)
                continue
            attempts = d.attempts
            try:
                outcome = early.get(d.id) or await self.sender.deliver(d, ctx)
            except Released as released:
                outcome = Outcome(d, Event.RELEASE, reason=released.reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # only this group is handed back
                log.exception("engine.group_failed", error=type(exc).__name__, count=len(group) - i)
                for rest in group[i:]:
                    self._finish(self._handed_back(rest, called=rest is d and d.attempts > attempts))
                return
            self._finish(outcome)

    def _handed_back(self, d: Delivery, *, called: bool) -> Outcome:
        """A delivery handed back after an unexpected error. ``called``: the error came after its
        Graph call started, so Graph may have it: sent again later, it is counted and logged as
        a possible duplicate (an answer the engine lost), never silently."""
        outcome = Outcome(d, Event.RELEASE, reason="engine_error", delay=ENGINE_ERROR_RETRY_SECONDS)
        if called:
            outcome.possible_duplicate = True
            self.observer.answer_lost(d)
        return outcome

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Fire and forget (the result does not matter: what is left, the sweeper removes)."""

        async def quietly() -> None:
            try:
                await coro
            except (redis.exceptions.RedisError, OSError):
                return

        task = asyncio.ensure_future(quietly())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _finish(self, outcome: Outcome) -> None:
        """Queue the outcome's write; the delivery stops being held once it is written."""
        d = outcome.delivery
        future = self.recorder.record(outcome)
        future.add_done_callback(lambda _f: self._done(d))

    def _done(self, d: Delivery) -> None:
        unit = self.leases.drop(d)
        if unit is not None:  # the claim is done with its batch: its entry in pending goes
            self._spawn(unit.release(self.redis, self.keys.pending))
        self.room.give(1)

    def _abandon(self, d: Delivery) -> None:
        """Its claim is another worker's now: nothing to send, nothing to write."""
        self._done(d)

    def _on_lost(self, deliveries: Sequence[Delivery]) -> None:
        self.observer.lost(deliveries)


@dataclass
class _EngineHolder:
    engine: Engine | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_HOLDER = _EngineHolder()


def process_engine(settings_factory: Any) -> Engine:
    """The engine of this process, created and started on first use (after any fork)."""
    with _HOLDER.lock:
        if _HOLDER.engine is None:
            engine = Engine(settings_factory())
            engine.start()
            _HOLDER.engine = engine
        return _HOLDER.engine


def stop_process_engine() -> None:
    with _HOLDER.lock:
        if _HOLDER.engine is not None:
            _HOLDER.engine.stop()
            _HOLDER.engine = None
            log.info("engine.stopped")

"""The delivery engine: one asyncio event loop per worker process that sends batches concurrently.

A Celery task hands the engine a batch of delivery ids (:meth:`Engine.run_batch`, called from the
pool's threads, which return once the batch is claimed); the engine claims them in one Lua call,
paces (:mod:`worker.ratelimit`) and sends every claimed delivery concurrently
over one shared Graph client (at most WORKER_MAX_INFLIGHT calls in flight per process), carries
out :func:`worker.policy.decide` for each answer and records every outcome in one pipeline. The
same loop runs the scheduler: it releases due waits (retries, rate limits, paused pages) and
sweeps deliveries that made no progress (lost Celery messages, killed workers) back to the queue.

Each message keeps its own status, attempts, retries and final outcome; batching only shares the
Redis round trips and the event loop.

At-least-once: a delivery is sent at most once per claim, and a claim is only granted to one
worker at a time (lease). A duplicate Send API call can happen only when (a) a worker dies or
loses Redis after Graph accepted the message but before the outcome was written (the lease
expires and the delivery is sent again), or (b) a call is ambiguous (read timeout after the
request was sent, connection dropped mid-answer, Graph 1/1357046) and is retried; (b) is logged
as ``possible_duplicate`` and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics, store
from worker.braze import BrazeClient, BrazeOutbox, outcome_event_item, unreachable_item
from worker.config import PageTokens, Settings
from worker.delivery import inbound, policy
from worker.delivery.policy import Action, Decision, decide
from worker.graph import GraphClient, GraphError, SendResult
from worker.logging import get_logger, recipient_ref
from worker.messenger.validation import message_kind
from worker.ratelimit import Limiter
from worker.store import connections as redisconn
from worker.store import envelope as broker

log = get_logger("worker.delivery")
T = TypeVar("T")
#: On shutdown, how long claimed batches may take to finish (then their leases bring them back).
DRAIN_SECONDS = 20.0


@dataclass
class Delivery:
    """A claimed delivery, decoded from its record."""

    id: str
    page_id: str
    psid: str
    body: dict[str, Any]
    token: str = field(repr=False)  # a passthrough page token: never in a repr
    created_at: float
    attempts: int
    failures: int
    fallback_tags: list[str]
    tags_tried: list[str]
    status: str
    request_id: str = ""
    #: The fallback tag in use when a retry was scheduled ("" = the body as accepted).
    active_tag: str = ""
    #: A pacing slot reserved when the delivery was deferred (epoch seconds; 0 = none).
    slot_at: float = 0.0
    #: slot_at was free when reserved (this batch's reservation, not a deferral; not stored).
    slot_free: bool = False
    #: The Braze user (X-Braze-External-Id at the intake, or learned from a Messenger ref).
    external_id: str = ""
    #: Set when Graph said the window is closed in this round (not stored in the record).
    window_closed_seen: bool = False
    #: This round's send was the probe after a page pause (not stored).
    probe: bool = False

    @classmethod
    def from_record(cls, delivery_id: str, rec: dict[str, str]) -> Delivery:
        return cls(
            id=delivery_id,
            page_id=rec.get("page_id", ""),
            psid=rec.get("psid", ""),
            body=orjson.loads(rec.get("body", "{}")),
            token=rec.get("token", ""),
            created_at=float(rec.get("created_at", "0") or 0),
            attempts=int(rec.get("attempts", "0") or 0),
            failures=int(rec.get("failures", "0") or 0),
            fallback_tags=orjson.loads(rec.get("fallback_tags") or "[]"),
            tags_tried=orjson.loads(rec.get("tags_tried") or "[]"),
            status=rec.get("status", ""),
            request_id=rec.get("request_id", ""),
            active_tag=rec.get("active_tag", ""),
            slot_at=float(rec.get("slot_at") or 0),
            external_id=rec.get("external_id", ""),
        )


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (uvicorn[standard] brings it; the intake runs on it too), else
    asyncio's own loop. Worker CPU ms per message on the delivery benchmark, four rounds each:
    0.50, 0.50, 0.54, 0.76 on uvloop; 0.54, 0.60, 0.61, 0.75 on asyncio's loop (medians 0.52 and
    0.61; this machine's noise is of the same order)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - e.g. Windows, where uvloop does not exist
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class Outcome:
    """What happened to one delivery in this round; turned into Redis writes and log lines."""

    delivery: Delivery
    status: str  # sent | failed | expired | dead | retrying
    reason: str | None = None
    delay: float = 0.0
    result: SendResult | None = None
    error: GraphError | None = None
    delivered_tag: str | None = None
    suppress: bool = False
    suppress_tagged: bool = False
    pause: tuple[float, str, int | None] | None = None  # (seconds, reason, code)
    possible_duplicate: bool = False


def release_lookahead(settings: Settings) -> float:
    """How long before its reserved slot a deferred delivery is released to the queue: most of
    the hold, so the path back (schedule, Celery, claim) has time and the slot is awaited on the
    event loop; at least two scheduler ticks."""
    return max(0.6 * settings.pace_max_hold_seconds, 2 * settings.scheduler_interval_seconds)


def token_fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class PagePause:
    until: float
    reason: str
    token_fp: str = ""


class Engine:
    """Owns the process's event loop thread, its Redis client and its Graph client."""

    def __init__(self, settings: Settings, graph: GraphClient | None = None) -> None:
        self.settings = settings
        self.keys = store.Keys(settings.key_prefix, settings.queue_name)
        self.tokens = PageTokens(settings)
        self._graph = graph
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._redis: aioredis.Redis | None = None
        self._sem: asyncio.Semaphore | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._pauses_checked = 0.0
        self._slowed: dict[str, float] = {}
        self._page_label = metrics.PageLabels(settings)
        self._braze_config = inbound.braze_config(settings)
        self._braze_client: BrazeClient | None = None
        self._braze_lock_held = False
        self._worker_id = broker.new_delivery_id()
        self.limiter: Limiter | None = None
        self._batches: set[asyncio.Future[Any]] = set()
        self._claimed = 0
        self._max_claimed = settings.engine_max_claimed
        self._room = asyncio.Condition()  # bound to the engine's loop on first use

    # --- lifecycle -------------------------------------------------------------------------
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

    async def _setup(self, scheduler: bool) -> None:
        s = self.settings
        self._redis = redisconn.async_client(s, max_connections=32, timeout=10)
        self._sem = asyncio.Semaphore(s.worker_max_inflight)
        self.limiter = Limiter(self._redis, s)
        if self._graph is None:
            self._graph = GraphClient(
                base_url=s.graph_base,
                app_secret=s.app_secret.get_secret_value() if s.app_secret else None,
                connect_timeout=s.graph_connect_timeout,
                read_timeout=s.graph_read_timeout,
                max_connections=max(s.worker_max_inflight, 10),
            )
        for name, src in (
            ("claim", store.CLAIM_LUA),
            ("release", store.RELEASE_LUA),
            ("sweep", store.SWEEP_LUA),
            ("pause", store.PAUSE_LUA),
            ("final", store.FINAL_LUA),
        ):
            self._scripts[name] = self._redis.register_script(src)
        if scheduler:
            self._scheduler = asyncio.create_task(self._schedule_forever())

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        if self._loop is None:
            raise RuntimeError("engine not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self.submit(self._teardown()).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop = None

    async def _teardown(self) -> None:
        if self._batches:  # let claimed batches finish (slots within the hold, calls in flight)
            _, late = await asyncio.wait(list(self._batches), timeout=DRAIN_SECONDS)
            for task in late:  # their leases bring them back
                task.cancel()
            if late:
                log.warning("engine.drain_timeout", batches=len(late))
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        if self._graph is not None:
            await self._graph.aclose()
        if self._braze_client is not None:
            await self._braze_client.aclose()
        if self._braze_lock_held:
            await self.redis.delete(f"{self.settings.key_prefix}:braze:lock")
        if self._redis is not None:
            await self._redis.aclose()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("engine not started")
        return self._redis

    # --- the batch -------------------------------------------------------------------------
    def run_batch(self, ids: list[str] | None = None, *, batch: str | None = None) -> dict[str, int]:
        """Entry point for Celery tasks: claim the batch (``ids``, or the intake's gathered
        ``batch``) and start it on the engine's loop.

        The pool thread returns once the batch is claimed; it never waits for pacing slots or
        Graph answers, so a page at its limit cannot occupy the threads other pages need. The
        engine admits at most ``ENGINE_MAX_CLAIMED`` claimed deliveries at a time (the thread
        waits for room: backpressure). A claimed delivery is covered by its lease: if this
        process dies before recording an outcome, the sweeper re-enqueues it when the lease ends.
        """
        return self.submit(self.accept_batch(ids or [], batch=batch)).result()

    async def accept_batch(self, ids: list[str], *, batch: str | None = None) -> dict[str, int]:
        # a gathered batch's size is known once it is taken: room for the most it can hold first
        admitted = len(ids) if batch is None else self.settings.queue_batch_max
        await self._admit(admitted)
        try:
            looked_at, claimed = await self._claim(ids, batch)
        except BaseException:
            self._release(admitted)
            raise
        if looked_at > admitted:  # one commit bigger than QUEUE_BATCH_MAX makes a batch alone
            self._claimed += looked_at - admitted
            admitted = looked_at
        if len(claimed) < admitted:  # what was not claimed needs no room
            self._release(admitted - len(claimed))
            admitted = len(claimed)
        if not claimed:
            return {"claimed": 0}
        task = asyncio.create_task(self._run_detached(claimed, admitted))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        return {"claimed": len(claimed)}

    async def _admit(self, n: int) -> None:
        async with self._room:
            # a batch larger than the whole allowance still goes alone
            await self._room.wait_for(lambda: self._claimed == 0 or self._claimed + n <= self._max_claimed)
            self._claimed += n

    def _release(self, n: int) -> None:
        self._claimed -= n

        async def notify() -> None:
            async with self._room:
                self._room.notify_all()

        task = asyncio.ensure_future(notify())
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_detached(self, claimed: list[Delivery], admitted: int) -> None:
        try:
            await self._process_claimed(claimed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the leases bring the deliveries back
            log.exception("engine.batch_failed", error=type(exc).__name__, count=len(claimed))
        finally:
            self._release(admitted)

    async def _claim(self, ids: list[str], batch: str | None = None) -> tuple[int, list[Delivery]]:
        """(ids looked at, the deliveries claimed) for ``ids`` or the gathered ``batch``."""
        s = self.settings
        keys = [self.keys.pending]
        if batch is not None:  # the list is taken whole (and the gather pointer cleared)
            keys += [self.keys.batch(batch), self.keys.gather]
            ids = [batch]
        raw = await self._scripts["claim"](
            keys=keys, args=[repr(time.time()), s.delivery_lease_seconds, s.key_prefix, *ids]
        )
        metrics.WORKER_BATCHES.inc()
        return int(raw[0]), [
            Delivery.from_record(store._s(raw[i]), store.decode_record(raw[i + 1]))
            for i in range(1, len(raw), 2)
        ]

    async def _process_claimed(self, claimed: list[Delivery]) -> dict[str, int]:
        context = await self._context(claimed)
        early: dict[str, Outcome] = {}
        for d in claimed:
            outcome = await self._precheck(d, context)
            if outcome is not None:
                early[d.id] = outcome
        context["early"] = early
        # Deliveries to one recipient go one after another, oldest first (order within a thread);
        # different recipients go concurrently.
        groups: dict[tuple[str, str], list[Delivery]] = {}
        for d in sorted(claimed, key=lambda d: d.created_at):
            groups.setdefault((d.page_id, d.psid), []).append(d)
        await self._reserve([g[0] for g in groups.values() if g[0].id not in early])

        async def run_group(group: list[Delivery]) -> list[Outcome]:
            return [await self._deliver(d, context) for d in group]

        tasks = [asyncio.ensure_future(run_group(g)) for g in groups.values()]
        # One turn of the loop runs each group's first step. Groups done by then (a reserved
        # slot beyond the hold deferred, a precheck outcome) are recorded at once, not after the
        # batch's other sends: a deferral's release (its slot minus the lookahead) must not pass
        # while it waits for them, or its slot is lost (a gap in the page's pace).
        await asyncio.sleep(0)
        running = [t for t in tasks if not t.done()]
        outcomes: list[Outcome] = []
        if running and len(running) < len(tasks):
            outcomes = [o for t in tasks if t.done() for o in t.result()]
            await self._record(outcomes)
            tasks = running
        rest = [o for group in await asyncio.gather(*tasks) for o in group]
        await self._record(rest)
        outcomes += rest
        counts: dict[str, int] = {}
        for outcome in outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    async def _context(self, claimed: list[Delivery]) -> dict[str, Any]:
        """Suppressions and page pauses for the batch, in one round trip."""
        pages = sorted({d.page_id for d in claimed})
        n = len(claimed)
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget(  # one command for every per-delivery key (suppressions are SET ... EX strings)
            [self.keys.suppressed(d.page_id, d.psid) for d in claimed]
            + [self.keys.tag_suppressed(d.page_id, d.psid) for d in claimed]
            + [inbound.window_key(self.settings, d.page_id, d.psid) for d in claimed]
            + [inbound.external_key(self.settings, d.page_id, d.psid) for d in claimed]
        )
        for page in pages:
            pipe.hgetall(self.keys.pause(page))
        res = await pipe.execute()
        values = res[0]
        windows_raw, externals_raw = values[2 * n : 3 * n], values[3 * n :]
        now = time.time()
        windows = {
            d.id: inbound.window_closed(None if w is None else store._s(w), now)
            for d, w in zip(claimed, windows_raw, strict=True)
        }
        for d, e in zip(claimed, externals_raw, strict=True):
            if not d.external_id and e is not None:
                d.external_id = store._s(e)
        supp = {d.id: (values[i] is not None, values[n + i] is not None) for i, d in enumerate(claimed)}
        pauses: dict[str, PagePause] = {}
        for j, page in enumerate(pages):
            rec = store.decode_record(res[1 + j]) if res[1 + j] else {}
            # paused, or over with its probe still out: wait (a reserved slot must not slip through)
            until = max(float(rec.get("until", "0")), float(rec.get("probe", "0"))) if rec else 0.0
            if until > time.time():
                pauses[page] = PagePause(until, rec.get("reason", ""), rec.get("token_fp", ""))
        return {"supp": supp, "pauses": pauses, "window_closed": windows, "first_tag": {}}

    def _token_for(self, d: Delivery) -> str | None:
        return d.token or self.tokens.get(d.page_id)

    async def _reserve(self, heads: list[Delivery]) -> None:
        """Pacing slots for the first send to each recipient of the batch: one round trip per
        (page, class) instead of one per send. Later sends to the same recipient wait for the
        first's answer, so they ask on their own; so does every send of a page with a pause."""
        if self.limiter is None:
            raise RuntimeError("engine not started")
        wanting: dict[tuple[str, str], list[Delivery]] = {}
        for d in heads:
            if not d.slot_at:
                wanting.setdefault((d.page_id, message_kind(d.body)), []).append(d)
        for (page_id, kind), ds in wanting.items():
            grants = await self.limiter.acquire_many(page_id, kind, len(ds))
            for d, grant in zip(ds, grants, strict=False):
                d.slot_at, d.slot_free = grant.slot, grant.delay <= 0

    async def _precheck(self, d: Delivery, context: dict[str, Any]) -> Outcome | None:
        """The outcome of a delivery that will not call Graph this round (TTL, suppression, no
        token, paused page, closed window without a fallback tag); None if it will."""
        s = self.settings
        age = time.time() - d.created_at
        if age > s.message_ttl:
            return Outcome(d, "dead" if d.failures else "expired", reason="ttl")
        suppressed, tag_suppressed = context["supp"][d.id]
        if suppressed:
            return Outcome(d, "failed", reason="suppressed")
        if tag_suppressed and d.body.get("messaging_type") == "MESSAGE_TAG":
            return Outcome(d, "failed", reason="tag_suppressed")
        token = self._token_for(d)
        if token is None:
            return Outcome(d, "failed", reason="no_page_token")
        pause: PagePause | None = context["pauses"].get(d.page_id)
        if pause is not None:
            if (
                pause.reason == "token_invalid"
                and pause.token_fp
                and pause.token_fp != token_fingerprint(token)
            ):
                await self._resume_page(d.page_id, "token_replaced")
                del context["pauses"][d.page_id]
            else:
                return Outcome(
                    d, "retrying", reason="page_paused", delay=max(0.05, pause.until - time.time())
                )
        if (
            not d.active_tag
            and context["window_closed"].get(d.id)
            and d.body.get("messaging_type") != "MESSAGE_TAG"
        ):
            # the window is known to be closed: no doomed call, straight to the fallback path
            tag = policy.next_fallback(d.fallback_tags, d.tags_tried, tag_suppressed)
            if tag is None:
                return self._outcome(d, policy.window_outcome(s), None)
            context["first_tag"][d.id] = tag
        return None

    async def _deliver(self, d: Delivery, context: dict[str, Any]) -> Outcome:
        s = self.settings
        early: Outcome | None = context["early"].get(d.id)
        if early is not None:
            return early
        _, tag_suppressed = context["supp"][d.id]
        token = self._token_for(d)
        if token is None:  # checked in _precheck; the token file may have been reloaded since
            return Outcome(d, "failed", reason="no_page_token")
        tag: str | None = d.active_tag or context["first_tag"].get(d.id)  # see _precheck
        for _ in range(len(d.fallback_tags) + 1):  # each (message, tag) at most once: never a loop
            body = d.body if tag is None else {**d.body, "messaging_type": "MESSAGE_TAG", "tag": tag}
            deferral = await self._pace(d, body, tag)
            if deferral is not None:
                return deferral
            result, error = await self._call(d, token, body)
            if error is None:
                if result is not None and (result.usage_pct or 0) >= s.usage_slowdown_threshold:
                    await self._slow_down(d.page_id, result.usage_pct or 0)
                return Outcome(d, "sent", result=result, delivered_tag=body.get("tag"))
            if error.reason == "outside_window":
                d.window_closed_seen = True
            if tag is not None and error.reason in ("outside_window", "tag_rejected"):
                d.tags_tried.append(tag)
            failures = d.failures + (1 if error.reason in ("transient", "ambiguous") else 0)
            decision = decide(
                s,
                error,
                failures=failures,
                age=time.time() - d.created_at,
                fallback_tags=d.fallback_tags,
                tags_tried=d.tags_tried,
                tag_suppressed=tag_suppressed,
            )
            d.failures = failures
            if decision.action is Action.RETAG and decision.next_tag is not None:
                tag = decision.next_tag
                continue
            d.active_tag = tag or ""
            return self._outcome(d, decision, error)
        return Outcome(d, "failed", reason="outside_window")

    async def _pace(self, d: Delivery, body: dict[str, Any], tag: str | None) -> Outcome | None:
        """Wait for this send's slot, or defer the delivery (with its reservation) to the schedule."""
        if self.limiter is None:
            raise RuntimeError("engine not started")
        reserved, d.slot_at = d.slot_at, 0.0
        free, d.slot_free = d.slot_free, False
        grant = await self.limiter.wait_for_slot(
            d.page_id, message_kind(body), d.psid, reserved, reserved_free=free
        )
        if grant.granted and grant.delay <= 0:
            d.probe = grant.probe
            return None
        d.active_tag = tag or ""
        status = d.status if d.status in ("queued", "retrying") else "queued"
        if not grant.granted:  # the page is paused: nothing reserved
            return Outcome(d, status, reason="paced", delay=grant.delay)
        # released back to a worker RELEASE_LOOKAHEAD before the slot, to await it on the loop
        d.slot_at = grant.slot
        lookahead = release_lookahead(self.settings)
        return Outcome(d, status, reason="paced", delay=max(0.0, grant.at - time.time() - lookahead))

    def _outcome(self, d: Delivery, decision: Decision, error: GraphError | None) -> Outcome:
        status = {
            Action.RETRY: "retrying",
            Action.WAIT: "retrying",
            Action.FAIL: "failed",
            Action.DEAD: "dead",
            Action.PARK: "parked",
        }.get(decision.action, "failed")
        pause = None
        if decision.pause_page is not None and error is not None:
            pause = (decision.pause_page, error.reason, error.info.code)
        return Outcome(
            d,
            status,
            reason=decision.reason,
            delay=decision.delay,
            error=error,
            suppress=decision.suppress,
            suppress_tagged=decision.suppress_tagged,
            pause=pause,
            possible_duplicate=decision.possible_duplicate,
        )

    async def _call(
        self, d: Delivery, token: str, body: dict[str, Any]
    ) -> tuple[SendResult | None, GraphError | None]:
        if self._sem is None or self._graph is None:
            raise RuntimeError("engine not started")
        d.attempts += 1
        started = time.perf_counter()
        async with self._sem:
            try:
                result = await self._graph.send(d.page_id, token, body)
            except GraphError as exc:
                metrics.GRAPH_LATENCY.observe(time.perf_counter() - started)
                metrics.ATTEMPTS.labels(exc.reason).inc()
                if exc.reason == "ambiguous":
                    metrics.POSSIBLE_DUPLICATES.inc()
                log.info(
                    "delivery.attempt",
                    delivery_id=d.id,
                    page_id=d.page_id,
                    attempt=d.attempts,
                    outcome=exc.reason,
                    http_status=exc.info.http_status,
                    error_code=exc.info.code,
                    error_subcode=exc.info.subcode,
                    fbtrace_id=exc.info.fbtrace_id,
                    tag=body.get("tag"),
                    latency_ms=round((time.perf_counter() - started) * 1000, 1),
                    possible_duplicate=exc.reason == "ambiguous",
                )
                return None, exc
        metrics.GRAPH_LATENCY.observe(result.latency_ms / 1000)
        metrics.ATTEMPTS.labels("sent").inc()
        # a successful call's line is the delivery.sent outcome (attempt, status, latency, tag)
        return result, None

    # --- recording -------------------------------------------------------------------------
    async def _record(self, outcomes: list[Outcome]) -> None:
        s = self.settings
        now = time.time()
        pipe = self.redis.pipeline(transaction=True)
        finals: list[Any] = []
        for o in outcomes:
            d = o.delivery
            key = self.keys.delivery(d.id)
            fields: dict[str, Any] = {
                "status": o.status,
                "updated_at": repr(now),
                "attempts": d.attempts,
                "failures": d.failures,
                "lease_until": 0,
                "tags_tried": orjson.dumps(d.tags_tried),
                "active_tag": d.active_tag,
                "slot_at": repr(d.slot_at),
            }
            if o.result is not None and o.result.message_id:
                fields["message_id"] = o.result.message_id
            if o.delivered_tag:
                fields["delivered_tag"] = o.delivered_tag
            if o.error is not None or (o.reason and o.status != "sent"):
                info = o.error.info if o.error is not None else None
                fields["error"] = orjson.dumps(
                    {
                        "reason": o.reason,
                        "code": info.code if info else None,
                        "subcode": info.subcode if info else None,
                        "message": info.message if info else o.reason,
                        "fbtrace_id": info.fbtrace_id if info else None,
                    }
                )
            if o.status in ("queued", "retrying"):
                due = now + o.delay
                fields["not_before"] = repr(due)
                pipe.hset(key, mapping=fields)
                pipe.zadd(self.keys.sched, {d.id: due})
                pipe.zadd(self.keys.pending, {d.id: due + s.sweep_after_seconds})
            elif o.status == "parked":  # until the user re-engages, or MESSAGE_TTL (then expired)
                until = d.created_at + s.message_ttl
                fields["not_before"] = repr(until)
                pipe.hset(key, mapping=fields)
                pipe.zadd(inbound.park_key(s, d.page_id, d.psid), {d.id: d.created_at})
                pipe.zadd(inbound.parked_key(s), {d.id: d.created_at})
                pipe.zadd(self.keys.pending, {d.id: until + 1})
            else:  # final: written by one FINAL_LUA call for the batch (below)
                finals += [d.id, o.status, len(fields)]
                for name, value in fields.items():
                    finals += [name, value]
                if d.status == "parked":  # claimed from the park (released by the user's message)
                    pipe.zrem(inbound.parked_key(s), d.id)
                    pipe.zrem(inbound.park_key(s, d.page_id, d.psid), d.id)
            if d.window_closed_seen:  # learned: the next message to this PSID skips the doomed call
                pipe.set(inbound.window_key(s, d.page_id, d.psid), "0", nx=True, ex=s.window_memory_seconds)
            if o.suppress:
                pipe.set(
                    self.keys.suppressed(d.page_id, d.psid), o.reason or "unreachable", ex=s.suppression_ttl
                )
            if o.suppress_tagged:
                pipe.set(
                    self.keys.tag_suppressed(d.page_id, d.psid), "tag_abuse", ex=s.tag_abuse_suppression_ttl
                )
            if o.pause is not None:
                seconds, reason, code = o.pause
                token = self._token_for(d) or ""
                await self._scripts["pause"](  # queued in the pipeline (awaiting only queues it)
                    keys=[self.keys.pause(d.page_id), self.keys.paused],
                    args=[
                        repr(now),
                        seconds,
                        reason,
                        str(code or 0),
                        token_fingerprint(token) if token else "",
                        "1" if reason == "rate_limited" else "0",
                        s.retry_cap_seconds,
                        d.page_id,
                    ],
                    client=pipe,
                )
        if finals:
            await self._scripts["final"](  # queued in the pipeline (awaiting only queues it)
                keys=[self.keys.pending, self.keys.open, self.keys.dead],
                args=[repr(now), s.record_retention, s.key_prefix, *finals],
                client=pipe,
            )
        minute = int(now // 60)  # per-minute outcome counts: `messenger-worker status` rates
        for status, n in Counter(o.status for o in outcomes).items():
            stats_key = f"{s.key_prefix}:stats:{minute}:{status}"
            pipe.incrby(stats_key, n)
            pipe.expire(stats_key, 3600)
        for o in outcomes:  # the probe was not refused for the page: it is open again for everyone
            if o.delivery.probe and o.pause is None and o.reason != "paced":
                pipe.delete(self.keys.pause(o.delivery.page_id))
                pipe.zrem(self.keys.paused, o.delivery.page_id)
        await pipe.execute()
        for o in outcomes:
            if o.delivery.probe and o.pause is None and o.reason != "paced":
                log.info("page.resumed", page_id=o.delivery.page_id, reason="probe_answered")
            if o.pause is not None and o.pause[1] == "rate_limited":
                await self._slow_down(o.delivery.page_id, 100)
        await self._feedback(outcomes)
        for o in outcomes:
            self._log_outcome(o)

    async def _feedback(self, outcomes: list[Outcome]) -> None:
        """Unreachable users (and, optionally, every final outcome) back to Braze via the outbox."""
        config = self._braze_config
        if config is None:
            return
        s = self.settings
        items: list[dict[str, Any]] = []
        for o in outcomes:
            d = o.delivery
            if not d.external_id:
                continue
            if o.suppress and s.braze_feedback in ("flag", "clear"):
                items.append(
                    unreachable_item(d.external_id, "flag" if s.braze_feedback == "flag" else "clear", config)
                )
            if s.braze_outcome_events and o.status in ("sent", "failed", "expired", "dead"):
                items.append(outcome_event_item(d.external_id, o.status, d.id, o.reason))
        if items:
            await BrazeOutbox(s.key_prefix).enqueue(self.redis, items)

    def _count_outcome(self, o: Outcome) -> None:
        d = o.delivery
        info = o.error.info if o.error is not None else None
        if o.status == "parked":
            metrics.RETRIES.labels("parked").inc()
        elif o.status in ("queued", "retrying"):
            if o.reason == "paced":
                metrics.PACING_DEFERRALS.labels(self._page_label(d.page_id)).inc()
            else:
                metrics.RETRIES.labels(o.reason or "unknown").inc()
        else:
            metrics.DELIVERIES.labels(
                o.status,
                self._page_label(d.page_id),
                o.reason or "none",
                metrics.code_label(info.code if info else None),
                metrics.code_label(info.subcode if info else None),
            ).inc()
            if o.status == "sent":
                metrics.ACCEPT_TO_SEND.observe(max(0.0, time.time() - d.created_at))
        if o.pause is not None:
            metrics.PAGE_PAUSES.labels(self._page_label(d.page_id), o.pause[1]).inc()

    def _log_outcome(self, o: Outcome) -> None:
        self._count_outcome(o)
        d = o.delivery
        info = o.error.info if o.error is not None else None
        common: dict[str, Any] = {
            "delivery_id": d.id,
            "page_id": d.page_id,
            "recipient": recipient_ref(self.settings, d.psid),
            "attempt": d.attempts,
            "request_id": d.request_id or None,
        }
        if info is not None:
            common.update(
                http_status=info.http_status,
                error_code=info.code,
                error_subcode=info.subcode,
                fbtrace_id=info.fbtrace_id,
            )
        if o.status == "sent" and o.result is not None:
            log.info(
                "delivery.sent",
                **common,
                message_id=o.result.message_id,
                http_status=o.result.http_status,
                latency_ms=round(o.result.latency_ms, 1),
                sent_at=round(o.result.started_at, 4),
                tag=o.delivered_tag,
                accept_to_send_ms=round((time.time() - d.created_at) * 1000, 1),
            )
        elif o.reason == "paced":
            log.debug("delivery.deferred", **common, delay_s=round(o.delay, 3))
        elif o.status == "parked":
            log.info("delivery.parked", **common, reason=o.reason)
        elif o.status in ("queued", "retrying"):
            log.info(
                "delivery.retry_scheduled",
                **common,
                reason=o.reason,
                delay_s=round(o.delay, 3),
                possible_duplicate=o.possible_duplicate or None,
            )
        elif o.status == "dead":
            log.warning("delivery.dead_lettered", **common, reason=o.reason)
        elif o.status == "expired":
            log.info("delivery.expired", **common, reason=o.reason)
        else:
            log.info("delivery.failed", **common, reason=o.reason)
        if o.pause is not None:
            log.warning(
                "page.paused",
                page_id=d.page_id,
                reason=o.pause[1],
                error_code=o.pause[2],
                seconds=round(o.pause[0], 1),
            )

    async def drain_braze(self) -> int:
        """One worker at a time drains the Braze outbox (lock ``P:braze:lock``, renewed each tick).

        A worker that takes the lock afresh first recovers what a dead holder left in flight.
        """
        config = self._braze_config
        if config is None:
            return 0
        lock = f"{self.settings.key_prefix}:braze:lock"
        outbox = BrazeOutbox(self.settings.key_prefix)
        if self._braze_lock_held and await self.redis.get(lock) == self._worker_id.encode():
            await self.redis.pexpire(lock, 30_000)
        elif await self.redis.set(lock, self._worker_id, nx=True, px=30_000):
            self._braze_lock_held = True
            recovered = await outbox.recover(self.redis)
            if recovered:
                log.info("braze.recovered", count=recovered)
        else:
            self._braze_lock_held = False
            return 0
        if self._braze_client is None:
            self._braze_client = BrazeClient(config)
        sent = 0
        for _ in range(20):  # bounded per tick: at most 20 requests (1,000 objects)
            result = await outbox.drain_once(self.redis, self._braze_client, config)
            sent += result.sent
            metrics.BRAZE_WRITES.labels("sent").inc(result.sent)
            metrics.BRAZE_WRITES.labels("dropped").inc(result.dropped)
            metrics.BRAZE_WRITES.labels("held").inc(result.retried)
            if result.sent + result.retried + result.dropped + result.invalid == 0 or result.retried:
                break
        return sent

    async def _slow_down(self, page_id: str, usage: int) -> None:
        """Usage header over the threshold: halve the page's rate, at most once per 10 s per process."""
        if self.limiter is None or time.monotonic() - self._slowed.get(page_id, -1e9) < 10:
            return
        self._slowed[page_id] = time.monotonic()
        factor = await self.limiter.slow_down(page_id)
        log.warning("page.slowed", page_id=page_id, usage_pct=usage, rate_factor=round(factor, 3))

    async def log_expired_pauses(self) -> None:
        """Pauses end by themselves (their ``until``); say so once, and drop them from the index."""
        for member in await self.redis.zrangebyscore(self.keys.paused, "-inf", time.time()):
            if await self.redis.zrem(self.keys.paused, member):
                log.info("page.resumed", page_id=store._s(member), reason="pause_elapsed")

    async def lift_replaced_token_pauses(self) -> None:
        """A page paused for a bad token resumes as soon as its configured token changes."""
        for member in await self.redis.zrangebyscore(self.keys.paused, time.time(), "+inf"):
            page = store._s(member)
            rec = store.decode_record(await self.redis.hgetall(self.keys.pause(page)))  # type: ignore[misc]
            token = self.tokens.get(page)
            if (
                rec.get("reason") == "token_invalid"
                and token
                and rec.get("token_fp") != token_fingerprint(token)
            ):
                await self._resume_page(page, "token_replaced")

    async def _resume_page(self, page_id: str, why: str) -> None:
        await resume_page(self.redis, self.keys, page_id)
        log.info("page.resumed", page_id=page_id, reason=why)

    # --- scheduler -------------------------------------------------------------------------
    async def _schedule_forever(self) -> None:
        while True:
            try:
                await self.schedule_once()
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("scheduler.redis_error", error=type(exc).__name__)
            await asyncio.sleep(self.settings.scheduler_interval_seconds)

    async def schedule_once(self) -> int:
        """Release due waits and sweep stalled deliveries to the queue. Returns ids enqueued."""
        s = self.settings
        now = repr(time.time())
        released = await self._scripts["release"](keys=[self.keys.sched], args=[now, 1000])
        swept = await self._scripts["sweep"](
            keys=[self.keys.pending, self.keys.sched], args=[now, 1000, s.sweep_after_seconds, s.key_prefix]
        )
        ids = [store._s(i) for i in [*released, *swept]]
        if time.monotonic() - self._pauses_checked >= 5.0:
            self._pauses_checked = time.monotonic()
            await self.lift_replaced_token_pauses()
            await self.log_expired_pauses()
        if self._braze_config is not None:
            await self.drain_braze()
        if swept:
            log.info("scheduler.swept", count=len(swept))
            metrics.SWEPT.inc(len(swept))
        await broker.publish(self.redis, s.queue_name, ids, s.batch_max, front=True)
        return len(ids)


async def resume_page(client: aioredis.Redis, keys: store.Keys, page_id: str) -> int:
    """Lift a page pause and make its waiting deliveries due now. Returns how many were released."""
    await client.delete(keys.pause(page_id))
    await client.zrem(keys.paused, page_id)
    ids = [store._s(i) for i in await client.zrange(keys.sched, 0, -1)]
    released = 0
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for i in chunk:
            pipe.hget(keys.delivery(i), "page_id")
        pages = await pipe.execute()
        mine = [i for i, p in zip(chunk, pages, strict=True) if p is not None and store._s(p) == page_id]
        if mine:
            pipe = client.pipeline(transaction=True)
            for i in mine:
                pipe.hset(keys.delivery(i), "not_before", "0")
                pipe.zadd(keys.sched, {i: 0})
            await pipe.execute()
            released += len(mine)
    return released


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

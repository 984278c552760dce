"""One claimed delivery's round: prechecks, pacing, the Send API call(s) and the decision.

:class:`Sender` turns a claimed :class:`~worker.delivery.model.Delivery` into an
:class:`~worker.delivery.model.Outcome`; it writes nothing (the recorder does). The steps:

1. **precheck** without a call: past MESSAGE_TTL (expired, or dead if it was retrying), the
   recipient suppressed, no page token, the page paused, the window known to be closed with no
   fallback route left;
2. **pace**: await this send's slot on the event loop, or defer the delivery with its
   reservation when the slot is further than PACE_MAX_HOLD_SECONDS;
3. **call** Graph, within GRAPH_DEADLINE_SECONDS and only while the claim's lease outlives that
   deadline (:meth:`~worker.delivery.leases.Leases.safe_to_send`);
4. **decide** with :func:`worker.delivery.policy.decide`: send again at once on the next
   fallback route (:mod:`worker.delivery.routes`: a tag, a utility template), or end the round
   with the decision's event.

A batch's reads (suppressions, windows, Braze ids, pauses) are one round trip
(:meth:`Sender.context`), and its first send to each recipient reserves its slot in one call per
page and class (:meth:`Sender.reserve`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from worker.config import PageTokens, Settings
from worker.delivery import policy, routes
from worker.delivery.deadlines import Deadlines
from worker.delivery.leases import Leases
from worker.delivery.model import Delivery, Outcome, PauseRequest
from worker.delivery.observers import Observer
from worker.delivery.pauses import PagePause
from worker.delivery.policy import Action, Decision
from worker.graph import (
    AmbiguousError,
    ErrorInfo,
    GraphClient,
    GraphError,
    SendResult,
    TagRejectedError,
    TemplatePausedError,
    TemplateRejectedError,
    WindowClosedError,
)
from worker.logging import get_logger
from worker.messenger.content import message_kind
from worker.messenger.recipients import is_psid
from worker.messenger.utility import UTILITY_TYPE
from worker.ratelimit import Limiter, is_free
from worker.states import Event, State
from worker.store import Keys, records, text
from worker.store.windows import window_closed
from worker.templates import TemplateInfo, template_state
from worker.templates.catalogue import field_name

log = get_logger("worker.delivery")
#: A delivery whose campaign looked stopped but was resumed is due again this much later.
STOPPED_RECHECK_SECONDS = 1.0
#: Errors that end a route, not the delivery: the next fallback route is tried.
ROUTE_ERRORS = (WindowClosedError, TagRejectedError, TemplateRejectedError)
#: The policy's actions as state-machine events (RETAG is not an event: it sends again at once).
EVENT_OF: dict[Action, Event] = {
    Action.RETRY: Event.RETRY,
    Action.WAIT: Event.WAIT,
    Action.FAIL: Event.FAIL,
    Action.DEAD: Event.DEAD_LETTER,
    Action.PARK: Event.PARK,
    Action.EXPIRE: Event.EXPIRE,
}


@dataclass
class BatchContext:
    """What a batch's prechecks need, read in one round trip."""

    suppressed: dict[str, bool] = field(default_factory=dict)
    tag_suppressed: dict[str, bool] = field(default_factory=dict)
    window_closed: dict[str, bool | None] = field(default_factory=dict)
    pauses: dict[str, PagePause] = field(default_factory=dict)
    #: A delivery whose window is known to be closed starts with this fallback route.
    first_route: dict[str, str] = field(default_factory=dict)
    #: The catalogue's word on a delivery's utility template (worker.templates.template_state):
    #: approved, pending, paused, disabled, rejected or unknown (not in the catalogue).
    template_state: dict[str, str] = field(default_factory=dict)


class Released(Exception):
    """The round stops without a call: hand the delivery back (shutdown, lease at risk)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Stopped(Exception):
    """Its campaign was stopped (seen by the engine's watch) before its call started."""


class PastTtl(Exception):
    """MESSAGE_TTL passed while the delivery waited for its slot or a free connection."""


class Sender:
    def __init__(
        self,
        settings: Settings,
        tokens: PageTokens,
        *,
        limiter: Limiter,
        graph: GraphClient,
        leases: Leases,
        observer: Observer,
    ) -> None:
        self._s = settings
        self._keys = Keys.of(settings)
        self._tokens = tokens
        self._limiter = limiter
        self._graph = graph
        self._leases = leases
        self._observer = observer
        self._inflight = asyncio.Semaphore(settings.worker_max_inflight)
        self._deadlines = Deadlines(settings.graph_deadline_seconds)
        self._slowed: dict[str, float] = {}
        #: Set on shutdown: no new call starts; deliveries not yet sent are handed back.
        self.draining = False
        #: The stopped campaigns, as the engine last read them (every STOP_WATCH_SECONDS): no
        #: call starts for their deliveries (worker/campaigns.py: the window of a stop).
        self.stopped: frozenset[str] = frozenset()

    def token_for(self, d: Delivery) -> str | None:
        return self._tokens.get(d.page_id)

    # --- the batch ------------------------------------------------------------------------------
    async def context(self, client: aioredis.Redis, claimed: Sequence[Delivery]) -> BatchContext:
        """Suppressions, windows, Braze ids and page pauses for the batch, in one round trip."""
        keys, n = self._keys, len(claimed)
        pages = sorted({d.page_id for d in claimed})
        pipe = client.pipeline(transaction=False)
        pipe.mget(  # one command for every per-delivery key
            [keys.suppressed(d.page_id, d.psid) for d in claimed]
            + [keys.tag_suppressed(d.page_id, d.psid) for d in claimed]
            + [keys.window(d.page_id, d.psid) for d in claimed]
            + [keys.external(d.page_id, d.psid) for d in claimed]
            + [keys.window_closed(d.page_id, d.psid) for d in claimed]
        )
        for page in pages:
            pipe.hgetall(keys.pause(page))
        templated = [d for d in claimed if d.utility is not None]
        for d in templated:  # the utility templates' states, in the same round trip
            assert d.utility is not None
            pipe.hget(keys.templates(d.page_id), field_name(d.utility.name, d.utility.language))
        res = await pipe.execute()
        values, now = res[0], time.time()
        ctx = BatchContext()
        for i, d in enumerate(claimed):
            ctx.suppressed[d.id] = values[i] is not None
            ctx.tag_suppressed[d.id] = values[n + i] is not None
            until, closed = values[2 * n + i], values[4 * n + i]
            if is_psid(d.psid):  # only a PSID has a window we track
                ctx.window_closed[d.id] = window_closed(
                    None if until is None else text(until),
                    None if closed is None else text(closed),
                    now,
                    self._s.window_recheck_seconds,
                )
            e = values[3 * n + i]
            if not d.external_id and e is not None:
                d.external_id = text(e)
        for j, page in enumerate(pages):
            pause = PagePause.from_record(records.decode(res[1 + j]) if res[1 + j] else {}, now)
            if pause is not None:
                ctx.pauses[page] = pause
        for d, raw in zip(templated, res[1 + len(pages) :], strict=True):
            ctx.template_state[d.id] = template_state(
                TemplateInfo.from_json(raw) if raw is not None else None
            )
        return ctx

    async def reserve(self, heads: Sequence[Delivery]) -> None:
        """Pacing slots for the first send to each recipient of the batch: one round trip for
        every (page, class) of the batch. Later sends to the same recipient wait for the first's answer and ask on
        their own; so does every send of a page with a pause."""
        wanting: dict[tuple[str, str], list[Delivery]] = {}
        for d in heads:
            if not d.slot_at:
                wanting.setdefault((d.page_id, message_kind(d.body)), []).append(d)
        groups = list(wanting.items())
        granted = await self._limiter.acquire_pages([(page, kind, len(ds)) for (page, kind), ds in groups])
        for (_, ds), grants in zip(groups, granted, strict=True):
            for d, grant in zip(ds, grants, strict=False):
                d.slot_at, d.slot_free = grant.slot, is_free(grant)

    # --- one delivery ---------------------------------------------------------------------------
    def precheck(self, d: Delivery, ctx: BatchContext) -> Outcome | None:
        """The outcome of a delivery that will not call Graph this round; None if it will."""
        s = self._s
        if time.time() - d.created_at > s.message_ttl:
            return self.outcome(d, policy.past_ttl(d.failures, d.last_reason), None)
        tag_suppressed = ctx.tag_suppressed.get(d.id, False)
        if ctx.suppressed.get(d.id):
            return Outcome(d, Event.FAIL, reason="suppressed")
        if tag_suppressed and d.body.get("messaging_type") == "MESSAGE_TAG":
            return Outcome(d, Event.FAIL, reason="tag_suppressed")
        token = self.token_for(d)
        if token is None:
            return Outcome(d, Event.FAIL, reason="no_page_token")
        if self.stopped and d.campaign in self.stopped:
            return self.stopped_outcome(d)
        pause = ctx.pauses.get(d.page_id)
        if pause is not None and not pause.lifted_by(token):
            return Outcome(d, Event.WAIT, reason="page_paused", delay=max(0.05, pause.until - time.time()))
        if not d.active_route and ctx.window_closed.get(d.id) and not routes.outside_window_capable(d.body):
            # the window is known to be closed: no doomed call, straight to the fallback path
            route = routes.next_route(d.fallbacks, d.routes_tried, tag_suppressed=tag_suppressed)
            if route is None:
                return self.outcome(d, policy.window_outcome(s), None)
            ctx.first_route[d.id] = route
        return None

    @staticmethod
    def stopped_outcome(d: Delivery) -> Outcome:
        """Its campaign is stopped, as this worker last read: no call. Handed to record.lua as a
        short wait, which it writes CANCELLED when the campaign is still stopped (atomically: a
        resume since the last read lets it go on)."""
        return Outcome(d, Event.WAIT, reason="campaign_stopped", delay=STOPPED_RECHECK_SECONDS)

    async def deliver(self, d: Delivery, ctx: BatchContext) -> Outcome:
        """Pace, call and decide, trying each fallback route at most once (never a loop)."""
        token = self.token_for(d)
        if token is None:  # checked in precheck; the token file may have been reloaded since
            return Outcome(d, Event.FAIL, reason="no_page_token")
        route = d.active_route or ctx.first_route.get(d.id, routes.AS_GIVEN)
        for _ in range(len(d.fallbacks) + 1):
            body = routes.body_for(d.body, route, d.utility)
            verdict = self._catalogue(d, ctx, route, body)
            if isinstance(verdict, Outcome):
                return verdict
            result: SendResult | None = None
            error: GraphError | None = verdict  # set: the catalogue knows Graph would refuse it
            if error is None:
                deferral = await self._pace(d, body, route)
                if deferral is not None:
                    return deferral
                try:
                    result, error = await self._call(d, token, body, route)
                except Stopped:
                    return self.stopped_outcome(d)
                except PastTtl:  # checked again at the last moment: never a send after the TTL
                    return self.outcome(d, policy.past_ttl(d.failures, d.last_reason), None)
            if error is None:
                if result is not None and result.usage_pct is not None:
                    await self._note_usage(d.page_id, result.usage_pct)
                via = routes.delivered_via(d.body, d.psid, route)
                return Outcome(d, Event.SEND_OK, result=result, delivered_via=via)
            decision = self._decide(d, error, route, ctx.tag_suppressed.get(d.id, False))
            if decision.action is Action.RETAG and decision.next_route is not None:
                route = decision.next_route
                continue
            d.active_route = route
            if decision.pause_page is not None and error.reason == "rate_limited":
                await self._best_effort(self._slow_down(d.page_id), d.page_id)
            return self.outcome(d, decision, error)
        return Outcome(d, Event.FAIL, reason="outside_window")

    def _catalogue(
        self, d: Delivery, ctx: BatchContext, route: str, body: dict[str, Any]
    ) -> Outcome | GraphError | None:
        """What the template catalogue says of a utility send before any call: wait for a
        template pending approval; a paused, disabled or rejected one is answered as Graph
        would answer it (the next route, or the policy's outcome); else None: send."""
        if d.utility is None or body.get("messaging_type") != UTILITY_TYPE:
            return None
        state = ctx.template_state.get(d.id, "unknown")
        name = d.utility.name
        if state == "pending":
            d.active_route = route
            return Outcome(d, Event.WAIT, reason=policy.TEMPLATE_PENDING, delay=policy.TEMPLATE_PENDING_WAIT)
        info = ErrorInfo(code=None, subcode=None, message=f"utility template {name} is {state} (catalogue)")
        if state == "paused":
            return TemplatePausedError(info)
        if state in ("disabled", "rejected"):
            return TemplateRejectedError(info)
        return None

    def _decide(self, d: Delivery, error: GraphError, route: str, tag_suppressed: bool) -> Decision:
        if error.reason == "outside_window" and route == routes.AS_GIVEN and is_psid(d.psid):
            d.window_closed_seen = True
        if route and isinstance(error, ROUTE_ERRORS):
            d.routes_tried.append(route)
        if error.reason in ("transient", "ambiguous"):
            d.failures += 1
        decision = policy.decide(
            self._s,
            error,
            failures=d.failures,
            age=time.time() - d.created_at,
            fallbacks=d.fallbacks,
            tried=d.routes_tried,
            tag_suppressed=tag_suppressed,
        )
        if decision.action is Action.PARK and not is_psid(d.psid):  # no webhook can release it
            return Decision(Action.FAIL, decision.reason)
        return decision

    def outcome(self, d: Delivery, decision: Decision, error: GraphError | None) -> Outcome:
        pause = None
        if decision.pause_page is not None and error is not None:
            pause = PauseRequest(decision.pause_page, error.reason, error.info.code)
        return Outcome(
            d,
            EVENT_OF.get(decision.action, Event.FAIL),
            reason=decision.reason,
            delay=decision.delay,
            error=error,
            suppress=decision.suppress,
            suppress_tagged=decision.suppress_tagged,
            pause=pause,
            possible_duplicate=decision.possible_duplicate,
        )

    async def _pace(self, d: Delivery, body: dict[str, Any], route: str) -> Outcome | None:
        """Wait for this send's slot, or defer the delivery (with its reservation) to the schedule."""
        if self.draining:
            raise Released("shutdown")
        reserved, d.slot_at = d.slot_at, 0.0
        free, d.slot_free = d.slot_free, False
        grant = await self._limiter.wait_for_slot(
            d.page_id, message_kind(body), d.psid, reserved, reserved_free=free
        )
        if grant.granted and grant.delay <= 0:
            d.probe = grant.probe
            if reserved:
                # a batch's reservation: let the batch's other groups check their slots in this
                # turn of the loop before this one builds its request. Sending first would make
                # the last groups of a big batch find their slots stale (a round trip each).
                await asyncio.sleep(0)
            return None
        d.active_route = route
        if not grant.granted:  # nothing reserved
            # paused since the precheck: a wait for the page (indexed, so resuming releases it),
            # as the precheck's; else a probe's answer or the recipient's pace, a short wait
            reason = "page_paused" if grant.paused else "paced"
            return Outcome(d, Event.WAIT, reason=reason, delay=grant.delay)
        # released back to a worker the lookahead before its slot, to await it on the loop
        d.slot_at = grant.slot
        lookahead = release_lookahead(self._s)
        return Outcome(d, Event.WAIT, reason="paced", delay=max(0.0, grant.at - time.time() - lookahead))

    async def _call(
        self, d: Delivery, token: str, body: dict[str, Any], route: str
    ) -> tuple[SendResult | None, GraphError | None]:
        async with self._inflight:
            if self.draining:
                raise Released("shutdown")
            if not await self._leases.safe_to_send(d):
                raise Released("lease_at_risk")
            if time.time() - d.created_at > self._s.message_ttl:
                raise PastTtl
            if self.stopped and d.campaign in self.stopped:
                raise Stopped
            d.attempts += 1
            started = time.perf_counter()
            task = self._deadlines.enter()
            try:
                result = await self._graph.send(d.page_id, token, body)
            except GraphError as exc:
                self._observer.attempted(d, route or None, None, exc, time.perf_counter() - started)
                return None, exc
            except asyncio.CancelledError:
                if not self._deadlines.leave(task) or task.uncancel() > 0:
                    raise  # a cancellation of ours (shutdown), not the deadline's
                late = AmbiguousError(  # the request may have reached Graph
                    ErrorInfo(
                        code=None, subcode=None, message="deadline: no answer within GRAPH_DEADLINE_SECONDS"
                    )
                )
                self._observer.attempted(d, route or None, None, late, time.perf_counter() - started)
                return None, late
            finally:
                self._deadlines.leave(task)
        self._observer.attempted(d, route or None, result, None, result.latency_ms / 1000)
        return result, None

    async def _note_usage(self, page_id: str, usage_pct: int) -> None:
        """Graph's usage header of an accepted send, for the limiter (and a slow-down over the
        threshold): best effort, see :meth:`_best_effort`."""
        await self._best_effort(self._limiter.note_usage(page_id, usage_pct), page_id)
        if usage_pct >= self._s.usage_slowdown_threshold:
            await self._best_effort(self._slow_down(page_id), page_id)

    @staticmethod
    async def _best_effort(step: Awaitable[Any], page_id: str) -> None:
        """Bookkeeping after Graph answered: a Redis error here must not change the outcome
        (raised, it would hand a sent delivery back to be sent again). Logged, and skipped."""
        try:
            await step
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("page.pacing_update_failed", page_id=page_id, error=type(exc).__name__)

    async def _slow_down(self, page_id: str) -> None:
        """Usage over the threshold or throttled: halve the page's rate, at most once per 10 s
        per process."""
        if time.monotonic() - self._slowed.get(page_id, -1e9) < 10:
            return
        self._slowed[page_id] = time.monotonic()
        factor = await self._limiter.slow_down(page_id)
        log.warning("page.slowed", page_id=page_id, rate_factor=round(factor, 3))


def release_lookahead(settings: Settings) -> float:
    """How long before its reserved slot a deferred delivery is released to the queue: most of
    the hold, so the path back (schedule, Celery, claim) has time and the slot is awaited on the
    event loop; at least two scheduler ticks."""
    return max(0.6 * settings.pace_max_hold_seconds, 2 * settings.scheduler_interval_seconds)


__all__ = ["EVENT_OF", "BatchContext", "Released", "Sender", "State", "release_lookahead"]

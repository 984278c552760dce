"""Observers of the delivery engine: metrics, log lines and Braze feedback.

The engine does not count, log or tell Braze anything itself. It calls the hooks of an
:class:`Observer` (dramatiq's middleware shape: every hook does nothing by default) at these
points (and when a claim is lost or an answer lost), and :class:`Observers` fans each call out:

* :meth:`Observer.claimed`: deliveries were claimed (a reclaim is a possible duplicate);
* :meth:`Observer.attempted`: a Send API call returned (success or error);
* :meth:`Observer.writes`: extra Redis writes that go into the same round trip as a batch of
  outcomes (the Braze outbox), so they land exactly when the outcomes do;
* :meth:`Observer.recorded`: outcomes were written (``Outcome.written`` says whether the fence
  let each through);
* :meth:`Observer.cancelled_at_claim`: a claim ended deliveries CANCELLED itself (claim.lua: a
  stopped campaign's, an operator's), which no outcome of the engine's will record.

Observers must not raise: a failing hook is logged and the engine carries on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from worker import metrics
from worker.braze.items import unreachable_item
from worker.braze.outbox import queue_items
from worker.config import Settings
from worker.delivery.model import Delivery, Outcome
from worker.graph import GraphError, SendResult
from worker.logging import get_logger, recipient_ref
from worker.states import FINAL, State
from worker.store import Keys

log = get_logger("worker.delivery")


class Observer:
    """Base class: every hook does nothing."""

    def claimed(self, deliveries: Sequence[Delivery]) -> None:
        return None

    def attempted(
        self,
        delivery: Delivery,
        route: str | None,
        result: SendResult | None,
        error: GraphError | None,
        latency_s: float,
    ) -> None:
        return None

    def writes(self, outcomes: Sequence[Outcome], pipe: Any) -> None:
        return None

    def answer_lost(self, delivery: Delivery) -> None:
        """The engine failed after this delivery's Graph call started: handed back, it may
        reach the user twice."""
        return None

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        return None

    def lost(self, deliveries: Sequence[Delivery]) -> None:
        """Claims the heartbeat found taken by another worker (this process stops on them)."""
        return None

    def cancelled_at_claim(self, cancels: Sequence[tuple[str, str, int]]) -> None:
        """A claim ended deliveries CANCELLED without a Graph call: (page_id, reason, count)."""
        return None


class Observers(Observer):
    """Calls every observer in turn; a hook that raises is logged, not propagated."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def _each(self, hook: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, hook)(*args)
            except Exception as exc:  # an observer must never stop a delivery
                log.exception("observer.failed", observer=type(observer).__name__, hook=hook, error=repr(exc))

    def claimed(self, deliveries: Sequence[Delivery]) -> None:
        self._each("claimed", deliveries)

    def attempted(
        self,
        delivery: Delivery,
        route: str | None,
        result: SendResult | None,
        error: GraphError | None,
        latency_s: float,
    ) -> None:
        self._each("attempted", delivery, route, result, error, latency_s)

    def writes(self, outcomes: Sequence[Outcome], pipe: Any) -> None:
        self._each("writes", outcomes, pipe)

    def answer_lost(self, delivery: Delivery) -> None:
        self._each("answer_lost", delivery)

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        self._each("recorded", outcomes)

    def lost(self, deliveries: Sequence[Delivery]) -> None:
        self._each("lost", deliveries)

    def cancelled_at_claim(self, cancels: Sequence[tuple[str, str, int]]) -> None:
        self._each("cancelled_at_claim", cancels)


def fenced_send(o: Outcome) -> bool:
    """Graph accepted it, but the fence refused the write: another worker holds it now."""
    return o.written == 0 and o.status is State.SENT


class MetricsObserver(Observer):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._page = metrics.page_labels(settings)
        #: labelled children, looked up once each: labels() costs more than the increment, and
        #: these run once per call and once per outcome
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def claimed(self, deliveries: Sequence[Delivery]) -> None:
        reclaimed = sum(1 for d in deliveries if d.previous is State.IN_FLIGHT)
        if reclaimed:
            metrics.POSSIBLE_DUPLICATES.labels("reclaimed").inc(reclaimed)

    def attempted(
        self,
        delivery: Delivery,
        route: str | None,
        result: SendResult | None,
        error: GraphError | None,
        latency_s: float,
    ) -> None:
        metrics.GRAPH_LATENCY.observe(latency_s)
        self._child(metrics.ATTEMPTS, State.SENT.value if error is None else error.reason).inc()
        if error is not None and error.reason == "ambiguous":
            metrics.POSSIBLE_DUPLICATES.labels("ambiguous").inc()

    def answer_lost(self, delivery: Delivery) -> None:
        metrics.POSSIBLE_DUPLICATES.labels("ambiguous").inc()

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        now = time.time()
        for o in outcomes:
            if o.written == 0:
                if fenced_send(o):
                    metrics.POSSIBLE_DUPLICATES.labels("fenced").inc()
                continue
            self._count(o, now)

    def _count(self, o: Outcome, now: float) -> None:
        d = o.delivery
        if o.status is State.PARKED:
            metrics.RETRIES.labels(State.PARKED.value).inc()
        elif o.status is State.QUEUED:
            metrics.RELEASED.labels(o.reason or "unknown").inc()
        elif o.status not in FINAL:
            if o.paced:
                metrics.PACING_DEFERRALS.labels(self._page(d.page_id)).inc()
            else:
                metrics.RETRIES.labels(o.reason or "unknown").inc()
        else:
            info = o.error.info if o.error is not None else None
            self._child(
                metrics.DELIVERIES,
                o.status.value,
                self._page(d.page_id),
                o.reason or "none",
                metrics.code_label(info.code if info else None),
                metrics.code_label(info.subcode if info else None),
            ).inc()
            if o.status is State.SENT:
                metrics.ACCEPT_TO_SEND.observe(max(0.0, now - d.created_at))
        if o.pause is not None:
            metrics.PAGE_PAUSES.labels(self._page(d.page_id), o.pause.reason).inc()

    def lost(self, deliveries: Sequence[Delivery]) -> None:
        metrics.CLAIMS_LOST.inc(len(deliveries))

    def cancelled_at_claim(self, cancels: Sequence[tuple[str, str, int]]) -> None:
        metrics.count_cancels(self._settings, cancels)


class LogObserver(Observer):
    """One line per failed call (``delivery.attempt``) and one per outcome (canonical lines)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def _common(self, d: Delivery) -> dict[str, Any]:
        return {
            "delivery_id": d.id,
            "page_id": d.page_id,
            "recipient": recipient_ref(self._settings, d.psid),
            "attempt": d.attempts,
            "request_id": d.request_id or None,
            **d.attribution,  # campaign_id, canvas_id, ... (those given at the intake)
        }

    def claimed(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            if d.previous is State.IN_FLIGHT:
                log.warning("delivery.reclaimed", **self._common(d), possible_duplicate=True)

    def answer_lost(self, delivery: Delivery) -> None:
        log.warning("delivery.answer_lost", **self._common(delivery), possible_duplicate=True)

    def attempted(
        self,
        delivery: Delivery,
        route: str | None,
        result: SendResult | None,
        error: GraphError | None,
        latency_s: float,
    ) -> None:
        if error is None:  # a successful call's line is the delivery.sent outcome
            return
        log.info(
            "delivery.attempt",
            delivery_id=delivery.id,
            page_id=delivery.page_id,
            attempt=delivery.attempts,
            outcome=error.reason,
            http_status=error.info.http_status,
            error_code=error.info.code,
            error_subcode=error.info.subcode,
            fbtrace_id=error.info.fbtrace_id,
            route=route,
            latency_ms=round(latency_s * 1000, 1),
            possible_duplicate=error.reason == "ambiguous",
        )

    def cancelled_at_claim(self, cancels: Sequence[tuple[str, str, int]]) -> None:
        """The claim's cancels have no line of their own per delivery (claim.lua answers counts):
        one per page and reason."""
        for page_id, reason, count in cancels:
            log.info("deliveries.cancelled_at_claim", page_id=page_id, reason=reason, count=count)

    def recorded(self, outcomes: Sequence[Outcome]) -> None:
        now = time.time()
        for o in outcomes:
            if o.written == 0:
                log.warning(
                    "delivery.fenced",
                    **self._common(o.delivery),
                    outcome=o.status.value,
                    possible_duplicate=fenced_send(o),
                )
                continue
            self._line(o, now)
            if o.pause is not None:
                # the pause as set: a longer one already running, or a rate limit again right
                # after one (pause.lua doubles it), makes it end later than this answer asked
                until = o.paused_until or now + o.pause.seconds
                log.warning(
                    "page.paused",
                    page_id=o.delivery.page_id,
                    reason=o.pause.reason,
                    error_code=o.pause.code,
                    seconds=round(max(0.0, until - now), 1),
                    until=round(until, 3),
                    asked_s=round(o.pause.seconds, 1),
                )
            if o.delivery.probe and o.pause is None and not o.paced:
                log.info("page.resumed", page_id=o.delivery.page_id, reason="probe_answered")

    def _line(self, o: Outcome, now: float) -> None:
        d = o.delivery
        common = self._common(d)
        info = o.error.info if o.error is not None else None
        if info is not None:
            common.update(
                http_status=info.http_status,
                error_code=info.code,
                error_subcode=info.subcode,
                fbtrace_id=info.fbtrace_id,
            )
        if o.status is State.SENT and o.result is not None:
            common.pop("http_status", None)
            log.info(
                "delivery.sent",
                **common,
                message_id=o.result.message_id,
                http_status=o.result.http_status,
                latency_ms=round(o.result.latency_ms, 1),
                sent_at=round(o.result.started_at, 4),
                delivered_via=o.delivered_via,
                accept_to_send_ms=round((now - d.created_at) * 1000, 1),
            )
        elif o.paced:
            log.debug("delivery.deferred", **common, delay_s=round(o.delay, 3))
        elif o.status is State.QUEUED:
            log.info("delivery.released", **common, reason=o.reason)
        elif o.status is State.PARKED:
            log.info("delivery.parked", **common, reason=o.reason)
        elif o.status in (State.RETRYING, State.SCHEDULED):
            log.info(
                "delivery.retry_scheduled",
                **common,
                reason=o.reason,
                delay_s=round(o.delay, 3),
                possible_duplicate=o.possible_duplicate or None,
            )
        elif o.status is State.DEAD:
            log.warning("delivery.dead_lettered", **common, reason=o.reason)
        elif o.status is State.EXPIRED:
            log.info("delivery.expired", **common, reason=o.reason)
        elif o.status is State.CANCELLED:
            log.info("delivery.cancelled", **common, reason=o.reason)
        else:
            log.info("delivery.failed", **common, reason=o.reason)

    def lost(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            log.warning("delivery.claim_lost", **self._common(d))


class BrazeFeedbackObserver(Observer):
    """Unreachable users (BRAZE_FEEDBACK) go to the Braze outbox in the same round trip as the
    outcomes: an attribute, so a write sent again (its answer lost) sets it again, harmlessly.
    Outcome events (BRAZE_OUTCOME_EVENTS) are not written here: record.lua writes each once
    (worker/delivery/recorder.py's outcome_event)."""

    def __init__(self, settings: Settings, psid_attribute: str) -> None:
        self._settings = settings
        self._psid_attribute = psid_attribute
        self._keys = Keys.of(settings)

    def writes(self, outcomes: Sequence[Outcome], pipe: Any) -> None:
        s = self._settings
        items: list[dict[str, Any]] = []
        for o in outcomes:
            d = o.delivery
            if not d.external_id:
                continue
            if o.suppress and s.braze_feedback in ("flag", "clear"):
                mode: Literal["flag", "clear"] = "flag" if s.braze_feedback == "flag" else "clear"
                items.append(unreachable_item(d.external_id, mode, self._psid_attribute))
        if items:
            queue_items(pipe, self._keys, items)


def default_observers(settings: Settings, braze_psid_attribute: str | None) -> Observers:
    """Metrics and logs always; Braze feedback when the Braze write-back is configured."""
    chain: list[Observer] = [MetricsObserver(settings), LogObserver(settings)]
    if braze_psid_attribute is not None:
        chain.append(BrazeFeedbackObserver(settings, braze_psid_attribute))
    return Observers(chain)

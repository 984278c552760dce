"""Prometheus metrics: every metric the service exports is declared here.

Where they come from:

* **Per process** (counters and histograms): the intake serves ``/metrics`` on its HTTP port; each
  worker process serves ``/metrics`` on ``METRICS_PORT`` (default 9808; one worker process per
  container/pod, so the port is fixed). ``messenger-worker intake --workers N`` runs N processes
  behind one port: the CLI then sets ``PROMETHEUS_MULTIPROC_DIR`` and the intake aggregates the
  processes' files (prometheus-client's multiprocess mode), so a scrape sees all of them.
* **Global state** (queue depth, oldest waiting message, scheduled waits, dead letters, paused
  pages, limiter state) is read from Redis at scrape time by :class:`RedisStateCollector`, served
  by the intake. With several intake replicas each reports the same value: dashboards use ``max``.

Label cardinality is bounded: ``page_id`` is a configured page id, or ``other`` beyond
``METRICS_MAX_PAGES`` distinct pages per process and for pseudo pages of passthrough tokens;
``error_code``/``error_subcode`` are numbers Graph returns (a few dozen in practice) or ``none``;
``outcome`` and ``reason`` come from fixed sets. No label ever carries a token or a PSID.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker import store
from worker.config import Settings

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ACCEPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

INTAKE_REQUESTS = Counter(
    "bmw_intake_requests_total", "Intake HTTP requests by route and status", ["route", "status"]
)
INTAKE_ENQUEUE = Histogram(
    "bmw_intake_enqueue_seconds",
    "Time to write an accepted message to Redis (group commit)",
    buckets=LATENCY_BUCKETS,
)
DELIVERIES = Counter(
    "bmw_deliveries_total",
    "Deliveries that reached a final outcome",
    ["outcome", "page_id", "reason", "error_code", "error_subcode"],
)
ATTEMPTS = Counter("bmw_attempts_total", "Send API calls by result class", ["result"])
GRAPH_LATENCY = Histogram("bmw_graph_request_seconds", "Send API call latency", buckets=LATENCY_BUCKETS)
ACCEPT_TO_SEND = Histogram(
    "bmw_accept_to_send_seconds", "From the intake's 202 to Graph's success", buckets=ACCEPT_BUCKETS
)
RETRIES = Counter("bmw_retries_scheduled_total", "Retries and waits scheduled", ["reason"])
POSSIBLE_DUPLICATES = Counter(
    "bmw_possible_duplicates_total", "Ambiguous Send API calls retried (the message may arrive twice)"
)
PAGE_PAUSES = Counter("bmw_page_pauses_total", "Page pauses started", ["page_id", "reason"])
PACING_DEFERRALS = Counter(
    "bmw_pacing_deferrals_total", "Deliveries deferred to a later pacing slot", ["page_id"]
)
PACE_LATE_SLOTS = Counter(
    "bmw_pace_late_slots_total",
    "Pacing slots left unused because this process woke for them too late (a busy event loop)",
)
SWEPT = Counter("bmw_swept_total", "Stalled deliveries re-enqueued by the sweeper")
BRAZE_WRITES = Counter(
    "bmw_braze_objects_total",
    "Objects for Braze /users/track by result: sent, dropped (4xx), held (retry later: 429/5xx/401/403)",
    ["result"],
)
WORKER_BATCHES = Counter("bmw_worker_batches_total", "Celery batches processed by this worker process")
BUILD_INFO = Gauge("bmw_build_info", "Service version", ["version"])


class PageLabels:
    """Bounded ``page_id`` label values for this process."""

    def __init__(self, settings: Settings, max_pages: int | None = None) -> None:
        self._known = set(settings.page_access_tokens)
        self._seen: set[str] = set()
        self._max = max_pages if max_pages is not None else settings.metrics_max_pages

    def __call__(self, page_id: str) -> str:
        if page_id in self._known or page_id in self._seen:
            return page_id
        if page_id.startswith("t-") or len(self._seen) >= self._max:
            return "other"
        self._seen.add(page_id)
        return page_id


def code_label(value: int | None) -> str:
    return str(value) if isinstance(value, int) and 0 <= value < 10**9 else "none"


class RedisStateCollector(Collector):
    """Global state read from Redis at scrape time (sync client; a few round trips per scrape)."""

    def __init__(self, settings: Settings, client: Any) -> None:
        self._settings = settings
        self._client = client
        self._keys = store.Keys(settings.key_prefix, settings.queue_name)

    def collect(self) -> Any:
        from worker.ratelimit import page_state

        keys, client, now = self._keys, self._client, time.time()
        try:
            pipe = client.pipeline(transaction=False)
            pipe.llen(keys.queue)
            pipe.zcard(keys.sched)
            pipe.zcard(keys.open)
            pipe.zcard(keys.dead)
            pipe.zrange(keys.open, 0, 0, withscores=True)
            pipe.zrangebyscore(keys.paused, now, "+inf")
            pipe.hlen("unacked")
            pipe.zcard(keys.parked)
            depth, sched, open_, dead, oldest, paused, unacked, parked = pipe.execute()
            limiter = page_state(client, self._settings)
        except Exception:  # noqa: BLE001  # a scrape must not fail because Redis is down
            up = GaugeMetricFamily("bmw_redis_up", "Whether the intake could read Redis at scrape time")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("bmw_redis_up", "Whether the intake could read Redis at scrape time")
        up.add_metric([], 1)
        yield up
        for name, doc, value in (
            ("bmw_queue_depth", "Celery messages waiting in the queue", depth),
            (
                "bmw_scheduled",
                "Deliveries waiting for a retry, a rate-limit wait, a paused page or a slot",
                sched,
            ),
            ("bmw_open_deliveries", "Accepted deliveries not yet in a final state", open_),
            ("bmw_dead_letters", "Deliveries in the dead-letter store", dead),
            (
                "bmw_in_flight_batches",
                "Celery messages delivered to workers and not yet acknowledged",
                unacked,
            ),
            ("bmw_pages_paused", "Pages currently paused", len(paused)),
            ("bmw_parked", "Deliveries parked outside the 24-hour window until the user re-engages", parked),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(value))
            yield g
        age = GaugeMetricFamily(
            "bmw_oldest_open_age_seconds", "Age of the oldest accepted, not final delivery"
        )
        age.add_metric([], max(0.0, now - float(oldest[0][1])) if oldest else 0.0)
        yield age
        paused_g = GaugeMetricFamily(
            "bmw_page_paused", "1 while a page is paused", labels=["page_id", "reason"]
        )
        rate_g = GaugeMetricFamily(
            "bmw_page_rate_limit", "Configured sends/s per page", labels=["page_id", "class"]
        )
        eff_g = GaugeMetricFamily(
            "bmw_page_effective_rate", "Sends/s after adaptive slow-down", labels=["page_id", "class"]
        )
        tokens_g = GaugeMetricFamily("bmw_page_tokens", "Slots available now", labels=["page_id", "class"])
        for row in limiter[: self._settings.metrics_max_pages]:
            labels = [row["page_id"], row["class"]]
            rate_g.add_metric(labels, row["rate_limit"])
            eff_g.add_metric(labels, row["effective_rate"])
            tokens_g.add_metric(labels, row["tokens"])
            if row["paused_until"] and row["class"] == "text":
                paused_g.add_metric([row["page_id"], row["pause_reason"] or "unknown"], 1)
        yield from (paused_g, rate_g, eff_g, tokens_g)


def render(settings: Settings, redis_client: Any | None) -> bytes:
    """The intake's /metrics body: this process (or all, in multiprocess mode) plus Redis state."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    if redis_client is not None:
        state = CollectorRegistry()
        state.register(RedisStateCollector(settings, redis_client))
        body += generate_latest(state)
    return body

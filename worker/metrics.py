"""Prometheus metrics: every metric the service exports is declared here.

Where they come from:

* **Per process** (counters and histograms): the intake serves ``/metrics`` on its HTTP port; each
  worker process serves ``/metrics`` on ``METRICS_PORT`` (default 9808; one worker process per
  container/pod, so the port is fixed). ``messenger-worker intake --workers N`` runs N processes
  behind one port: the CLI then sets ``PROMETHEUS_MULTIPROC_DIR`` and the intake aggregates the
  processes' files (prometheus-client's multiprocess mode), so a scrape sees all of them.
* **Global state** (queue depth, oldest waiting message, scheduled waits, dead letters, paused
  pages, limiter state) is read from Redis at scrape time by :mod:`worker.status` (the one read
  model), served by the intake. With several intake replicas each reports the same value:
  dashboards use ``max``.

This module declares, and labels (:class:`PageLabels`, :func:`code_label`); it reads nothing.
The cancels the Lua scripts make alone (claim.lua, cancel.lua: worker/store/scripts.py's
``cancels`` reads their answers) are counted by their callers with :func:`count_cancels`.

Label cardinality is bounded: ``page_id`` is a configured page id, or ``other`` beyond
``METRICS_MAX_PAGES`` distinct pages per process;
``error_code``/``error_subcode`` are numbers Graph returns (a few dozen in practice) or ``none``;
``outcome`` and ``reason`` come from fixed sets. No label ever carries a token or a PSID.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from worker.config import Settings
from worker.states import State

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ACCEPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

INTAKE_REQUESTS = Counter(
    "bmw_intake_requests_total", "Intake HTTP requests by route and status", ["route", "status"]
)
INTAKE_MOVED_LOOKUPS = Counter(
    "bmw_intake_moved_lookups_total",
    "Requests for a page `shards move` brought, looked up on the shard it came from, by result: "
    "repeat (it remembered the key), new, unanswered (no answer within a second: let through)",
    ["result"],
)
INTAKE_ENQUEUE = Histogram(
    "bmw_intake_enqueue_seconds",
    "Time to write an accepted message to Redis (group commit)",
    buckets=LATENCY_BUCKETS,
)
DELIVERIES = Counter(
    "bmw_deliveries_total",
    "Deliveries that reached a final outcome, counted by the process that ended them: a worker "
    "(what it records, and what its claims cancel: reason operator or campaign_stopped), the "
    "intake (what a campaign stop or a delivery cancel through the admin API or the console "
    "cancels). Cancels made by a CLI command (campaigns stop, deliveries cancel, queue purge) are "
    "in the campaign counters and the status API, not here",
    ["outcome", "page_id", "reason", "error_code", "error_subcode"],
)
ATTEMPTS = Counter("bmw_attempts_total", "Send API calls by result class", ["result"])
GRAPH_LATENCY = Histogram("bmw_graph_request_seconds", "Send API call latency", buckets=LATENCY_BUCKETS)
ACCEPT_TO_SEND = Histogram(
    "bmw_accept_to_send_seconds", "From the intake's 202 to Graph's success", buckets=ACCEPT_BUCKETS
)
RETRIES = Counter("bmw_retries_scheduled_total", "Retries and waits scheduled", ["reason"])
POSSIBLE_DUPLICATES = Counter(
    "bmw_possible_duplicates_total",
    "Sends that may reach the user twice, by cause: ambiguous (a call whose answer was lost, "
    "retried), reclaimed (claimed again after its holder stopped renewing mid-send), fenced "
    "(Graph accepted it but the holder's lease had ended: another worker may send it too)",
    ["cause"],
)
CLAIMS_LOST = Counter(
    "bmw_claims_lost_total",
    "Claims this process lost because its lease ended before it could renew it (Redis unreachable "
    "or a stalled process); their deliveries are not sent by this process",
)
RELEASED = Counter(
    "bmw_released_total",
    "Claimed deliveries handed back unsent, by reason (shutdown, engine_error, lease_at_risk)",
    ["reason"],
)
OUTCOME_WRITES = Counter(
    "bmw_outcome_writes_total",
    "Batched outcome writes by result (written, retried, effects_dropped: written without side effects after Redis refused them)",
    ["result"],
)
OUTCOME_WRITE_SIZE = Histogram(
    "bmw_outcome_write_size",
    "Outcomes per batched write",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
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
    "Objects for Braze /users/track by result: sent, dropped (4xx), held (retry later: "
    "429/5xx/401/403/404/405), rejected (refused one by one in a 2xx answer)",
    ["result"],
)
LINK_REFUSALS = Counter(
    "bmw_link_refusals_total",
    "m.me refs (braze_...) that linked no PSID, by reason: disabled (no LINK_SECRET), unsigned, "
    "malformed, bad_signature, link_expired (worker/messenger/refs.py)",
    ["reason"],
)
LINK_CONFLICTS = Counter(
    "bmw_link_conflicts_total",
    "Valid refs naming another Braze user than the one the PSID is linked to, by what "
    "LINK_CONFLICT_POLICY did: kept (the first link stays) or replaced",
    ["action"],
)
INBOUND_DUPLICATES = Counter(
    "bmw_inbound_duplicates_total",
    "Messenger webhook events ignored because their message id (mid) was already recorded",
)
RECEIPTS = Counter(
    "bmw_receipts_total",
    "Sent deliveries newly marked by Messenger's receipts, by kind: delivered, read (no campaign "
    "label: per-campaign counts are in the status API, GET /v1/campaigns/{id})",
    ["kind"],
)
#: From the send to Messenger's receipt: seconds to hours (a read may come a day later).
RECEIPT_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86_400)
DELIVERED_LATENCY = Histogram(
    "bmw_delivered_latency_seconds", "From the send to its delivery receipt", buckets=RECEIPT_BUCKETS
)
READ_LATENCY = Histogram(
    "bmw_read_latency_seconds", "From the send to its read receipt", buckets=RECEIPT_BUCKETS
)
TEMPLATE_SYNCS = Counter(
    "bmw_template_syncs_total",
    "Reads of a page's utility templates from Graph (worker/templates/sync.py) by result: ok, error "
    "(the page's old catalogue is kept)",
    ["result"],
)
TEMPLATE_EVENTS = Counter(
    "bmw_template_events_total",
    "message_template_status_update webhook events applied to the catalogue, by the status they set "
    "(approved, paused, ...), or ignored (events that are not statuses)",
    ["status"],
)
WORKER_BATCHES = Counter("bmw_worker_batches_total", "Celery batches processed by this worker process")
SHARD_STRANDED = Gauge(
    "bmw_shard_stranded_pages",
    "Pages that sent within a day or are paused on this worker's shard, but that REDIS_SHARDS and "
    "SHARD_PAGES now route to another shard (their state stayed here: messenger-worker shards check)",
    ["shard"],
)
BUILD_INFO = Gauge("bmw_build_info", "Service version", ["version"])
WORKER_SHARD = Gauge(
    "bmw_worker_shard",
    "1 in a worker process serving this shard (REDIS_SHARDS; absent without): a shard without one "
    "accepts messages that nothing sends (BmwShardWithoutWorker)",
    ["shard"],
)


class PageLabels:
    """Bounded ``page_id`` label values for this process."""

    def __init__(self, settings: Settings, max_pages: int | None = None) -> None:
        self._known = set(settings.page_access_tokens)
        self._seen: set[str] = set()
        self._max = max_pages if max_pages is not None else settings.metrics_max_pages

    def __call__(self, page_id: str) -> str:
        if page_id in self._known or page_id in self._seen:
            return page_id
        if len(self._seen) >= self._max:
            return "other"
        self._seen.add(page_id)
        return page_id


#: One PageLabels per process and set of pages (:func:`page_labels`).
_PAGE_LABELS: dict[tuple[frozenset[str], int], PageLabels] = {}


def page_labels(settings: Settings) -> PageLabels:
    """This process's :class:`PageLabels` for ``settings``' pages: every counter that labels
    pages shares one, so the bound of METRICS_MAX_PAGES holds for the process (a worker's
    observer, the cancels an intake's stop makes)."""
    key = (frozenset(settings.page_access_tokens), settings.metrics_max_pages)
    labels = _PAGE_LABELS.get(key)
    if labels is None:
        labels = _PAGE_LABELS[key] = PageLabels(settings)
    return labels


def count_cancels(settings: Settings, cancels: Iterable[tuple[str, str, int]]) -> None:
    """Count cancels made without the recorder ((page_id, reason, count) each: no Graph call, so
    no error code) in :data:`DELIVERIES`: outcome ``cancelled``, their page labelled by this
    process's :func:`page_labels`."""
    labels = page_labels(settings)
    for page_id, reason, count in cancels:
        DELIVERIES.labels(State.CANCELLED.value, labels(page_id), reason, "none", "none").inc(count)


def code_label(value: int | None) -> str:
    return str(value) if isinstance(value, int) and 0 <= value < 10**9 else "none"

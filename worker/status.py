"""One read model of the service's state: ``messenger-worker status``, the intake's ``/metrics``
and its readiness all read it from here, so they agree on every number.

Definitions:

* **open**: accepted and not final: ``P:open:c`` (kept as they change, store/ages.py) and the
  parked ones (``P:parked``);
* **oldest_open_age_s**: how long the oldest open delivery that is not parked (parked ones wait
  for their user on purpose) has waited since it was accepted;
* **queue_depth**: Celery messages waiting (each names a batch of up to QUEUE_BATCH_MAX ids);
* **in_flight_batches**: Celery messages delivered to workers and not yet acknowledged;
* **scheduled**: open deliveries waiting for a due time (retries, rate limits, paused pages,
  pacing slots); **parked**: waiting for their recipient to write;
* **dead_letters**: in the dead-letter set (replayable);
* **paused_pages**: pages paused now, with why and until when;
* rates: final outcomes per second over the last five minutes, and the failure ratio
  ((failed + dead) / final);
* **pages**: per page bucket, its limit, its rate after adaptive slow-down and the slots free now;
* **bucket_seal_lag_s**: how long the oldest finished window of outcomes, unread entries or
  idempotency keys has waited for the workers' seal pass to give its buckets their expiry
  (worker/store/seals.py; minutes at most while workers run, 0 when none waits).

Everything is read with pipelines: two round trips whatever the backlog or the number of pages
ever seen; the page rows are the ``max_pages`` most recently used buckets (METRICS_MAX_PAGES for
/metrics, MAX_PAGE_ROWS for the CLI).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import redis.exceptions
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.braze.gauges import BrazeOutboxCollector
from worker.config import Settings
from worker.ratelimit import burst_for, page_rate
from worker.states import State
from worker.store import Keys, ages, records, seals, text

T = TypeVar("T")
RATE_MINUTES = 5
#: Members of the set of open deliveries before their ages were counted per second (worker/store/
#: ages.py) looked at, oldest first, to find the oldest that is not parked.
OLDEST_SCAN = 64
#: Page rows read at most (the most recently used buckets), however many pages were ever used.
MAX_PAGE_ROWS = 1000
_RATE_STATES = (State.SENT, State.FAILED, State.DEAD, State.EXPIRED)


@dataclass(frozen=True)
class PageRow:
    page_id: str
    kind: str
    rate_limit: float
    effective_rate: float
    tokens: float
    paused_until: float | None
    pause_reason: str | None


@dataclass(frozen=True)
class PausedPage:
    page_id: str
    paused_until: float
    reason: str | None
    code: str | None


@dataclass(frozen=True)
class Status:
    queue_depth: int
    in_flight_batches: int
    open: int
    oldest_open_age_s: float
    scheduled: int
    parked: int
    dead_letters: int
    #: Redis's used_memory and maxmemory (0: no limit), bytes: the memory alert and sizing.
    redis_used_memory: int = 0
    redis_maxmemory: int = 0
    #: How long dead letters are kept (None: until replayed or purged) and final records are.
    dead_letter_retention_s: int | None = None
    record_retention_s: int = 0
    #: How long the oldest finished window of bucketed records has waited for the seal pass to
    #: give its buckets their expiry (worker/store/seals.py; 0: none waits).
    bucket_seal_lag_s: float = 0.0
    paused_pages: list[PausedPage] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    pages: list[PageRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON of ``messenger-worker status --json``: rates first, then the counts, the
        paused pages (``paused_pages`` is their number, ``paused`` the list) and the page rows."""
        out: dict[str, Any] = dict(self.rates)
        for name in (
            "queue_depth",
            "in_flight_batches",
            "open",
            "oldest_open_age_s",
            "scheduled",
            "parked",
            "dead_letters",
            "dead_letter_retention_s",
            "record_retention_s",
            "bucket_seal_lag_s",
        ):
            out[name] = getattr(self, name)
        out["paused_pages"] = len(self.paused_pages)
        out["paused"] = [asdict(p) for p in self.paused_pages]
        out["pages"] = [
            {"class" if k == "kind" else k: v for k, v in asdict(row).items()} for row in self.pages
        ]
        return out


def read(
    client: Any, settings: Settings, *, max_pages: int | None = None, now: float | None = None
) -> Status:
    """The whole status (sync client: the CLI, and /metrics from a thread)."""
    keys = Keys.of(settings)
    now = time.time() if now is None else now
    minute = int(now // 60) + 1
    stat_keys = [keys.stats(m, st.value) for m in range(minute - RATE_MINUTES, minute) for st in _RATE_STATES]
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.queue)
    pipe.hlen(keys.unacked)
    pipe.get(keys.open_total)  # open and not parked (store/ages.py); parked: its size below
    pipe.zcard(keys.pending)  # before that count: every open delivery had a deadline there
    pipe.zcard(keys.open)  # the layout before the counts (ages.py): read while it has members
    pipe.zrange(keys.open_seconds, 0, 0, withscores=True)
    pipe.zrange(keys.open, 0, OLDEST_SCAN - 1, withscores=True)
    pipe.zcard(keys.sched)
    pipe.zcard(keys.parked)
    pipe.zcard(keys.dead)
    pipe.zrangebyscore(keys.paused, now, "+inf", withscores=True)
    pipe.mget(stat_keys)
    pipe.zrevrange(keys.buckets, 0, (max_pages if max_pages is not None else MAX_PAGE_ROWS) - 1)
    pipe.info("memory")
    for meta in seals.metas(keys):
        pipe.hgetall(meta)
    depth, unacked, total, deadlines, legacy, *rest = pipe.execute()
    first, oldest, sched, parked, dead, paused, stats, buckets, memory, *metas = rest
    members = sorted(text(m) for m in buckets)  # the most recently used, in a stable order
    paused_ids = [text(m) for m, _ in paused]
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hgetall(keys.bucket_of(member))
    pages_of_buckets = sorted({keys.page_of_used(m) for m in members} | set(paused_ids))
    for page in pages_of_buckets:
        pipe.hgetall(keys.pause(page))
    if parked and oldest:  # parked deliveries wait for their user on purpose: not a backlog
        pipe.zmscore(keys.parked, [m for m, _ in oldest])
    res = pipe.execute() if members or pages_of_buckets or (parked and oldest) else []
    if parked and oldest:
        in_park = res.pop()
        # the oldest open delivery that is not parked; if the OLDEST_SCAN oldest are all parked,
        # the last of them (an upper bound of the real age)
        oldest = [o for o, score in zip(oldest, in_park, strict=True) if score is None][:1] or oldest[-1:]
    times = [t for t in (ages.first_second(first), float(oldest[0][1]) if oldest else None) if t is not None]
    pauses = {p: records.decode(r) for p, r in zip(pages_of_buckets, res[len(members) :], strict=True)}
    rows = [
        _page_row(settings, member, records.decode(raw), pauses, now)
        for member, raw in zip(members, res[: len(members)], strict=True)
    ]
    return Status(
        queue_depth=int(depth),
        in_flight_batches=int(unacked),
        open=int(deadlines) if total is None else int(total) + int(parked) + int(legacy),
        oldest_open_age_s=round(max(0.0, now - min(times)), 1) if times else 0.0,
        redis_used_memory=int(memory.get("used_memory") or 0),
        redis_maxmemory=int(memory.get("maxmemory") or 0),
        scheduled=int(sched),
        parked=int(parked),
        dead_letters=int(dead),
        dead_letter_retention_s=settings.dead_letter_retention or None,
        record_retention_s=settings.record_retention,
        bucket_seal_lag_s=round(max(seals.lag(records.decode(m), now) for m in metas), 1),
        paused_pages=[
            PausedPage(
                page, float(until), pauses.get(page, {}).get("reason"), pauses.get(page, {}).get("code")
            )
            for page, (_, until) in zip(paused_ids, paused, strict=True)
        ],
        rates=_rates(stats),
        pages=rows,
    )


def last_hour(
    client: Any, settings: Settings, *, minutes: int = 60, now: float | None = None
) -> dict[str, Any]:
    """Final outcomes per minute over the last hour (the console's chart), failures by class
    (``{status}:{reason}`` -> count) and possible duplicates: one round trip of bounded reads."""
    keys = Keys.of(settings)
    now = time.time() if now is None else now
    last = int(now // 60)
    span = range(last - minutes + 1, last + 1)
    pipe = client.pipeline(transaction=False)
    pipe.mget([keys.stats(m, st.value) for m in span for st in _RATE_STATES])
    for m in span:
        pipe.hgetall(keys.stats(m, "reasons"))
    counts, *reasons = pipe.execute()
    per_minute = [
        {
            "minute": m * 60,
            **{st.value: int(counts[i * len(_RATE_STATES) + j] or 0) for j, st in enumerate(_RATE_STATES)},
        }
        for i, m in enumerate(span)
    ]
    classes: dict[str, int] = {}
    for minute in reasons:
        for name, count in records.decode(minute).items():
            classes[name] = classes.get(name, 0) + int(count)
    duplicates = classes.pop("possible_duplicate", 0)
    return {
        "minutes": per_minute,
        "failures": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
        "possible_duplicates": duplicates,
    }


def read_all(
    shards: list[tuple[Settings, Any]], *, max_pages: int | None = None, now: float | None = None
) -> Status:
    """:func:`read` of every shard, merged (sync clients, one shard after another)."""
    return merge([read(client, s, max_pages=max_pages, now=now) for s, client in shards])


def last_hour_all(shards: list[tuple[Settings, Any]], *, now: float | None = None) -> dict[str, Any]:
    """:func:`last_hour` of every shard that answers, merged (raises when none does)."""
    return merge_hours(answering(_each(shards, lambda client, s: last_hour(client, s, now=now))))


def read_each(shards: list[tuple[Settings, Any]], *, now: float | None = None) -> list[Status | None]:
    """:func:`read` of each shard; None for a shard whose Redis does not answer (the console
    shows it down and the others as they are)."""
    return _each(shards, lambda client, s: read(client, s, now=now))


def _each(shards: list[tuple[Settings, Any]], read_one: Callable[[Any, Settings], T]) -> list[T | None]:
    out: list[T | None] = []
    for s, client in shards:
        try:
            out.append(read_one(client, s))
        except (redis.exceptions.RedisError, OSError):
            out.append(None)
    return out


def unavailable(results: list[T | None]) -> tuple[int, ...]:
    """The indexes of the shards whose Redis did not answer (:func:`read_each`'s Nones)."""
    return tuple(i for i, result in enumerate(results) if result is None)


def answering(results: list[T | None]) -> list[T]:
    """The shards' results that came back; a Redis ConnectionError (503 unavailable) when none did."""
    got = [r for r in results if r is not None]
    if results and not got:
        raise redis.exceptions.ConnectionError("no shard's Redis answers")
    return got


def merge(statuses: list[Status]) -> Status:
    """Several shards' statuses as one (REDIS_SHARDS): counts and rates summed, the oldest age
    the largest, Redis memory summed (per shard: /metrics' ``shard`` label), pages listed."""
    if len(statuses) == 1:
        return statuses[0]
    counts = {
        name: sum(getattr(s, name) for s in statuses)
        for name in (
            "queue_depth",
            "in_flight_batches",
            "open",
            "scheduled",
            "parked",
            "dead_letters",
            "redis_used_memory",
            "redis_maxmemory",
        )
    }
    rates = {
        name: round(sum(s.rates.get(name, 0.0) for s in statuses), 2)
        for name in statuses[0].rates
        if name != "failure_ratio"
    }
    final = sum(rates.get(f"{st.value}_per_s", 0.0) for st in _RATE_STATES)
    failed = rates.get(f"{State.FAILED.value}_per_s", 0.0) + rates.get(f"{State.DEAD.value}_per_s", 0.0)
    rates["failure_ratio"] = round(failed / final, 4) if final else 0.0
    return Status(
        **counts,
        oldest_open_age_s=max(s.oldest_open_age_s for s in statuses),
        bucket_seal_lag_s=max(s.bucket_seal_lag_s for s in statuses),
        dead_letter_retention_s=statuses[0].dead_letter_retention_s,
        record_retention_s=statuses[0].record_retention_s,
        paused_pages=[p for s in statuses for p in s.paused_pages],
        rates=rates,
        pages=sorted((row for s in statuses for row in s.pages), key=lambda r: (r.page_id, r.kind)),
    )


def merge_hours(hours: list[dict[str, Any]]) -> dict[str, Any]:
    """Several shards' :func:`last_hour` as one: per-minute counts and failure classes summed."""
    if len(hours) == 1:
        return hours[0]
    minutes = [dict(m) for m in hours[0]["minutes"]]
    classes: dict[str, int] = dict(hours[0]["failures"])
    for hour in hours[1:]:
        for mine, theirs in zip(minutes, hour["minutes"], strict=True):
            for name, value in theirs.items():
                if name != "minute":
                    mine[name] += value
        for name, n in hour["failures"].items():
            classes[name] = classes.get(name, 0) + n
    return {
        "minutes": minutes,
        "failures": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
        "possible_duplicates": sum(h["possible_duplicates"] for h in hours),
    }


def _rates(values: list[Any]) -> dict[str, float]:
    totals = dict.fromkeys(_RATE_STATES, 0)
    for i, value in enumerate(values):
        if value is not None:
            totals[_RATE_STATES[i % len(_RATE_STATES)]] += int(value)
    final = sum(totals.values())
    out = {f"{st.value}_per_s": round(n / (RATE_MINUTES * 60), 2) for st, n in totals.items()}
    failed = totals[State.FAILED] + totals[State.DEAD]
    out["failure_ratio"] = round(failed / final, 4) if final else 0.0
    return out


def _page_row(
    settings: Settings, member: str, rec: dict[str, str], pauses: dict[str, dict[str, str]], now: float
) -> PageRow:
    page, _, kind = member.rpartition(":")
    rate = page_rate(settings, page, kind)
    factor = float(rec.get("f", "1"))
    if factor < 1:  # the recovery since it was lowered, as the limiter's Lua computes it
        factor = min(
            1.0, factor + (now - float(rec.get("ft", "0")) / 1e6) * settings.pace_recovery_per_second
        )
    tat = float(rec.get("tat", "0")) / 1e6
    effective = rate * factor
    burst = burst_for(settings, rate)
    tokens = max(0.0, min(float(burst), (now - (tat - burst / effective)) * effective)) if effective else 0.0
    pause = pauses.get(page, {})
    until = records.number(pause, "until")
    return PageRow(
        page_id=page,
        kind=kind,
        rate_limit=rate,
        effective_rate=round(effective, 2),
        tokens=round(tokens, 2),
        paused_until=until if until > now else None,
        pause_reason=pause.get("reason") if until > now else None,
    )


# --- /metrics -------------------------------------------------------------------------------------
_GAUGES = (
    ("bmw_queue_depth", "Celery messages waiting in the queue", "queue_depth"),
    (
        "bmw_in_flight_batches",
        "Celery messages delivered to workers and not yet acknowledged",
        "in_flight_batches",
    ),
    ("bmw_open_deliveries", "Accepted deliveries not yet in a final state", "open"),
    (
        "bmw_oldest_open_age_seconds",
        "Age of the oldest accepted, not final delivery that is not parked",
        "oldest_open_age_s",
    ),
    ("bmw_redis_used_memory_bytes", "Redis used_memory (INFO memory)", "redis_used_memory"),
    ("bmw_redis_maxmemory_bytes", "Redis maxmemory (0: no limit)", "redis_maxmemory"),
    (
        "bmw_scheduled",
        "Deliveries waiting for a retry, a rate-limit wait, a paused page or a slot",
        "scheduled",
    ),
    ("bmw_parked", "Deliveries parked outside the 24-hour window until the user re-engages", "parked"),
    ("bmw_dead_letters", "Deliveries in the dead-letter store", "dead_letters"),
    (
        "bmw_bucket_seal_lag_seconds",
        "How long the oldest finished window of bucketed records has waited for the workers' seal pass"
        " to give its buckets their expiry (0: none waits)",
        "bucket_seal_lag_s",
    ),
)


class RedisStateCollector(Collector):
    """The read model as Prometheus gauges, read at scrape time (served by the intake). With
    REDIS_SHARDS, one series per shard (label ``shard``) for the shard-wide gauges."""

    def __init__(self, shards: list[tuple[Settings, Any]]) -> None:
        """``shards``: (settings, sync client) per shard, in index order (one without REDIS_SHARDS)."""
        self._shards = shards

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labelled = len(self._shards) > 1
        names = ["shard"] if labelled else []
        up = GaugeMetricFamily(
            "bmw_redis_up", "Whether the intake could read Redis at scrape time", labels=names
        )
        gauges = {attr: GaugeMetricFamily(name, doc, labels=names) for name, doc, attr in _GAUGES}
        paused_n = GaugeMetricFamily("bmw_pages_paused", "Pages currently paused", labels=names)
        synced: dict[str, float] = {}
        read_ok: list[Status] = []
        for index, (settings, client) in enumerate(self._shards):
            labels = [str(index)] if labelled else []
            try:
                status = read(client, settings, max_pages=settings.metrics_max_pages)
            except Exception:  # noqa: BLE001  # a scrape must not fail because Redis is down
                up.add_metric(labels, 0)
                continue
            up.add_metric(labels, 1)
            read_ok.append(status)
            for _name, _doc, attr in _GAUGES:
                gauges[attr].add_metric(labels, float(getattr(status, attr)))
            paused_n.add_metric(labels, len(status.paused_pages))
            _read_synced(synced, client, settings)
        yield up
        if not read_ok:
            return
        yield from gauges.values()
        yield paused_n
        yield _synced_gauge(synced)
        yield from _page_gauges(merge(read_ok))


def _read_synced(synced: dict[str, float], client: Any, settings: Settings) -> None:
    """Each synced page's catalogue time on this shard (``P:tpl:synced``: one entry per page with
    templates, bounded by the pages configured), the latest per page over shards (a page being
    moved has two). Best effort: the scrape goes on without it."""
    try:
        rows = client.zrange(Keys.of(settings).templates_synced, 0, -1, withscores=True)
    except redis.exceptions.RedisError:
        return
    for page, at in rows:
        synced[text(page)] = max(float(at), synced.get(text(page), 0.0))


def _synced_gauge(synced: dict[str, float]) -> GaugeMetricFamily:
    """So that a sync failing for hours is seen: the page keeps its last catalogue, and the
    intake refuses by it (alert BmwTemplateCatalogueStale)."""
    family = GaugeMetricFamily(
        "bmw_template_catalogue_synced_timestamp_seconds",
        "When a page's utility-template catalogue was last read from Graph (epoch s)",
        labels=["page_id"],
    )
    for page, at in sorted(synced.items()):
        family.add_metric([page], at)
    return family


def _page_gauges(status: Status) -> Iterator[GaugeMetricFamily]:
    paused_g = GaugeMetricFamily("bmw_page_paused", "1 while a page is paused", labels=["page_id", "reason"])
    rate_g = GaugeMetricFamily(
        "bmw_page_rate_limit", "Configured sends/s per page", labels=["page_id", "class"]
    )
    eff_g = GaugeMetricFamily(
        "bmw_page_effective_rate", "Sends/s after adaptive slow-down", labels=["page_id", "class"]
    )
    tokens_g = GaugeMetricFamily("bmw_page_tokens", "Slots available now", labels=["page_id", "class"])
    for row in status.pages:
        labels = [row.page_id, row.kind]
        rate_g.add_metric(labels, row.rate_limit)
        eff_g.add_metric(labels, row.effective_rate)
        tokens_g.add_metric(labels, row.tokens)
    # every paused page (P:paused), not only those among the page rows: a paused page grants no
    # slot, so its limiter's last use ages out of the METRICS_MAX_PAGES most recent while it is
    # still paused, and the alerts on this gauge (BmwPageTokenInvalid, BmwPagePaused) resolved
    for paused in status.paused_pages:
        paused_g.add_metric([paused.page_id, paused.reason or "unknown"], 1)
    yield from (paused_g, rate_g, eff_g, tokens_g)


def render_metrics(shards: list[tuple[Settings, Any]] | None) -> bytes:
    """The intake's /metrics body: this process (or all, in multiprocess mode) plus Redis state."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus-client
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    if shards:
        state = CollectorRegistry()
        state.register(RedisStateCollector(shards))
        state.register(BrazeOutboxCollector(shards))
        body += generate_latest(state)
    return body


# --- readiness ------------------------------------------------------------------------------------
@dataclass
class MemoryGuard:
    """Whether Redis has room for new messages: ``used_memory`` under REDIS_MEMORY_HEADROOM of
    ``maxmemory`` (INFO memory, read at most once a second). Without maxmemory it always has."""

    headroom: float
    checked_at: float = -1e9
    ratio: float = 0.0

    async def check(self, client: Any) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= 1.0:
            self.checked_at = now
            info = await client.info("memory")
            limit = int(info.get("maxmemory") or 0)
            self.ratio = int(info.get("used_memory") or 0) / limit if limit else 0.0
        return self.headroom >= 1 or self.ratio < self.headroom


__all__ = [
    "MemoryGuard",
    "PageRow",
    "PausedPage",
    "RedisStateCollector",
    "Status",
    "answering",
    "last_hour_all",
    "merge",
    "merge_hours",
    "read",
    "read_all",
    "read_each",
    "render_metrics",
]

"""The Braze outbox as Prometheus gauges, read at scrape time by the intake (worker/status.py's
``render_metrics``), one series per shard with REDIS_SHARDS (label ``shard``).

While Braze is down, refuses the key, or is slow, the outbox grows in Redis; the counters
(``bmw_braze_objects_total``) say what was sent, held or dropped, not what is waiting. These say
it: the items waiting, taken (moved out by a drainer and not yet acknowledged) and set aside
(undecodable), and until when the drainer waits before its next try. Alert
``BmwBrazeOutboxStuck``: a shard's outbox never empty for 30 minutes and not shrinking, however
the drainer's waits went. Four reads per shard (three LLENs and a GET), pipelined; a shard that
does not answer is left out (the state collector's ``bmw_redis_up`` says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis.exceptions
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.config import Settings
from worker.store import Keys

#: The outbox's lists by the ``state`` label of ``bmw_braze_outbox_items``.
STATES = ("waiting", "taken", "set_aside")


class BrazeOutboxCollector(Collector):
    def __init__(self, shards: list[tuple[Settings, Any]]) -> None:
        """``shards``: (settings, sync client) per shard, in index order (one without REDIS_SHARDS)."""
        self._shards = shards

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labelled = len(self._shards) > 1
        names = ["shard"] if labelled else []
        items = GaugeMetricFamily(
            "bmw_braze_outbox_items",
            "Writes for Braze in the outbox by state: waiting, taken (by a drainer, not yet "
            "acknowledged), set_aside (undecodable: for a human)",
            labels=[*names, "state"],
        )
        retry_at = GaugeMetricFamily(
            "bmw_braze_outbox_retry_at_timestamp_seconds",
            "Until when the Braze drainer waits before its next try (epoch s; 0: no wait)",
            labels=names,
        )
        for index, (settings, client) in enumerate(self._shards):
            labels = [str(index)] if labelled else []
            keys = Keys.of(settings)
            pipe = client.pipeline(transaction=False)
            for key in (keys.braze_outbox, keys.braze_inflight, keys.braze_invalid):
                pipe.llen(key)
            pipe.get(keys.braze_retry_at)
            try:
                *lengths, at = pipe.execute()
            except redis.exceptions.RedisError:
                continue
            for state, length in zip(STATES, lengths, strict=True):
                items.add_metric([*labels, state], float(length))
            retry_at.add_metric(labels, float(at) if at else 0.0)
        yield items
        yield retry_at

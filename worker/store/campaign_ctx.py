"""The context every campaign-aware script gets (``store/lua/_campaign.lua``): key prefixes,
retentions, the time and where Braze's outcome events go, as 17 ARGV values in a fixed order. One
function builds them so that accept, claim, record, cancel, replay and receipts agree."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from worker.store.keys import Keys

#: How many ARGV values :func:`context_args` returns.
CONTEXT_ARGS = 17


def event_time(at: float) -> str:
    """``at`` (epoch s) as a Braze event's time: ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context_args(
    keys: Keys, campaign_retention: int, record_retention: int, now: float, *, outcome_events: bool = False
) -> list[Any]:
    """The ARGV values ``camp_init(i)`` reads, in its order. With ``outcome_events`` a delivery the
    script ends (a cancel) gets its ``messenger_delivery`` Braze event in the outbox, in the same
    script: once, whatever retries the call."""
    return [
        keys.campaign_prefix,
        keys.campaign_open_prefix,
        keys.campaigns,
        keys.campaigns_stopped,
        campaign_retention,
        record_retention,
        keys.delivery_prefix,
        keys.park_prefix,
        keys.pending,
        keys.open,
        keys.sched,
        keys.parked,
        keys.stats_prefix,
        int(now // 60),
        repr(now),
        keys.braze_outbox if outcome_events else "",
        event_time(now) if outcome_events else "",
    ]


def braze_events(settings: Any, kind: bool) -> bool:
    """Whether Braze events of a ``kind`` (its setting: BRAZE_OUTCOME_EVENTS or
    BRAZE_RECEIPT_EVENTS) go to the outbox: with BRAZE_REST_URL (not the key: the intake, which
    cancels too, never holds it). The one rule the scripts' callers share."""
    return bool(kind and settings.braze_rest_url)


def of_settings(keys: Keys, settings: Any, now: float) -> list[Any]:
    """:func:`context_args` from a ``Settings``: outcome events with BRAZE_OUTCOME_EVENTS and
    BRAZE_REST_URL (not the key: the intake, which cancels too, never holds it)."""
    return context_args(
        keys,
        settings.campaign_retention,
        settings.record_retention,
        now,
        outcome_events=braze_events(settings, settings.braze_outcome_events),
    )

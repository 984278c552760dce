"""The context every campaign-aware script gets (``store/lua/_campaign.lua``): key prefixes,
retentions and the time, as 15 ARGV values in a fixed order. One function builds them so that
accept, claim, record, cancel, replay and receipts agree."""

from __future__ import annotations

from typing import Any

from worker.store.keys import Keys

#: How many ARGV values :func:`context_args` returns.
CONTEXT_ARGS = 15


def context_args(keys: Keys, campaign_retention: int, record_retention: int, now: float) -> list[Any]:
    """The ARGV values ``camp_init(i)`` reads, in its order."""
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
    ]


def of_settings(keys: Keys, settings: Any, now: float) -> list[Any]:
    """:func:`context_args` from a ``Settings``."""
    return context_args(keys, settings.campaign_retention, settings.record_retention, now)

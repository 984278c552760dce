"""Braze: the REST client (:mod:`~worker.braze.client`), the items we write
(:mod:`~worker.braze.items`) and the durable outbox with its one drainer
(:mod:`~worker.braze.outbox`)."""

from worker.braze.client import (
    BrazeAuthError,
    BrazeClient,
    BrazeConfig,
    BrazeEndpointError,
    BrazeError,
    BrazeFatal,
    BrazeRetryable,
    BrazeSetupError,
    SlidingWindowPacer,
    TrackResult,
    braze_config,
    error_from_response,
)
from worker.braze.items import (
    OUTCOME_EVENT,
    InvalidItemError,
    build_request,
    check_item,
    outcome_event_item,
    psid_attribute_item,
    unreachable_item,
)
from worker.braze.outbox import BrazeOutbox, DrainResult, OutboxDrainer, encode_items, queue_items

__all__ = [
    "OUTCOME_EVENT",
    "BrazeAuthError",
    "BrazeClient",
    "BrazeConfig",
    "BrazeEndpointError",
    "BrazeError",
    "BrazeFatal",
    "BrazeOutbox",
    "BrazeRetryable",
    "BrazeSetupError",
    "DrainResult",
    "InvalidItemError",
    "OutboxDrainer",
    "SlidingWindowPacer",
    "TrackResult",
    "braze_config",
    "build_request",
    "check_item",
    "encode_items",
    "error_from_response",
    "outcome_event_item",
    "psid_attribute_item",
    "queue_items",
    "unreachable_item",
]

"""The sandbox's configuration and its token convention.

Owns :class:`SandboxConfig` (latency, explicit token -> page map, record limit) and the tokens the
sandbox accepts without configuration: ``sandbox-token-<page_id>`` (:func:`sandbox_token`) and the
always-expired ``sandbox-token-expired-<anything>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

SANDBOX_TOKEN_PREFIX: Final = "sandbox-token-"  # noqa: S105 - a public naming convention, not a secret
EXPIRED_TOKEN_PREFIX: Final = SANDBOX_TOKEN_PREFIX + "expired-"


def sandbox_token(page_id: str) -> str:
    """A token the sandbox accepts for ``page_id`` (no configuration needed)."""
    return SANDBOX_TOKEN_PREFIX + page_id


@dataclass(frozen=True)
class SandboxConfig:
    latency_ms: float = 0.0
    """Added to every Send API answer (``asyncio.sleep``); changeable via ``POST /__sandbox/config``."""
    tokens: Mapping[str, str] = field(default_factory=dict)
    """Explicit token -> page id, checked before the ``sandbox-token-<page_id>`` convention."""
    record_limit: int = 1_000_000
    """Maximum number of recorded calls kept (oldest dropped first)."""
    receipts_webhook: str | None = None
    """The intake's ``/messenger/webhook``: signed delivery and read receipts are posted there for
    the messages the sandbox accepted (:mod:`worker.sandbox.receipts`); None: none are."""
    receipts_secret: str = ""
    """The app secret the receipts are signed with (the intake's ``APP_SECRET``)."""
    receipts_share: float = 0.8
    """The share of accepted sends that get a delivery receipt (and of those, a read receipt)."""
    receipts_delay_ms: float = 1000.0
    """From the send to its delivery receipt, and from that to its read receipt."""

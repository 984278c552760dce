"""Secrets never appear in reprs of the objects that carry them, and a delivery carries none."""

from __future__ import annotations

import dataclasses

from worker.config import PageTokens, Settings
from worker.delivery.model import Delivery

INTAKE = "intake-token-for-repr-test-0123456789"
ADMIN = "admin-token-for-repr-test-0123456789ab"
PAGE_TOKEN = "EAAB-page-token-for-repr-test-0123456789"


def test_settings_and_page_tokens_hide_every_token() -> None:
    settings = Settings(
        intake_tokens=f'{{"{INTAKE}": ["100"]}}',  # the JSON form: pages keyed by the token's id
        admin_tokens=[ADMIN],
        page_access_tokens={"100": PAGE_TOKEN},
        _env_file=None,
    )
    for text in (repr(settings), str(settings), repr(PageTokens(settings, source=""))):
        for secret in (INTAKE, ADMIN, PAGE_TOKEN):
            assert secret not in text


def test_a_delivery_never_carries_a_token() -> None:
    """Records written before tokens stopped being stored may still hold one: it is not read."""
    d = Delivery.from_record(
        "d1", "claim-1", {"page_id": "100", "psid": "p1", "body": "{}", "token": PAGE_TOKEN}
    )
    assert PAGE_TOKEN not in repr(d)
    assert PAGE_TOKEN not in [getattr(d, f.name) for f in dataclasses.fields(d)]

"""Secrets never appear in reprs of the objects that carry them."""

from __future__ import annotations

from worker.delivery.model import Delivery


def test_delivery_repr_hides_its_passthrough_token() -> None:
    token = "EAAB-passthrough-token-0123456789"
    d = Delivery.from_record("d1", "claim-1", {"page_id": "100", "psid": "p1", "body": "{}", "token": token})
    assert d.token == token
    assert token not in repr(d)
    assert token not in str(d)

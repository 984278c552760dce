"""Attribution headers and Messenger receipts: parsing only (no Redis)."""

from __future__ import annotations

import pytest

from worker.intake.routes.send import MAX_ATTRIBUTION, attribution
from worker.messenger.validation import InputError
from worker.messenger.webhook import MAX_RECEIPT_MIDS, event_to_dict, parse_events
from worker.sandbox.receipts import Receipts


def test_attribution_headers_in_order_empty_ones_absent() -> None:
    assert attribution({}) == ("",) * 5
    headers = {b"x-braze-canvas-id": "cv-1", b"x-braze-send-id": " s-9 ", b"x-braze-campaign-id": ""}
    assert attribution(headers) == ("", "cv-1", "", "", "s-9")


@pytest.mark.parametrize("value", ["a b", "x" * (MAX_ATTRIBUTION + 1), "caf\u00e9", "a\tb"])
def test_a_bad_attribution_value_is_a_422(value: str) -> None:
    with pytest.raises(InputError) as caught:
        attribution({b"x-braze-campaign-id": value})
    assert (caught.value.status, caught.value.code) == (422, "invalid_attribution")


def test_read_and_delivery_receipts_carry_their_watermark_and_mids() -> None:
    payload = {
        "object": "page",
        "entry": [
            {
                "id": "100",
                "time": 1_700_000_000_000,
                "messaging": [
                    {
                        "sender": {"id": "p1"},
                        "recipient": {"id": "100"},
                        "delivery": {"mids": ["m1", 5, ""], "watermark": 1_700_000_000_500},
                    },
                    {"sender": {"id": "p1"}, "recipient": {"id": "100"}, "read": {"watermark": "soon"}},
                    {"sender": {"id": "p2"}, "recipient": {"id": "100"}, "delivery": {"mids": ["m"] * 500}},
                ],
            }
        ],
    }
    delivery, read, many = (event_to_dict(e) for e in parse_events(payload))
    assert (delivery["kind"], delivery["mids"], delivery["watermark"]) == (
        "delivery",
        ["m1"],
        1_700_000_000.5,
    )
    assert (read["kind"], read["watermark"], read["opens_window"]) == ("read", None, False)
    assert len(many["mids"]) == MAX_RECEIPT_MIDS


def test_the_sandbox_receipt_body_is_messengers_shape() -> None:
    from worker.sandbox.receipts import _Receipt

    body = Receipts.body(
        [_Receipt(0, "delivery", "100", "p1", "m1"), _Receipt(0, "read", "100", "p1", "m1")], 1.5
    )
    events = parse_events(__import__("orjson").loads(body))
    assert [(e.kind, e.mids, e.watermark) for e in events] == [("delivery", ("m1",), 1.5), ("read", (), 1.5)]

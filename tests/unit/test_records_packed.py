"""records.pack_intake / decode / page_of: the packed intake part of a record (no Redis)."""

from __future__ import annotations

import msgpack

from worker.store import records


def test_decode_gives_the_packed_values_back_as_fields_in_either_reply_shape() -> None:
    packed = records.pack_intake(("100", "psid-1", b'{"a":1}', "tok", "req", b'["utility:x"]', b""))
    assert msgpack.unpackb(packed, raw=False) == ["100", "psid-1", '{"a":1}', "tok", "req", '["utility:x"]']
    flat = [b"status", b"queued", b"in", packed, b"created_at", b"1.5"]
    as_dict = {b"status": b"queued", b"in": packed, b"created_at": b"1.5"}
    want = {
        "status": "queued",
        "created_at": "1.5",
        "page_id": "100",
        "psid": "psid-1",
        "body": '{"a":1}',
        "caller": "tok",
        "request_id": "req",
        "fallbacks": '["utility:x"]',
    }
    assert records.decode(flat) == want
    assert records.decode(as_dict) == want


def test_a_record_without_the_packed_field_decodes_as_before() -> None:
    assert records.decode({b"status": b"queued", b"psid": b"p"}) == {"status": "queued", "psid": "p"}


def test_page_of_reads_the_field_or_the_packed_value() -> None:
    assert records.page_of(b"200", None) == "200"
    assert records.page_of(None, records.pack_intake(("300", "p"))) == "300"
    assert records.page_of(None, None) is None

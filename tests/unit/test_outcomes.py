"""The outcome codec and the hours a reader looks in (worker/store/outcomes.py)."""

from __future__ import annotations

import orjson

from worker.store import Keys, outcomes


def test_pack_keeps_the_outcome_fields_only_and_round_trips() -> None:
    rec = {"status": "sent", "page_id": "1", "created_at": "1.5", "error": '{"reason":"x"}', "read_at": "9"}
    packed = outcomes.pack({**rec, "body": "secret body", "psid": "p", "token": "EAAB"})
    assert b"secret" not in packed
    assert b"EAAB" not in packed
    assert outcomes.unpack(packed) == rec
    assert len(orjson.loads(packed)) == outcomes.FIELDS.index("error") + 1  # trailing empties cut


def test_hours_cover_the_retention_newest_first() -> None:
    now = 10 * outcomes.SPAN + 100
    assert list(outcomes.hours(now, 2 * outcomes.SPAN)) == [11, 10, 9, 8]
    assert outcomes.bucket(Keys("bmw", "q"), 10, "abcdef0123") == "bmw:o:10:0123"

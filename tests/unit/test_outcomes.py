"""The outcome codec and the hours a reader looks in (worker/store/outcomes.py)."""

from __future__ import annotations

import msgpack
import orjson

from worker.delivery import recorder
from worker.delivery.model import Delivery, Outcome
from worker.graph import SendResult
from worker.states import Event
from worker.store import Keys, outcomes


def test_pack_keeps_the_outcome_fields_only_and_round_trips() -> None:
    rec = {"status": "sent", "page_id": "1", "created_at": "1.5", "error": '{"reason":"x"}', "read_at": "9"}
    packed = outcomes.pack({**rec, "body": "secret body", "psid": "p", "token": "EAAB"})
    assert b"secret" not in packed
    assert b"EAAB" not in packed
    assert outcomes.unpack(packed) == rec
    assert len(msgpack.unpackb(packed)) == outcomes.FIELDS.index("error") + 1  # trailing empties cut


def test_times_are_stored_as_numbers_that_read_back_as_the_same_text() -> None:
    """A time is a MessagePack double (9 bytes, not 19 with its quotes): it reads back as the text
    it was written from (the repr of the same double); an integer stays an integer, and a text
    that no number reads back as is kept as text."""
    now = 1796583716.634361
    rec = {
        "status": "sent",
        "created_at": repr(now),
        "updated_at": "1796583716",
        "sent_at": "1.50",
        "attempts": "1",
    }
    packed = outcomes.pack(rec)
    values = msgpack.unpackb(packed)
    assert values[outcomes.FIELDS.index("created_at")] == now
    assert values[outcomes.FIELDS.index("updated_at")] == 1796583716
    assert values[outcomes.FIELDS.index("sent_at")] == "1.50"
    assert values[outcomes.FIELDS.index("attempts")] == "1"  # not a time: a string
    assert outcomes.unpack(packed) == rec
    as_json = orjson.dumps([rec.get(f, "") for f in outcomes.FIELDS[: outcomes.FIELDS.index("sent_at") + 1]])
    assert len(packed) < len(as_json) - 15


def test_no_failures_is_stored_as_nothing_and_cuts_the_empty_fields_before_it() -> None:
    rec = {"status": "sent", "page_id": "1", "message_id": "m_1", "sent_at": "2.5", "failures": "0"}
    packed = outcomes.pack(rec)
    assert len(msgpack.unpackb(packed)) == outcomes.FIELDS.index("sent_at") + 1
    assert outcomes.unpack(packed) == {k: v for k, v in rec.items() if k != "failures"}
    assert outcomes.unpack(outcomes.pack({**rec, "failures": "2"}))["failures"] == "2"


def test_a_value_written_as_json_before_still_reads() -> None:
    rec = {"status": "failed", "page_id": "1", "created_at": "1796583716.5", "error": '{"reason":"x"}'}
    before = orjson.dumps([rec.get(f, "") for f in outcomes.FIELDS[: outcomes.FIELDS.index("error") + 1]])
    assert outcomes.unpack(before) == rec
    assert outcomes.unpack(before.decode()) == rec


def test_hours_cover_the_retention_newest_first() -> None:
    now = 10 * outcomes.SPAN + 100
    assert list(outcomes.hours(now, 2 * outcomes.SPAN)) == [11, 10, 9, 8]
    assert outcomes.bucket(Keys("bmw", "q"), 10, "abcdef0123") == "bmw:o:10:0123"


def _claimed() -> Delivery:
    rec = {
        "status": "retrying",
        "page_id": "1",
        "psid": "p",
        "body": '{"message": {"text": "secret"}}',
        "caller": "tok1",
        "created_at": "100.5",
        "attempts": "1",
        "external_id": "braze-user",
        "campaign_id": "c1",
        "error": '{"reason":"transient"}',
        "claim": "w1.7",
    }
    return Delivery.from_record("d1", "w1.7", rec)


def test_the_worker_builds_the_outcome_from_what_it_claimed() -> None:
    sent = Outcome(_claimed(), Event.SEND_OK, result=SendResult("m_9", "p", 200, 50.0, started_at=101.0))
    fields = recorder.record_fields(sent, 102.0)
    rec = outcomes.unpack(recorder.outcome_value(sent, fields, 102.0, braze_receipts=False))
    assert rec["status"] == "sent"
    assert rec["message_id"] == "m_9"
    assert rec["caller"] == "tok1"  # who may read it
    assert rec["campaign_id"] == "c1"
    assert rec["done"] == outcomes.done_digest("w1.7")
    assert rec["updated_at"] == "102.0"
    assert "error" not in rec  # a sent one: the earlier error goes
    assert "external_id" not in rec  # no receipt events: the Braze user goes
    assert not {"body", "psid", "claim"} & set(rec)
    kept = outcomes.unpack(recorder.outcome_value(sent, fields, 102.0, braze_receipts=True))
    assert kept["external_id"] == "braze-user"
    failed = Outcome(_claimed(), Event.FAIL, reason="permanent")
    rec = outcomes.unpack(recorder.outcome_value(failed, recorder.record_fields(failed, 103.0), 103.0, False))
    assert rec["status"] == "failed"
    assert orjson.loads(rec["error"])["reason"] == "permanent"
    assert "external_id" not in rec


def test_done_is_stored_as_raw_bytes_and_read_as_its_hex() -> None:
    """``done`` (12 hex characters of the claim token's SHA-1) is 6 raw bytes in the value, in
    MessagePack's str family as Lua's cmsgpack writes every string (a receipt repacks outcomes);
    readers get the hex back, and a value written before with the hex reads the same."""
    digest = outcomes.done_digest("w1.7")
    rec = {"status": "sent", "page_id": "1", "done": digest, "message_id": "m_1"}
    value = outcomes.pack(rec)
    assert bytes.fromhex(digest) in value
    assert digest.encode() not in value
    assert outcomes.unpack(value)["done"] == digest
    assert msgpack.unpackb(value, raw=True)[7] == bytes.fromhex(digest)  # str family, not bin
    assert msgpack.packb(msgpack.unpackb(value, raw=True), use_bin_type=False) == value  # as Lua repacks it
    before = msgpack.packb(["sent", "1", "", "", "", "", "", digest, "m_1"])
    assert outcomes.unpack(before)["done"] == digest
    assert len(before) - len(value) == 6
    # any other field's bytes read as text, an invalid byte replaced, never an error
    assert outcomes.unpack(msgpack.packb(["sent", b"\xff1"], use_bin_type=False))["page_id"] == "\ufffd1"

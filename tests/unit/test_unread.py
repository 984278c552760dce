"""The unread entries' layout (worker/store/unread.py; store/lua/_unread.lua writes the same
bytes, tests/integration/test_fence.py checks the two agree)."""

from __future__ import annotations

import pytest

from worker.store import unread


def test_an_entry_is_twenty_bytes_and_reads_back() -> None:
    ids = ["0123456789abcdef" * 2, "fedcba9876543210" * 2]
    value = unread.entry(ids[0], 493_000) + unread.entry(ids[1], 2**24 - 1)
    assert len(value) == 2 * unread.ENTRY
    assert value[0] == unread.RAW_ID
    assert unread.entries(value) == [(ids[0], 493_000), (ids[1], 2**24 - 1)]


def test_an_id_that_is_not_lowercase_hex_is_kept_as_text() -> None:
    for odd in ("d0", "AB" * 16, "a b" + "c" * 29):
        value = unread.entry(odd, 7)
        assert value[0] == unread.TEXT_ID + len(odd)
        assert unread.entries(value + unread.entry("ab" * 16, 8)) == [(odd, 7), ("ab" * 16, 8)]
    with pytest.raises(ValueError, match="1 to 127"):
        unread.entry("x" * 128, 1)


def test_text_entries_written_before_still_read() -> None:
    assert unread.entries(b"d1,493000 d2,1800000000.5,493001") == [("d1", 493_000), ("d2", 493_001)]
    assert unread.entries(None) == []


def test_the_field_is_the_hex_digests_raw_bytes() -> None:
    hex_field = unread.hex_field("page", "psid")
    assert len(hex_field) == unread.FIELD
    assert unread.field("page", "psid") == bytes.fromhex(hex_field)


def test_a_value_cut_short_reads_the_whole_entries_before_the_cut() -> None:
    value = unread.entry("ab" * 16, 5) + unread.entry("cd" * 16, 6)
    assert unread.entries(value[:-1]) == [("ab" * 16, 5)]
    assert unread.entries(value + bytes([0x20])) == [("ab" * 16, 5), ("cd" * 16, 6)]

"""Delivery ids: 32 hex characters of 128 random bits, unrelated to each other and across a fork."""

from __future__ import annotations

import os
import re

from worker.intake.routes.send import _send_headers
from worker.store import ids as broker


def test_ids_are_32_hex_and_unique() -> None:
    ids = [broker.new_delivery_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_share_no_prefix_or_counter() -> None:
    """Not a process prefix plus a counter (guessable from one id): the bits are independent."""
    ids = [broker.new_delivery_id() for _ in range(2_000)]
    assert len({i[:8] for i in ids}) > 1_990  # a shared prefix would make this 1
    assert len({i[-8:] for i in ids}) > 1_990
    ones = sum(bin(int(i, 16)).count("1") for i in ids)
    assert abs(ones / (len(ids) * 128) - 0.5) < 0.01  # about half the bits set


def test_a_forked_child_draws_its_own_prefix() -> None:
    parent = broker.new_delivery_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        os.write(write_end, broker.new_delivery_id().encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{32}", child)
    assert child[:16] != parent[:16]
    assert child != broker.new_delivery_id()


def test_send_headers_keeps_the_first_of_repeated_headers() -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"idempotency-key", b"first"),
        (b"authorization", b"Bearer x"),
        (b"idempotency-key", b"second"),
    ]
    assert _send_headers(raw) == {b"content-type": "application/json", b"idempotency-key": "first"}


def test_a_remembered_idempotency_key_stores_the_delivery_id_raw_and_reads_both_forms() -> None:
    """accept.lua gets the digest (bucket suffix in hex, the field as raw bytes) and then the value
    it stores: the delivery id's 16 raw bytes, half its hex. A value written before (hex) reads
    back as it is."""
    from worker.store import idempotency

    delivery_id = broker.new_delivery_id()
    scoped = idempotency.scoped("caller", "page", "key-1")
    entry = idempotency.entry(scoped, delivery_id)
    digest = idempotency.digest(scoped)
    width = idempotency.SUFFIX + idempotency.FIELD // 2
    assert entry[:width] == digest[: idempotency.SUFFIX].encode() + bytes.fromhex(
        digest[idempotency.SUFFIX :]
    )
    assert entry[width:] == bytes.fromhex(delivery_id)
    assert len(entry[width:]) == 16
    assert idempotency.delivery_id(entry[width:]) == delivery_id
    assert idempotency.delivery_id(delivery_id.encode()) == delivery_id  # the hex of a value from before
    assert idempotency.entry(scoped, "not-hex")[width:] == b"not-hex"  # a test's id, kept as it is

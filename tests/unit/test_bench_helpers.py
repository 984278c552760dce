"""The benchmark's pure helpers: history file names, the spread of rounds, the derived sustained
figure (no timing here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import percentile, spread
from benchmarks.history import free_path, history_name
from benchmarks.steps.redis import sustained_finished


def test_history_name_has_the_time_and_the_commit() -> None:
    name = history_name("2026-12-06T06:47:04Z", "e429133a1b2c3d4e5f", dirty=False)
    assert name == "2026-12-06T064704Z-e429133a1b2c.json"
    assert history_name("2026-12-06T06:47:04Z", "abc", dirty=True).endswith("-abc-dirty.json")


def test_a_taken_history_name_is_never_overwritten(tmp_path: Path) -> None:
    first = free_path(tmp_path, "run.json")
    first.write_text("{}")
    second = free_path(tmp_path, "run.json")
    assert second.name == "run.2.json"
    second.write_text("{}")
    assert free_path(tmp_path, "run.json").name == "run.3.json"


def test_spread_is_the_median_and_the_range() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([1.0, 2.0])["median"] == 1.5
    assert spread([])["n"] == 0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5


def test_the_sustained_finished_figure_weighs_each_part_by_how_long_it_is_kept() -> None:
    dense = {
        "outcome_at_1000_per_s": {"bytes_per_entry": 240.0},
        "idempotency_at_1000_per_s": {"bytes_per_entry": 60.0},
        "unread_at_1000_per_s": {"bytes_per_entry": 80.0},
    }
    # the outcome a day and half an hour of a day's retention; the others a day and a half
    assert sustained_finished(dense) == 240.0 * (1 + 1800 / 86_400) + 90.0 + 120.0
    assert sustained_finished({**dense, "unread_at_1000_per_s": {"buckets": 0}}) is None


def test_dense_buckets_are_filled_to_poisson_sizes_from_a_fixed_seed() -> None:
    """A steady rate fills buckets to Poisson sizes around its mean: the derived bytes per entry
    average over the allocator's size classes instead of landing on one."""
    from benchmarks.rediscost import poisson_counts

    counts = poisson_counts(54, 400)
    assert counts == poisson_counts(54, 400)  # every run measures the same sizes
    mean = sum(counts) / len(counts)
    assert 52 < mean < 56
    variance = sum((c - mean) ** 2 for c in counts) / len(counts)
    assert 40 < variance < 70  # Poisson: the variance is the mean
    assert min(poisson_counts(1, 50)) >= 1  # never an empty bucket


def test_the_floor_writes_what_a_delivery_minimally_needs_and_finishes_it(own_redis: Any) -> None:
    """The floor's commands (step 8's CPU and memory floor, and the instruction counter's): after
    its accept each delivery has a small record, a body and its batch's deadline and list; after
    its claim and record the record says sent with a message id and an expiry, and the body, the
    recipient, the list and the deadline are gone."""
    from benchmarks import rediscost

    client = own_redis.client()
    batches, bodies = rediscost.floor_batches(250)
    assert [len(b) for b in batches] == [100, 100, 50]
    rediscost.floor_accept(client, batches, bodies, 1_700_000_000.0)
    first, last = batches[0][0], batches[-1][-1]
    assert client.hget(f"fl:d:{first}", "status") == b"queued"
    assert client.get(f"fl:b:{last}") == bodies[49]
    assert client.zcard("fl:pending") == 3
    assert client.llen("fl:batch:2") == 50
    rediscost.floor_finish(client, batches, 1_700_000_000.0)
    record = client.hgetall(f"fl:d:{last}")
    assert record[b"status"] == b"sent"
    assert record[b"message_id"] == f"m_{last}".encode()
    assert b"psid" not in record
    assert 0 < client.ttl(f"fl:d:{last}") <= 86_400
    assert not client.exists(f"fl:b:{first}", f"fl:b:{last}", "fl:batch:0", "fl:pending")
    assert len(client.keys("fl:d:*")) == 250


def test_bytes_per_entry_at_a_rate_is_the_poisson_expectation_over_non_empty_buckets() -> None:
    """A bucket of k entries costing 100 + 30k bytes: at a mean of m entries per bucket an entry
    costs 30 + 100 (1 - e^-m) / m (an empty bucket costs nothing); too short a curve for the mean
    gives no figure rather than a truncated one."""
    import math

    from benchmarks.rediscost import per_entry_at

    curve = [100 + 30 * k for k in range(1, 301)]
    for mean in (0.1, 1.0, 5.5, 82.4):
        expected = 30 + 100 * (1 - math.exp(-mean)) / mean
        figure = per_entry_at(curve, mean)
        assert figure is not None
        assert abs(figure - expected) < 1e-6 * expected
    assert per_entry_at(curve[:60], 82.4) is None
    assert per_entry_at([], 1.0) is None
    # a key's cost beyond the curve is paid per bucket: at 1 entry per bucket on average, by
    # the 63% of buckets that are not empty
    with_key = per_entry_at(curve, 1.0, key_bytes=75.0)
    assert with_key is not None
    assert abs(with_key - (30 + 175 * (1 - math.exp(-1.0)))) < 1e-6 * with_key


def test_a_bucket_curve_measures_buckets_of_the_runs_own_entries(own_redis: Any) -> None:
    """One measurement per size, from the entries the pattern's buckets hold, growing; the scratch
    hash is gone after; too few entries give no curve."""
    from benchmarks.rediscost import bucket_curve

    client = own_redis.client()
    for b in range(4):
        client.hset(f"t:o:{b}", mapping={f"f{b}-{i}".encode(): b"v" * 40 for i in range(10)})
    curve = bucket_curve(client, "t:o:*", 30)
    assert len(curve) == 30
    assert curve == sorted(curve)
    assert curve[-1] > curve[0] + 29 * 40  # each entry adds at least its value's bytes
    assert not client.exists("bench:curve")
    assert bucket_curve(client, "t:o:*", 41) == []


def test_a_key_costs_its_expiry_and_table_slots_beyond_memory_usage(own_redis: Any) -> None:
    """Measured in a scratch database, which is empty after; the server's other keys untouched."""
    from benchmarks.rediscost import key_overhead

    client = own_redis.client()
    client.set("kept", "1")
    overhead = key_overhead(client, 24, n=3_000)
    assert 32 <= overhead <= 200  # at least the expiry's table entry (24 B, a 32-byte class)
    assert client.get("kept") == b"1"
    scratch = own_redis.client()
    scratch.select(15)
    assert scratch.dbsize() == 0

"""worker/store/seals.py's lag: what the status and bmw_bucket_seal_lag_seconds report."""

from __future__ import annotations

from worker.store import seals


def test_no_window_waiting_is_no_lag() -> None:
    assert seals.lag({}, 10_000.0) == 0.0
    # the current hour (2) is not over: nothing is due
    assert seals.lag({"open:3600": "2", "raw": "1"}, 2 * 3600 + 100.0) == 0.0
    # a length retired: every write sets its own expiry
    assert seals.lag({"open:3600": "1e+15"}, 99 * 3600.0) == 0.0


def test_a_window_over_and_not_begun_waits_since_its_end() -> None:
    # window 2 ended at 3 * 3600; the clock is 100 s into window 4
    assert seals.lag({"open:3600": "2"}, 4 * 3600 + 100.0) == 3600 + 100.0


def test_a_window_under_way_waits_since_its_end_and_the_worst_layout_counts() -> None:
    # open 3 with a cursor: window 2 is being sealed, it ended at 3 * 3600
    meta = {"open:3600": "3", "sealing:3600": "4096", "open:86400": "0"}
    assert seals.lag(meta, 3 * 3600 + 60.0) == 60.0
    assert seals.lag({**meta, "open:86400": "-1"}, 3 * 3600 + 60.0) == 3 * 3600 + 60.0

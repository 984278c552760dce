"""worker.gc_tuning in a fresh interpreter (the test process's own collector is left alone)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, os
from worker.config import Settings
from worker.gc_tuning import tune
before = gc.get_threshold()
kept = [[i] for i in range(1000)]  # long-lived objects allocated during start-up
tuned = tune(Settings(gc_gen0_threshold=int(os.environ["T"])))
print(json.dumps({"tuned": tuned, "before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def probe(threshold: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={"T": str(threshold), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_tune_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    result = probe(50_000)
    assert result["tuned"] is True
    before, after = result["before"], result["after"]
    assert isinstance(before, list)
    assert after == [50_000, before[1], before[2]]  # older generations keep their ratios
    assert isinstance(result["frozen"], int)
    assert result["frozen"] > 1000  # start-up's objects (the 1,000 lists included) are frozen
    assert isinstance(result["tracked"], int)
    assert result["tracked"] < 1000  # and no longer walked by any collection


def test_zero_keeps_the_interpreter_defaults() -> None:
    result = probe(0)
    assert result["tuned"] is False
    assert result["after"] == result["before"]
    assert result["frozen"] == 0

"""Shared by the benchmark steps: request bodies, processes, CPU accounting, statistics, machine facts.

Processes of the service are started with the test-suite's helpers (``tests.conftest``); the
benchmark's own helper processes (load generator, ceiling app, baseline worker) with
:func:`start_module`, each in its own process group so that cleanup can kill the whole group.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.conftest import INTAKE_TOKEN, PAGE, PAGE_TOKEN, wait_until

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: A second page for the fairness trickle (the sandbox accepts ``sandbox-token-<page>``).
PAGE_B = "200"
PAGE_B_TOKEN = "sandbox-token-200"

#: ~200 characters, like a real campaign message.
TEXT = (
    "Hi Alex, your order #48213 has shipped and will arrive on Thursday. Track it any time in "
    "the app, reply STOP to opt out of shipping updates, or HELP to reach our support team. Thanks!"
)


def psid_for(tag: int, i: int) -> str:
    """A unique, realistic-looking 16-digit PSID: ``tag`` tells measurements apart."""
    return f"{tag:02d}{i:014d}"


def send_body(psid: str, spread: int = 0, i: int = 0) -> bytes:
    """The Send API body Braze's Facebook Messenger template posts (270 bytes). With ``spread``,
    message ``i``'s text is up to that many characters shorter or longer (evenly, by ``i``; the
    mean stays): a figure in bytes then is not one allocator size class's luck."""
    text = TEXT
    if spread:
        delta = (i * 37) % (2 * spread + 1) - spread
        text = (TEXT * 2)[: len(TEXT) + delta]
    return orjson.dumps({"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": text}})


def intake_headers(idempotency_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {INTAKE_TOKEN}",
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key,
    }


def intake_path(page: str = PAGE) -> str:
    return f"/v25.0/{page}/messages"


def graph_url(sandbox_url: str, page: str = PAGE, token: str = PAGE_TOKEN) -> str:
    """The URL the worker's Graph client calls for ``page`` (token in the query, as it sends it)."""
    return f"{sandbox_url}/v25.0/{page}/messages?access_token={token}"


# --- processes ------------------------------------------------------------------------------------


@dataclass
class Helper:
    """A benchmark helper process in its own process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 20) -> None:
        kill_group(self.proc, timeout)


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    if proc.poll() is None:
        proc.wait(timeout=10)


def start_module(name: str, module: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> Helper:
    """``python -m module args`` with its output in ``log_dir``, in a new process group."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [PY, "-m", module, *args],
            env=env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Helper(name, proc, log)


def run_module(module: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m module args`` to completion (bounded) and parse the JSON it prints last."""
    proc = subprocess.Popen(
        [PY, "-m", module, *args],
        env=env or dict(os.environ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise RuntimeError(f"{module} {' '.join(args)} did not finish within {timeout}s") from None
    finally:
        if proc.poll() is None:
            kill_group(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return orjson.loads(out.strip().splitlines()[-1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GRAPH_", "PAGE_", "INTAKE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_log(log: Path, text: str, timeout: float) -> bool:
    def seen() -> bool:
        try:
            return text in log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False

    return wait_until(seen, timeout, 0.1)


# --- CPU accounting --------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def tree_cpu(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """utime+stime (+ reaped children's cutime+cstime) of ``pid`` and its live descendants, in s."""
    kids = children if children is not None else _children_map()
    total, stack, seen = 0.0, [pid], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        fields = _stat_fields(current)
        if fields is not None:
            utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
            total += (utime + stime + cutime + cstime) / CLK_TCK
        stack.extend(kids.get(current, []))
    return total


_ALL_OURS = "_benchmark_tree"


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuMeter:
    """CPU seconds of named process trees between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    started: dict[str, float] = field(default_factory=dict)
    stopped: dict[str, float] = field(default_factory=dict)
    wall_start: float = 0.0
    wall: float = 0.0
    busy_start: float = 0.0
    busy: float = 0.0

    def _snap(self) -> dict[str, float]:
        kids = _children_map()
        snap = {name: tree_cpu(pid, kids) for name, pid in self.pids.items()}
        snap[_ALL_OURS] = tree_cpu(os.getpid(), kids)  # the benchmark and everything it started
        return snap

    def start(self) -> CpuMeter:
        self.started = self._snap()
        self.wall_start = time.monotonic()
        self.busy_start = machine_busy()
        return self

    def stop(self) -> dict[str, float]:
        self.stopped = self._snap()
        self.wall = time.monotonic() - self.wall_start
        self.busy = machine_busy() - self.busy_start
        return self.deltas

    @property
    def deltas(self) -> dict[str, float]:
        return {name: self.stopped[name] - self.started[name] for name in self.pids}

    @property
    def others(self) -> float:
        """Cores used meanwhile by processes that are not the benchmark's (other users' jobs)."""
        ours = self.stopped[_ALL_OURS] - self.started[_ALL_OURS]
        return round(max(0.0, self.busy - ours) / self.wall, 3) if self.wall > 0 else 0.0

    def cores(self) -> dict[str, float]:
        """Average cores used by each tree over the interval, by the whole machine (``machine``) and
        by processes outside the benchmark's own tree (``others``: e.g. other users' jobs)."""
        if self.wall <= 0:
            return {}
        out = {name: round(d / self.wall, 3) for name, d in self.deltas.items()}
        out["machine"] = round(self.busy / self.wall, 3)
        out["others"] = self.others
        return out


# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def window_rate(times: Iterable[float], lo: float = 0.1, hi: float = 0.9) -> tuple[float, float, int]:
    """Steady-state rate from arrival times: between the lo and hi quantiles of the arrivals.

    Start-up (the first 10%) and the tail (the last 10%) are left out. Returns
    (events/s, window seconds, events in the window).
    """
    ordered = sorted(times)
    if len(ordered) < 10:
        return math.nan, 0.0, len(ordered)
    i, j = int(len(ordered) * lo), int(len(ordered) * hi) - 1
    span = ordered[j] - ordered[i]
    return ((j - i) / span if span > 0 else math.nan), span, j - i + 1


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """Most events in any trailing ``window`` seconds (times sorted)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2) if not math.isnan(seconds) else math.nan


# --- the sandbox -----------------------------------------------------------------------------------


def sandbox_calls(sandbox_url: str, **params: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{sandbox_url}/__sandbox/calls", params=params, timeout=60)
    resp.raise_for_status()
    calls: list[dict[str, Any]] = orjson.loads(resp.content)["calls"]
    return calls


def sandbox_sent(sandbox_url: str) -> int:
    resp = httpx.get(f"{sandbox_url}/__sandbox/stats", timeout=10)
    resp.raise_for_status()
    return int(resp.json()["sent"])


# --- the machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = "not found"
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
        redis_version = next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), out.strip())
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "kernel": platform.release(),
        "loadavg_at_start": load,
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min, max and count of rounds: what a figure over rounds is reported with."""
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "median": percentile(values, 50),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def median_round(rounds: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose ``key`` is the median (of an even number, the upper of the middle two)."""
    ordered = sorted(rounds, key=lambda r: float(r[key]))
    return ordered[len(ordered) // 2]

"""Redis instructions per delivery, by script: ``accept.lua``, ``claim.lua`` and ``record.lua``
run as the service runs them, against a redis-server under callgrind (valgrind), which counts
the instructions the server executes for exactly each phase.

Why: the CPU figures of step 8 move by a quarter from one run to the next on a shared VM, so a
change of a few µs per delivery is lost in them; an instruction count is the same to within
about 1% from run to run, on any machine. It says where Redis's work per delivery goes and
whether a change cut it; it is not a time (instructions per ns vary with caches and the CPU).

    python -m benchmarks.instructions [--n 2000] [--tree PATH] [--commit 50] [--cpu]

``--commit``: requests per intake commit (the service's commits hold up to 50; step 8's held
about 20 on average, a light load one), for the scripts' cost per call. ``--cpu``: the same
phases on a plain redis-server, timed by its ``INFO cpu`` (µs per delivery; moves with the
machine like step 8, but without Celery, the engine's other reads or idle ticks).

``--tree``: measure the service code of another checkout (a ``git worktree`` of an earlier
commit) with this script, for an A/B. The phases: N messages through the intake's group commit
(``GroupCommitter``: commits of up to 50, each with an Idempotency-Key, bodies of 206-334 bytes);
the batches they formed claimed as a worker claims them (``deliver_batch``: up to 100 ids); each
delivery recorded sent (``Recorder``, a Graph message id of 23 characters). Then step 8's
floor (``rediscost.floor``: the commands a delivery minimally needs, pipelined in hundreds) on
the same server, counted alike, and the ratio of the two: a ratio to its floor that, unlike
step 8's CPU one, does not move with the machine. Redis has AOF on
(``appendfsync everysec``) and the README's RECOMMENDED_CONFIG; loopback only; bounded by N.
Writes ``benchmarks/results/instructions/{time}-{commit}.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "instructions"
PAGE = "100200300400500"


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="messages (bounded: at most 20,000)")
    p.add_argument("--tree", default=None, help="the checkout whose worker package is measured")
    p.add_argument(
        "--commit", type=int, default=50, help="requests per intake commit (1-50; the service's at most)"
    )
    p.add_argument(
        "--cpu",
        action="store_true",
        help="time the phases by redis-server's INFO cpu (µs per delivery) on a plain server, not callgrind",
    )
    return p.parse_args()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """redis-server under callgrind; ``phase`` zeroes the counts before and dumps them after."""

    def __init__(self, work: Path, args: list[str]) -> None:
        self.port = _free_port()
        self.work = work
        self.proc = subprocess.Popen(
            [*self._wrapper(), "redis-server",
             "--port", str(self.port),
             "--bind", "127.0.0.1",
             "--save", "",
             "--dir", str(work),
             "--appendonly", "yes",
             "--appendfsync", "everysec",
             *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _wrapper(self) -> list[str]:
        """What runs redis-server: callgrind, writing its dumps into the work directory."""
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.work}/cg.%p"]

    def wait(self) -> None:
        import redis

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port).ping()
            except redis.exceptions.ConnectionError:
                time.sleep(0.2)
            else:
                return
        raise RuntimeError("redis-server under valgrind did not start")

    def control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], capture_output=True, check=True)

    def instructions_since_zero(self) -> int:
        """Dump and read the instructions counted since the last zero."""
        before = set(self.work.glob("cg.*.*"))
        self.control("-d")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            new = set(self.work.glob("cg.*.*")) - before
            for path in new:
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError("no callgrind dump")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PlainServer(Server):
    """redis-server as it runs (no valgrind); ``phase`` reads its CPU (``INFO cpu``, user + sys,
    every thread) instead: what ``instructions_since_zero`` returns is µs of CPU."""

    cpu_at_zero = 0.0

    def _wrapper(self) -> list[str]:
        return []

    def _cpu(self) -> float:
        import redis

        info = redis.Redis(port=self.port).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def control(self, flag: str) -> None:
        if flag == "-z":
            self.cpu_at_zero = self._cpu()

    def instructions_since_zero(self) -> int:
        return round((self._cpu() - self.cpu_at_zero) * 1e6)


def _body(k: int) -> bytes:
    import orjson

    text = "x" * (200 + k % 64)  # 206-334 bytes of body, as step 8's spread
    return orjson.dumps(
        {"recipient": {"id": f"{10**15 + k}"}, "messaging_type": "UPDATE", "message": {"text": text}}
    )


async def _claimed(client: Any, prefix: str, token: str, raw: list[Any]) -> list[Any]:
    """claim.lua's answer as the engine reads it: {n, cancels, id, ...} and the records read after
    it, or (a --tree before 2026-12-08) {n, id, ...}, or (before 2026-12-07) {n, id, record, ...}."""
    from worker.delivery.model import Delivery
    from worker.store import records, text

    if len(raw) > 1 and isinstance(raw[1], list):  # {n, cancels, id, ...}: the cancels aside
        raw = [raw[0], *raw[2:]]
    if len(raw) > 2 and isinstance(raw[2], list):
        return [
            Delivery.from_record(text(raw[i]), token, records.decode(raw[i + 1]))
            for i in range(1, len(raw), 2)
        ]
    ids = [text(i) for i in raw[1:]]
    recs = await records.read_claimed(client, prefix, ids)
    return [Delivery.from_record(i, token, rec) for i, rec in zip(ids, recs, strict=True)]


async def _measure(server: Server, n: int, commit: int = 50) -> dict[str, Any]:
    from worker.config import PageTokens, Settings
    from worker.delivery.engine import TAKEN_LIST_SECONDS
    from worker.delivery.model import Delivery, Outcome
    from worker.delivery.observers import Observer
    from worker.delivery.recorder import Recorder
    from worker.graph import SendResult
    from worker.intake.committer import GroupCommitter
    from worker.logging import configure_logging
    from worker.messenger.validation import validate
    from worker.states import Event
    from worker.store import Keys, campaign_ctx, scripts
    from worker.store import connections as redisconn

    tag = uuid.uuid4().hex[:8]
    s = Settings(
        redis_url=f"redis://127.0.0.1:{server.port}/0",
        key_prefix=f"ir{tag}",
        queue_name=f"q{tag}",
        page_access_tokens={PAGE: "EAAtoken"},
        intake_insecure_no_auth=True,
        record_flush_ms=0,
        _env_file=None,
    )
    configure_logging(s.model_copy(update={"log_level": "WARNING"}), stream=sys.stderr)
    keys, client = Keys.of(s), redisconn.async_client(s)
    out: dict[str, Any] = {}
    try:
        committer = GroupCommitter(client, s)

        async def submit(first: int, count: int, prefix: str) -> None:
            await asyncio.gather(
                *(
                    committer.submit(validate(_body(k), s, path_page_id=PAGE), f"{prefix}-{k}", "r")
                    for k in range(first, first + count)
                )
            )

        async def claim_all(label: str) -> list[Delivery]:
            """Claims every batch in the queue, oldest first, as deliver_batch does."""
            claimed: list[Delivery] = []
            for number, raw in enumerate(reversed(await client.lrange(s.queue_name, 0, -1))):  # type: ignore[misc]  # redis-py: Awaitable[T] | T
                batch = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
                claimed += await claim(batch, f"{label}.{number:x}")
            await client.delete(s.queue_name)
            return claimed

        async def claim(batch: str, token: str) -> list[Delivery]:
            now = time.time()
            raw = await scripts.run(
                client,
                "claim",
                keys=[keys.pending, keys.batch(batch), keys.gather, keys.batch_taken(batch, token)],
                args=[
                    repr(now),
                    s.delivery_lease_seconds,
                    keys.delivery_prefix,
                    token,
                    TAKEN_LIST_SECONDS,
                    *campaign_ctx.of_settings(keys, s, now),
                    batch,
                ],
            )
            return await _claimed(client, keys.delivery_prefix, token, raw)

        recorder = Recorder(client, s, PageTokens(s, source=""), Observer())

        async def record_sent(deliveries: list[Delivery]) -> None:
            for first in range(0, len(deliveries), 40):  # writes of 40 outcomes, as under load
                await asyncio.gather(
                    *(
                        recorder.record(
                            Outcome(
                                d,
                                Event.SEND_OK,
                                result=SendResult(
                                    f"m_{d.id[:20]}", d.psid, 200, 50.0, started_at=time.time()
                                ),
                            )
                        )
                        for d in deliveries[first : first + 40]
                    )
                )

        # loads the three scripts before counting (a worker loads them once per Redis start: on
        # the first NOSCRIPT it loads every script, about 1M instructions each)
        await submit(0, 50, "warm")
        await record_sent(await claim_all("warm"))
        server.control("-z")
        for first in range(0, n, commit):
            await submit(first, min(commit, n - first), tag)
        out["accept"] = server.instructions_since_zero() / n
        out["batches"] = int(await client.llen(s.queue_name))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
        server.control("-z")
        claimed = await claim_all("ir")
        out["claim"] = server.instructions_since_zero() / len(claimed)
        out["claimed"] = len(claimed)

        server.control("-z")
        await record_sent(claimed)
        out["record"] = server.instructions_since_zero() / len(claimed)
    finally:
        await client.aclose()
    out["total"] = out["accept"] + out["claim"] + out["record"]
    return out


def _floor(server: Server, n: int) -> dict[str, float]:
    """The floor of step 8 (``rediscost.floor``: the commands a delivery minimally needs, in
    pipelines of 100) counted alike on the same server: its accept, then its claim and record."""
    import redis

    from benchmarks import rediscost

    client = redis.Redis(port=server.port)
    try:
        now = time.time()
        warm, bodies = rediscost.floor_batches(rediscost.FLOOR_BATCH)
        rediscost.floor_accept(client, warm, bodies, now)  # the connection and its buffers
        rediscost.floor_finish(client, warm, now)
        client.delete("fl:pending")
        batches, bodies = rediscost.floor_batches(n)
        batches = [[f"n{i}" for i in batch] for batch in batches]  # not the warm-up's ids
        server.control("-z")
        rediscost.floor_accept(client, batches, bodies, now)
        accept = server.instructions_since_zero() / n
        server.control("-z")
        rediscost.floor_finish(client, batches, now)
        finish = server.instructions_since_zero() / n
    finally:
        client.close()
    return {"floor_accept": accept, "floor_claim_and_record": finish, "floor": accept + finish}


def main() -> int:
    args = _args()
    if not args.cpu and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    tree = Path(args.tree).resolve() if args.tree else Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(tree))
    from worker.store import connections

    n = max(100, min(args.n, 20_000))
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--", "worker"],
            cwd=tree,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    size = max(1, min(args.commit, 50))
    with tempfile.TemporaryDirectory(prefix="bmw-ir-") as work:
        server = (PlainServer if args.cpu else Server)(Path(work), connections.server_args())
        try:
            server.wait()
            figures = asyncio.run(_measure(server, n, size))
            figures.update(_floor(server, n))
        finally:
            server.stop()
    what = "cpu_us" if args.cpu else "instructions"
    result = {
        "command": " ".join(["python -m benchmarks.instructions", *sys.argv[1:]]),
        "commit": commit,
        "dirty": dirty,
        "n": n,
        "commit_size": size,
        f"{what}_per_delivery": {
            k: round(v, 2 if args.cpu else None)
            for k, v in figures.items()
            if k in ("accept", "claim", "record", "total")
        },
        f"floor_{what}_per_delivery": {
            "accept": round(figures["floor_accept"], 2 if args.cpu else None),
            "claim_and_record": round(figures["floor_claim_and_record"], 2 if args.cpu else None),
            "total": round(figures["floor"], 2 if args.cpu else None),
        },
        "ratio_to_floor": round(figures["total"] / figures["floor"], 2),
        "claimed": figures["claimed"],
        "batches": figures["batches"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    tail = ("-cpu" if args.cpu else "") + (f"-commit{size}" if size != 50 else "")
    name = f"{time.strftime('%Y-%m-%dT%H%M%SZ', time.gmtime())}-{commit[:12]}{'-dirty' if dirty else ''}{tail}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

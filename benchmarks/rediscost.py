"""Redis's side of a delivery, read from redis-server itself: CPU (``INFO cpu``), command time
(``INFO commandstats``), per-script attribution (``SLOWLOG`` at 0 µs) and memory (``INFO memory``,
``MEMORY USAGE``); and the floors they are measured against.

The floor of the CPU is what a delivery minimally needs of Redis, pipelined, in batches of 100
(like a Celery message of the service): on accept, its record (page, recipient, status, time:
a small hash, which Redis keeps compact), its body (a string of its own) and its place in a
deadline index; a queue entry; on claim, its status; on the outcome, its status and message id,
the body and recipient dropped, an expiry, and out of the index. The
memory floors are what those writes leave: an open delivery's record and index entry, a finished
delivery's compacted record.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from typing import Any

from benchmarks.common import psid_for, send_body
from worker.store import scripts

FLOOR_BATCH = 100
#: The benchmark's own reads (the drain polls ZCARD; the samples SCAN, HSTRLEN, MEMORY USAGE).
OWN_COMMANDS = ("info", "config", "slowlog", "memory", "scan", "hstrlen", "zcard", "rename")


def redis_cpu(client: Any) -> dict[str, float]:
    """redis-server's CPU seconds so far: all threads, and the main thread (commands, I/O), and
    the kernel's part of the total (``sys``: reading, writing and polling sockets, the AOF's
    writes and fsyncs)."""
    info = client.info("cpu")
    return {
        "total": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "main": float(info.get("used_cpu_user_main_thread", 0))
        + float(info.get("used_cpu_sys_main_thread", 0)),
        "sys": float(info["used_cpu_sys"]),
    }


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def commandstats(client: Any) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as {command: {calls, usec}} (commands run by scripts included)."""
    out: dict[str, dict[str, float]] = {}
    for name, stat in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_")
        if command.startswith(OWN_COMMANDS[:6]):  # ZCARD and RENAME are the service's too
            continue  # the benchmark's own reads
        out[command] = {"calls": float(stat["calls"]), "usec": float(stat["usec"])}
    return out


def per_delivery(stats: dict[str, dict[str, float]], n: int) -> list[dict[str, Any]]:
    """Each command's calls and µs per delivery, the most expensive first."""
    rows = [
        {
            "command": cmd,
            "calls": int(s["calls"]),
            "usec": int(s["usec"]),
            "usec_per_call": round(s["usec"] / s["calls"], 2) if s["calls"] else 0.0,
            "calls_per_delivery": round(s["calls"] / n, 3),
            "usec_per_delivery": round(s["usec"] / n, 3),
        }
        for cmd, s in stats.items()
    ]
    return sorted(rows, key=lambda r: -float(r["usec"]))


def sha_names() -> dict[str, str]:
    return {scripts.script(name).sha: name for name in scripts.names()}


def attribute(entries: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Per-script time from a SLOWLOG taken at 0 µs: a script's entry is logged when it ends, so
    the commands the Lua client (address ``?:0``) ran since the previous top-level entry are its
    own. Returns, per script (or top-level command), calls, µs, µs per delivery and the µs of the
    commands it ran, by command; ``lua`` is what the script took beyond its commands."""
    names = sha_names()
    by: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "usec": 0, "inner": Counter(), "inner_calls": Counter()}
    )
    inner_usec: Counter[str] = Counter()
    inner_calls: Counter[str] = Counter()
    for entry in sorted(entries, key=lambda e: int(e["id"])):
        command = entry["command"]
        words = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split()
        verb = words[0].upper() if words else "?"
        address = entry.get("client_address", b"")
        if address in (b"?:0", "?:0"):
            inner_usec[verb] += int(entry["duration"])
            inner_calls[verb] += 1
            continue
        if verb.lower().startswith(OWN_COMMANDS):
            inner_usec.clear()
            inner_calls.clear()
            continue
        name = verb.lower()
        if verb == "EVALSHA" and len(words) > 1:
            name = names.get(words[1], f"evalsha {words[1][:8]}")
        elif verb == "EVAL":
            name = "eval (script load)"
        row = by[name]
        row["calls"] += 1
        row["usec"] += int(entry["duration"])
        row["inner"].update(inner_usec)
        row["inner_calls"].update(inner_calls)
        inner_usec.clear()
        inner_calls.clear()
    out = {}
    for name, row in sorted(by.items(), key=lambda kv: -int(kv[1]["usec"])):
        inner_total = sum(row["inner"].values())
        out[name] = {
            "calls": row["calls"],
            "usec": row["usec"],
            "usec_per_delivery": round(row["usec"] / n, 2),
            "usec_per_call": round(row["usec"] / row["calls"], 1),
            "lua_usec_per_delivery": round((row["usec"] - inner_total) / n, 2),
            "commands_per_delivery": {
                cmd: {
                    "calls": round(row["inner_calls"][cmd] / n, 2),
                    "usec": round(usec / n, 2),
                }
                for cmd, usec in row["inner"].most_common()
            },
        }
    return out


def sample_keys(client: Any, pattern: str, limit: int) -> list[bytes]:
    """Up to ``limit`` keys matching ``pattern`` (SCAN)."""
    keys: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        keys.append(key)
        if len(keys) >= limit:
            break
    return keys


def memory_samples(client: Any, pattern: str, limit: int = 200) -> dict[str, float]:
    """``MEMORY USAGE`` (exact: SAMPLES 0) of up to ``limit`` keys matching ``pattern``."""
    keys = sample_keys(client, pattern, limit)
    if not keys:
        return {"keys": 0, "mean_bytes": 0.0}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = [int(s or 0) for s in pipe.execute()]
    return {"keys": len(keys), "mean_bytes": round(sum(sizes) / len(sizes), 1)}


def bucket_samples(client: Any, pattern: str, limit: int = 200) -> dict[str, Any]:
    """Bucket hashes (outcomes ``P:o:*``, worker/store/outcomes.py; idempotency keys ``P:i:*``,
    worker/store/idempotency.py; unread deliveries ``P:u:*``, worker/store/unread.py): their
    ``MEMORY USAGE``, how many entries each holds, the bytes per entry, and how Redis encodes
    them."""
    keys = sample_keys(client, pattern, limit)
    if not keys:
        return {"keys": 0}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
        pipe.hlen(key)
        pipe.object("encoding", key)
    res = pipe.execute()
    sizes, lens = [int(r or 0) for r in res[0::3]], [int(r) for r in res[1::3]]
    encodings: dict[str, int] = {}
    for e in res[2::3]:
        name = e.decode() if isinstance(e, bytes) else str(e)
        encodings[name] = encodings.get(name, 0) + 1
    return {
        "keys": len(keys),
        "mean_bytes": round(sum(sizes) / len(keys), 1),
        "mean_entries": round(sum(lens) / len(keys), 1),
        "bytes_per_entry": round(sum(sizes) / max(1, sum(lens)), 1),
        "encodings": encodings,
    }


def poisson_counts(mean: int, n: int, seed: int = 8) -> list[int]:
    """``n`` bucket sizes as a steady rate fills buckets of ``mean`` entries on average: Poisson,
    from a fixed seed (every run measures the same sizes). Knuth's method, on a log scale so a
    mean in the hundreds does not underflow."""
    rng = random.Random(seed)
    counts = []
    for _ in range(n):
        k, total = 0, 0.0
        while True:
            total -= math.log(1.0 - rng.random())
            if total > mean:
                break
            k += 1
        counts.append(max(k, 1))
    return counts


def _measure(client: Any, pairs: list[tuple[bytes, bytes]], counts: list[int]) -> tuple[list[int], set[str]]:
    sizes, encodings, at = [], set(), 0
    for j, count in enumerate(counts):
        scratch = f"bench:dense:{j}"
        client.hset(scratch, mapping=dict(pairs[at : at + count]))
        at += count
        sizes.append(int(client.memory_usage(scratch, samples=0) or 0))
        encoding = client.object("encoding", scratch)
        encodings.add(encoding.decode() if isinstance(encoding, bytes) else str(encoding))
        client.delete(scratch)
    return sizes, encodings


def _entries(client: Any, pattern: str, wanted: int) -> tuple[list[tuple[bytes, bytes]], str]:
    """At least ``wanted`` of the run's own bucket entries (field, value) from the buckets
    ``pattern`` names, read bucket by bucket (fewer when the run has fewer), and the first
    bucket's name ("" when none)."""
    pairs: list[tuple[bytes, bytes]] = []
    first = ""
    for key in client.scan_iter(match=pattern, count=1000):
        first = first or (key.decode() if isinstance(key, bytes) else str(key))
        pairs += list(client.hgetall(key).items())
        if len(pairs) >= wanted:
            break
    return pairs, first


def dense_buckets(client: Any, pattern: str, per_bucket: int, buckets: int = 40) -> dict[str, Any]:
    """Bytes per entry when the buckets are as full as a sustained rate fills them: the run's
    own entries (their real fields and values, read from ``pattern``) written to scratch hashes,
    measured with ``MEMORY USAGE``, deleted. A run of 10,000 messages spreads over 65,536 outcome
    buckets an hour (about one outcome each: a key per outcome, as before buckets); 1,000
    messages/s for an hour puts 55 in each on average. ``bytes_per_entry``: buckets of Poisson
    sizes around ``per_bucket`` (:func:`poisson_counts`), as a steady rate fills them, so that
    the allocator's size classes (a bucket of 54 outcomes is a 7 KiB listpack; the classes there
    are 1 KiB apart) are averaged over, not hit or missed by one size; ``fixed_bytes_per_entry``:
    every bucket exactly ``per_bucket`` (the figure before 2026-12-06 22:00)."""
    counts = poisson_counts(per_bucket, buckets)
    pairs, _ = _entries(client, pattern, max(sum(counts), per_bucket * buckets))
    while counts and sum(counts) > len(pairs):
        counts.pop()
    full = min(len(pairs) // per_bucket, buckets)
    if not counts or not full:
        return {"buckets": 0}
    sizes, encodings = _measure(client, pairs, counts)
    fixed, fixed_encodings = _measure(client, pairs, [per_bucket] * full)
    return {
        "buckets": len(counts),
        "per_bucket": per_bucket,
        "bucket_sizes": [min(counts), max(counts)],
        "bytes_per_entry": round(sum(sizes) / sum(counts), 1),
        "fixed_bytes_per_entry": round(sum(fixed) / (full * per_bucket), 1),
        "mean_value_bytes": round(sum(len(v) for _, v in pairs[: sum(counts)]) / sum(counts), 1),
        "encodings": sorted(encodings | fixed_encodings),
    }


def bucket_curve(client: Any, pattern: str, k_max: int) -> list[int]:
    """``MEMORY USAGE`` of a bucket holding k of the run's own entries (their real fields and
    values, read from ``pattern``), for k = 1..k_max: index k - 1. One scratch hash grown an
    entry at a time (as writes grow a bucket), deleted after; [] when the run has too few."""
    pairs, first = _entries(client, pattern, k_max)
    if len(pairs) < k_max:
        return []
    scratch = ("bench:curve:" + "x" * len(first))[: max(len(first), 12)]  # a real key's length
    client.delete(scratch)
    sizes = []
    for field, value in pairs[:k_max]:
        client.hset(scratch, field, value)
        sizes.append(int(client.memory_usage(scratch, samples=0) or 0))
    client.delete(scratch)
    return sizes


def key_overhead(client: Any, name_length: int, n: int = 6_000) -> float:
    """What a bucket key costs beyond its ``MEMORY USAGE`` (which counts the key's name, value
    and main-table entry): its expiry entry and both tables' slots, from ``used_memory`` over
    ``n`` one-entry hashes with an expiry each, named ``name_length`` characters, in a scratch
    database (15) of the same server, flushed before and after. About 75 bytes on Redis 7.0: at a
    low rate, where most buckets hold one entry, it is paid per entry."""
    import redis

    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs["db"] = 15
    scratch: Any = redis.Redis(**kwargs)  # redis-py types hset for str; bytes are what it sends
    try:
        scratch.flushdb()
        names = [f"k{i:0{max(name_length - 1, 6)}d}" for i in range(n)]
        before = used_memory(scratch)
        pipe = scratch.pipeline(transaction=False)
        for name in names:
            pipe.hset(name, b"f" * 8, b"v" * 16)
            pipe.expire(name, 86_400)
        pipe.execute()
        after = used_memory(scratch)
        pipe = scratch.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        counted = sum(int(u or 0) for u in pipe.execute())
        return (after - before - counted) / n
    finally:
        scratch.flushdb()
        scratch.close()


def poisson_pmf(mean: float, k_max: int) -> list[float]:
    """P(k) for k = 0..k_max of a Poisson law of ``mean`` (computed on a log scale)."""
    return [math.exp(k * math.log(mean) - mean - math.lgamma(k + 1)) for k in range(k_max + 1)]


def per_entry_at(curve: list[int], mean: float, key_bytes: float = 0.0) -> float | None:
    """Bytes per entry when a steady rate puts ``mean`` entries in a bucket on average: bucket
    sizes are Poisson (each entry picks its bucket by a digest), an empty bucket costs nothing,
    so the figure is sum(P(k) * (size(k) + key_bytes)) / sum(P(k) * k) over k >= 1, from
    ``curve`` (:func:`bucket_curve`) and what a key costs beyond it (:func:`key_overhead`). None
    when ``curve`` is too short for ``mean`` (more than 1e-6 of the entries would be in larger
    buckets)."""
    if not curve or mean <= 0:
        return None
    pmf = poisson_pmf(mean, len(curve))
    entries = sum(pmf[k] * k for k in range(1, len(curve) + 1))
    if entries < mean * (1 - 1e-6):
        return None
    return sum(pmf[k] * (curve[k - 1] + key_bytes) for k in range(1, len(curve) + 1)) / entries


def body_bytes(client: Any, pattern: str, limit: int = 50) -> float:
    """Mean size of the body stored in records matching ``pattern`` (its field, or its part of
    the packed field: worker/store/records.py)."""
    from worker.store import records

    lengths = []
    for key in client.scan_iter(match=pattern, count=1000):
        length = len(records.decode(client.hgetall(key)).get("body", "").encode())
        if length:
            lengths.append(length)
        if len(lengths) >= limit:
            break
    return sum(lengths) / len(lengths) if lengths else 0.0


def floor_batches(n: int) -> tuple[list[list[str]], list[bytes]]:
    """The floor's ``n`` ids in batches of FLOOR_BATCH, and the bodies the batches' positions
    send."""
    ids = [f"f{i:09d}" for i in range(n)]
    bodies = [send_body(psid_for(9, i)) for i in range(FLOOR_BATCH)]
    return [ids[i : i + FLOOR_BATCH] for i in range(0, n, FLOOR_BATCH)], bodies


def floor_accept(client: Any, batches: list[list[str]], bodies: list[bytes], now: float) -> None:
    """The floor's accept: per delivery its record (a small hash) and its body (a string); per
    batch a deadline and a queue entry."""
    for b, batch in enumerate(batches):
        pipe = client.pipeline(transaction=False)
        for j, delivery_id in enumerate(batch):
            pipe.hset(
                f"fl:d:{delivery_id}",
                mapping={"page_id": "100", "psid": psid_for(9, j), "status": "queued", "created_at": now},
            )
            pipe.set(f"fl:b:{delivery_id}", bodies[j])
        pipe.zadd("fl:pending", {f"b:{b}": now + 600})  # a deadline per batch, as the service's
        pipe.rpush(f"fl:batch:{b}", *batch)
        pipe.execute()


def floor_finish(client: Any, batches: list[list[str]], now: float) -> None:
    """The floor's claim (the batch taken, each status set) and record (status and message id,
    body and recipient dropped, an expiry, out of the index)."""
    for b, batch in enumerate(batches):
        pipe = client.pipeline(transaction=False)
        pipe.lrange(f"fl:batch:{b}", 0, -1)
        pipe.delete(f"fl:batch:{b}")
        for delivery_id in batch:
            pipe.hset(f"fl:d:{delivery_id}", "status", "in_flight")
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for delivery_id in batch:
            key = f"fl:d:{delivery_id}"
            pipe.hset(key, mapping={"status": "sent", "message_id": f"m_{delivery_id}", "sent_at": now})
            pipe.hdel(key, "psid")
            pipe.delete(f"fl:b:{delivery_id}")
            pipe.expire(key, 86_400)
        pipe.zrem("fl:pending", f"b:{b}")
        pipe.execute()


def floor(client: Any, n: int) -> dict[str, Any]:
    """The minimal commands of ``n`` deliveries, pipelined in batches of 100, on a fresh
    redis-server: Redis CPU per delivery and the memory an open and a finished one leave."""
    now = time.time()
    batches, bodies = floor_batches(n)
    mem0, cpu0 = used_memory(client), redis_cpu(client)
    floor_accept(client, batches, bodies, now)
    cpu1, mem1 = redis_cpu(client), used_memory(client)
    open_record = memory_samples(client, "fl:d:*")
    cpu1b = redis_cpu(client)  # the sampling above is not the floor's
    floor_finish(client, batches, now)
    cpu2, mem2 = redis_cpu(client), used_memory(client)
    accept, finish = cpu_delta(cpu0, cpu1), cpu_delta(cpu1b, cpu2)
    return {
        "n": n,
        "cpu_s": {"accept": accept, "claim_and_record": finish},
        "cpu_us_per_delivery": (accept["total"] + finish["total"]) / n * 1e6,
        "bytes_per_open": (mem1 - mem0) / n,
        "bytes_per_finished": (mem2 - mem0) / n,
        "record_open_bytes": open_record,
        "record_finished_bytes": memory_samples(client, "fl:d:*"),
        "body_bytes": len(bodies[0]),
    }

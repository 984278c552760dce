"""Shared pieces of the reliability suite: a Braze-like feeder, a process supervisor that fails the
test on an exit nobody asked for, Redis servers that can be stalled or killed, and the exact
accounting of what reached Graph.

The accounting's rule is the README's ("At-least-once"): the Send API has no idempotency key, so a
delivery may reach Graph more than once only when

* a call was **ambiguous** (a timeout or a dropped connection after the request was sent: the
  worker logs ``delivery.attempt`` with ``possible_duplicate: true``), or
* its holder **died** after Graph accepted it and before the outcome was written: the next claim
  is a reclaim (``delivery.reclaimed``, ``possible_duplicate: true``), after that worker's death.

Every extra successful send of a delivery (sandbox calls answered 200, matched by a PSID unique
to the message) must be covered by one such event for that ``delivery_id``. A ``delivery.fenced``
send (Graph accepted a call of a worker that was alive but no longer held the delivery) is
reported as what it is, a duplicate sent by a live worker, and explains nothing.
"""

from __future__ import annotations

import datetime
import os
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.conftest import INTAKE_TOKEN, PAGE, Proc, RedisServer, Sandbox, Stack
from worker.states import FINAL
from worker.store import outcomes

LONG = os.environ.get("RELIABILITY_LONG") == "1"
FINAL_STATUSES = frozenset(s.value for s in FINAL)


def scale(short: float, long: float) -> float:
    """The short-mode (CI) figure, or the long one under ``RELIABILITY_LONG=1``."""
    return long if LONG else short


def run_tag(name: str) -> str:
    """A prefix unique to one run: its PSIDs and idempotency keys match nothing else in the session."""
    return f"{name}{uuid.uuid4().hex[:6]}"


def text_body(psid: str, text: str = "hello") -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": text}}


def psid_and_text(call: Mapping[str, Any]) -> str:
    """A sandbox call's message key when a recipient gets several messages: PSID and text."""
    body = call.get("body") or {}
    return f"{call.get('psid')}/{(body.get('message') or {}).get('text')}"


# --- Redis ------------------------------------------------------------------------------------------


@dataclass
class DurableRedis(RedisServer):
    """A redis-server of the test's own with ``appendfsync always``: a 202 is on disk, so even a
    SIGKILL of Redis loses no accepted message. Restarted on the same port and data directory."""

    appendfsync: str = "always"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (appendfsync always made every write durable)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


def redis_pid(server: RedisServer) -> int:
    assert server.proc is not None, "redis-server is not running"
    assert server.proc.poll() is None, "redis-server is not running"
    return server.proc.pid


@contextmanager
def stalled(server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block: connections stay open and nothing is answered, as
    with a long fork, a swapping host or a stuck VM. Always resumed (SIGCONT), even on failure."""
    pid = redis_pid(server)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def used_memory(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


# --- the feeder -------------------------------------------------------------------------------------


class Feeder(threading.Thread):
    """Posts ``count`` messages at most ``rate`` per second as Braze's webhook does: each with its
    own PSID (``psid(i)``) and Idempotency-Key; 408/429/5xx answers and transport errors are
    retried with capped exponential backoff, at most ``max_attempts`` times per message.

    ``accepted`` maps PSID -> delivery_id (a 202, or a 200 naming the first delivery of a repeated
    key); ``gave_up`` lists PSIDs never accepted; ``refused`` counts the answers retried.
    """

    def __init__(
        self,
        stack: Stack,
        count: int,
        *,
        rate: float,
        tag: str,
        psid: Callable[[int], str] | None = None,
        page: str = PAGE,
        max_attempts: int = 80,
        max_backoff: float = 2.0,
        timeout: float = 10.0,
    ) -> None:
        super().__init__(daemon=True, name=f"feeder-{tag}")
        self.stack = stack
        self.count = count
        self.rate = rate
        self.tag = tag
        self.psid = psid or (lambda i: f"{tag}-{i}")
        self.page = page
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.accepted: dict[str, str] = {}
        self.gave_up: list[str] = []
        self.refused: Counter[str] = Counter()
        self.done = 0  # messages settled (accepted or given up)
        self.error: BaseException | None = None
        self._abort = threading.Event()

    def abort(self) -> None:
        self._abort.set()

    def run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # noqa: BLE001  # raised again by finish(): a thread's would be lost
            self.error = exc

    def _feed(self) -> None:
        headers = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
        next_at = time.monotonic()
        with httpx.Client(headers=headers, timeout=self.timeout) as client:
            for i in range(self.count):
                if self._abort.is_set():
                    return
                now = time.monotonic()
                if next_at > now:
                    time.sleep(next_at - now)
                next_at = max(next_at, time.monotonic()) + 1 / self.rate
                self._post_one(client, i)
                self.done = i + 1

    def _post_one(self, client: httpx.Client, i: int) -> None:
        psid = self.psid(i)
        body = text_body(psid, f"#{i}")
        for attempt in range(self.max_attempts):
            if self._abort.is_set():
                return
            try:
                resp = client.post(
                    f"{self.stack.intake_url}/v25.0/{self.page}/messages",
                    json=body,
                    headers={"Idempotency-Key": f"{self.tag}-{i}"},
                )
            except httpx.TransportError as exc:
                self.refused[f"transport:{type(exc).__name__}"] += 1
            else:
                if resp.status_code in (200, 202):
                    self.accepted[psid] = resp.json()["delivery_id"]
                    return
                if resp.status_code not in (408, 429) and resp.status_code < 500:
                    raise AssertionError(f"{psid}: refused for good: {resp.status_code} {resp.text}")
                code = resp.json().get("error", {}).get("code", "") if resp.content else ""
                self.refused[f"{resp.status_code}:{code}"] += 1
            self._abort.wait(min(self.max_backoff, 0.05 * 2**attempt))
        self.gave_up.append(psid)

    def wait_progress(self, fraction: float, timeout: float) -> None:
        """Until ``fraction`` of the messages are settled (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while self.done < fraction * self.count and self.is_alive():
            assert time.monotonic() < deadline, f"feeder stuck at {self.done}/{self.count}"
            time.sleep(0.05)

    def finish(self, timeout: float) -> dict[str, str]:
        """Wait for the feeder; every message must have been accepted. Returns PSID -> id."""
        self.join(timeout)
        if self.is_alive():
            self.abort()
            self.join(10)
            raise AssertionError(f"feeder did not finish in {timeout}s ({self.done}/{self.count})")
        if self.error is not None:
            raise self.error
        assert not self.gave_up, f"{len(self.gave_up)} messages never accepted: {self.gave_up[:5]}"
        assert len(self.accepted) == self.count, (len(self.accepted), self.count)
        assert len(set(self.accepted.values())) == self.count, "two messages got the same delivery id"
        return dict(self.accepted)


# --- the supervisor ---------------------------------------------------------------------------------


@dataclass
class Exit:
    name: str
    returncode: int | None
    tail: str
    at: float

    def __str__(self) -> str:
        return f"{self.name} exited with {self.returncode}:\n{self.tail}"


class Supervisor:
    """Watches every process of a stack (workers and intakes) as a process supervisor would.

    A process the test stops or kills goes through :meth:`stop`/:meth:`kill` and is expected. Any
    other exit is recorded (return code and log tail) and a replacement is started, so the run can
    finish, but :meth:`assert_no_unexpected_exits` fails the test on it: a worker that exits by
    itself (Celery's "Unrecoverable error" path, an engine crash) is a bug, not a restart.
    """

    def __init__(self, stack: Stack, *, interval: float = 0.25) -> None:
        self.stack = stack
        self.interval = interval
        self.unexpected: list[Exit] = []
        self.deaths: list[float] = []  # when a worker stopped without finishing its work (kill or crash)
        self.replacements = 0
        self._expected: set[int] = set()
        self._seen: set[int] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="supervisor")

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        exited = []
        with self._lock:
            for proc in list(self.stack.procs):
                pid = proc.proc.pid
                if pid in self._seen or proc.proc.poll() is None:
                    continue
                self._seen.add(pid)
                if pid in self._expected:
                    continue
                tail = "\n".join(line[:300] for line in proc.tail(15).splitlines())
                self.unexpected.append(Exit(proc.name, proc.proc.returncode, tail, time.time()))
                if proc.name != "intake":
                    self.deaths.append(time.time())
                exited.append(proc)
        for proc in exited:  # outside the lock: a start takes seconds, kill() and stop() need it
            if not self._stop.is_set():
                self._replace(proc)

    def _replace(self, proc: Proc) -> None:
        self.replacements += 1
        try:
            if proc.name == "intake":
                self.stack.start_intake(port=self.stack.intake_port)
            else:
                self.stack.start_worker(name=f"replacement{self.replacements}")
        except AssertionError as exc:  # the replacement did not start: recorded, the test fails
            self.unexpected.append(Exit(f"replacement of {proc.name}", None, str(exc), time.time()))

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        """Kill ``proc`` on purpose (a crash the test causes: its deliveries' leases must end)."""
        with self._lock:
            self._expected.add(proc.proc.pid)
            self.deaths.append(time.time())
        proc.proc.send_signal(sig)
        proc.proc.wait(timeout=30)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM) -> int | None:
        """Stop ``proc`` on purpose (a graceful stop the test asks for)."""
        with self._lock:
            self._expected.add(proc.proc.pid)
        return proc.stop(sig)

    def workers(self) -> list[Proc]:
        return [p for p in self.stack.procs if p.name != "intake" and p.proc.poll() is None]

    def assert_no_unexpected_exits(self) -> None:
        self.check()
        assert not self.unexpected, "processes exited on their own:\n\n" + "\n\n".join(
            str(e) for e in self.unexpected
        )


# --- records ----------------------------------------------------------------------------------------


def read_records(stack: Stack, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """Every record in one pipelined round trip."""
    return outcomes.read_many_sync(stack.redis(), stack.keys, list(ids), stack.record_retention)


def wait_all_final(stack: Stack, ids: Iterable[str], timeout: float) -> dict[str, dict[str, str]]:
    """Until every delivery's record is final (bounded); fails naming the ones still open."""
    ids = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(stack, ids)
        open_ = {i: r.get("status") for i, r in records.items() if r.get("status") not in FINAL_STATUSES}
        if not open_:
            return records
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{len(open_)} of {len(ids)} deliveries not final after {timeout}s: "
                f"{Counter(open_.values())}, e.g. {list(open_.items())[:5]}"
            )
        time.sleep(0.5)


def assert_indexes_clean(stack: Stack, ids: Iterable[str], units_within: float | None = None) -> None:
    """Final deliveries have left the open-work indexes (nothing left for the sweeper to resend).
    With ``units_within`` (a run where no worker was killed and Redis kept answering), the batch
    and claim entries in pending are gone within that many seconds too: each worker removes its
    claim's entry once it has written the outcomes of all it held."""
    client = stack.redis()
    if units_within is not None:
        give_up = time.monotonic() + units_within
        while left := [m for m in client.zrange(stack.keys.pending, 0, -1) if m[:2] in (b"b:", b"t:")]:
            assert time.monotonic() < give_up, (
                f"{len(left)} batch or claim entries left in pending: {left[:5]}"
            )
            time.sleep(0.2)
    ids = list(ids)
    for key in (stack.keys.pending, stack.keys.open, stack.keys.sched):
        pipe = client.pipeline(transaction=False)
        for i in ids:
            pipe.zscore(key, i)
        left = [i for i, score in zip(ids, pipe.execute(), strict=True) if score is not None]
        assert not left, f"{len(left)} final deliveries still in {key}: {left[:5]}"
    if client.zcard(stack.keys.pending) == 0:  # nothing open: nothing counted in the backlog age
        counts = client.hgetall(stack.keys.open_counts)
        assert not counts, f"open deliveries still counted with none open: {counts}"
        assert client.zcard(stack.keys.open_seconds) == 0
        assert int(client.get(stack.keys.open_total) or 0) == 0


# --- logs -------------------------------------------------------------------------------------------


def log_time(entry: Mapping[str, Any]) -> float:
    stamp = entry.get("timestamp")
    if not isinstance(stamp, str):
        return 0.0
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def events(logs: Iterable[Mapping[str, Any]], name: str, **fields: Any) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]


def reasons(logs: Iterable[Mapping[str, Any]], name: str) -> dict[str, int]:
    """How many ``name`` lines per ``reason`` (e.g. why deliveries were released)."""
    return dict(Counter(str(e.get("reason")) for e in events(logs, name)))


# --- the accounting ---------------------------------------------------------------------------------


@dataclass
class Accounting:
    """Successful Graph calls per delivery against its final record, every extra one explained."""

    deliveries: int = 0
    sends: dict[str, int] = field(default_factory=dict)  # delivery_id -> calls answered 200
    statuses: Counter[str] = field(default_factory=Counter)
    extra: int = 0  # successful calls beyond one per sent delivery (and none per unsent one)
    by_cause: Counter[str] = field(default_factory=Counter)
    possible_duplicate_events: Counter[str] = field(default_factory=Counter)
    unexplained: dict[str, str] = field(default_factory=dict)  # delivery_id -> what was seen
    lost: dict[str, str] = field(default_factory=dict)  # recorded sent, but no call answered 200
    wrong_record: dict[str, str] = field(default_factory=dict)  # record's message_id not Graph's
    stray_calls: list[str] = field(default_factory=list)  # PSIDs of this run nobody accepted

    def summary(self) -> str:
        return (
            f"{self.deliveries} deliveries {dict(self.statuses)}, successful calls "
            f"{sum(self.sends.values())}, extra {self.extra} by cause {dict(self.by_cause)}, "
            f"possible-duplicate events {dict(self.possible_duplicate_events)}, "
            f"unexplained {len(self.unexplained)}, lost {len(self.lost)}"
        )

    def assert_exact(self, *, allow_duplicates: bool = True) -> None:
        """Nothing lost, every record true to Graph, every extra send explained (or, with
        ``allow_duplicates=False``, none at all)."""
        assert not self.lost, f"recorded sent without a successful call: {dict(list(self.lost.items())[:5])}"
        assert not self.wrong_record, (
            f"records not matching Graph: {dict(list(self.wrong_record.items())[:5])}"
        )
        assert not self.stray_calls, f"calls for messages nobody accepted: {self.stray_calls[:5]}"
        assert not self.unexplained, (
            f"{len(self.unexplained)} deliveries sent more often than the README's duplicate windows "
            f"explain: {dict(list(self.unexplained.items())[:10])}"
        )
        if not allow_duplicates:
            assert self.extra == 0, f"duplicates where none may occur: {self.summary()}"


def account(
    accepted: Mapping[str, str],
    records: Mapping[str, Mapping[str, str]],
    calls: Iterable[Mapping[str, Any]],
    logs: Iterable[Mapping[str, Any]],
    *,
    deaths: Iterable[float] = (),
    tag: str | None = None,
    key: Callable[[Mapping[str, Any]], str] | None = None,
) -> Accounting:
    """Count successful sends per delivery (``accepted``: message key -> delivery_id; the key of a
    sandbox call is ``key(call)``, its PSID by default: one PSID per message) and explain every
    extra one by that delivery's possible-duplicate events.

    ``deaths``: when a worker died (killed by the test, or an unexpected exit). A reclaim explains
    an extra send only when it came after a death and no live worker's send of that delivery was
    fenced. ``tag``: successful calls to PSIDs starting with it that no accepted message has are
    reported as stray.
    """
    acc = Accounting(deliveries=len(accepted))
    by_psid: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    known = set(accepted)
    key_of = key or (lambda c: str(c.get("psid")))
    for c in calls:
        if c.get("status") != 200:
            continue
        k = key_of(c)
        if k in known:
            by_psid[k].append(c)
        elif tag is not None and tag in k:
            acc.stray_calls.append(k)
    ids = set(accepted.values())
    ambiguous: Counter[str] = Counter()
    reclaims: dict[str, list[float]] = defaultdict(list)
    fenced: Counter[str] = Counter()
    for e in logs:
        delivery_id = e.get("delivery_id")
        if delivery_id not in ids or not e.get("possible_duplicate"):
            continue
        name = str(e.get("event"))
        acc.possible_duplicate_events[name] += 1
        if name == "delivery.attempt":
            ambiguous[delivery_id] += 1
        elif name == "delivery.reclaimed":
            reclaims[delivery_id].append(log_time(e))
        elif name == "delivery.fenced":
            fenced[delivery_id] += 1
    first_death = min(deaths, default=None)
    for psid, delivery_id in accepted.items():
        rec = records.get(delivery_id, {})
        status = rec.get("status", "")
        acc.statuses[status] += 1
        ok = by_psid.get(psid, [])
        acc.sends[delivery_id] = len(ok)
        expected = 1 if status == "sent" else 0
        if status == "sent":
            if not ok:
                acc.lost[delivery_id] = "no call answered 200"
            elif rec.get("message_id") not in {c.get("message_id") for c in ok}:
                acc.wrong_record[delivery_id] = f"message_id {rec.get('message_id')!r} was not Graph's answer"
        extra = max(0, len(ok) - expected)
        if not extra:
            continue
        acc.extra += extra
        by_ambiguity = min(extra, ambiguous[delivery_id])
        after_death = [t for t in reclaims[delivery_id] if first_death is not None and t >= first_death - 1]
        by_reclaim = 0 if fenced[delivery_id] else min(extra - by_ambiguity, len(after_death))
        if by_ambiguity:
            acc.by_cause["ambiguous"] += by_ambiguity
        if by_reclaim:
            acc.by_cause["reclaimed after a worker died"] += by_reclaim
        left = extra - by_ambiguity - by_reclaim
        if left:
            acc.by_cause["unexplained"] += left
            acc.unexplained[delivery_id] = (
                f"status {status}, {len(ok)} successful calls at "
                f"{[round(float(c['at']), 3) for c in ok]}; events: {ambiguous[delivery_id]} ambiguous, "
                f"{len(reclaims[delivery_id])} reclaimed ({len(after_death)} after a worker death), "
                f"{fenced[delivery_id]} fenced (a live worker's send)"
            )
    return acc


def settled_calls(sandbox: Sandbox, quiet: float, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The sandbox's calls once no call has completed for ``quiet`` seconds (bounded)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = httpx.get(f"{sandbox.url}/__sandbox/stats", timeout=10).json()["calls"]
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
        time.sleep(0.1)
    return sandbox.calls()


def account_stack(
    stack: Stack,
    accepted: Mapping[str, str],
    records: Mapping[str, Mapping[str, str]],
    *,
    supervisor: Supervisor | None = None,
    tag: str | None = None,
    key: Callable[[Mapping[str, Any]], str] | None = None,
    quiet: float = 1.0,
) -> Accounting:
    """:func:`account` for a stack, once the sandbox has answered every call still in progress
    (``quiet``: at least the longest a call can take there; it records a call when it answers)."""
    return account(
        accepted,
        records,
        settled_calls(stack.sandbox, quiet),
        stack.logs(),
        deaths=supervisor.deaths if supervisor is not None else (),
        tag=tag,
        key=key,
    )


def sent_by(proc: Proc) -> int:
    """How many outcomes ``sent`` this process wrote (its ``delivery.sent`` lines)."""
    import orjson

    count = 0
    for line in proc.log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{") and '"delivery.sent"' in line:
            try:
                count += orjson.loads(line).get("event") == "delivery.sent"
            except orjson.JSONDecodeError:
                continue
    return count


OUTCOME_LINES = ("delivery.sent", "delivery.failed", "delivery.dead_lettered", "delivery.expired")


def assert_one_outcome_line(
    logs: Iterable[Mapping[str, Any]], records: Mapping[str, Mapping[str, str]]
) -> None:
    """Each final delivery's outcome was written once, by one worker: one outcome line each, and
    it names the record's status (workers that stay alive log every outcome they write)."""
    seen: dict[str, list[str]] = defaultdict(list)
    for e in logs:
        if e.get("event") in OUTCOME_LINES and e.get("delivery_id") in records:
            seen[str(e["delivery_id"])].append(str(e["event"]))
    line_of = {"sent": "delivery.sent", "failed": "delivery.failed", "dead": "delivery.dead_lettered"}
    line_of["expired"] = "delivery.expired"
    wrong = {
        i: (r.get("status"), seen.get(i, []))
        for i, r in records.items()
        if seen.get(i, []) != [line_of.get(r.get("status", ""), "?")]
    }
    assert not wrong, (
        f"{len(wrong)} deliveries without exactly one matching outcome line: {list(wrong.items())[:5]}"
    )

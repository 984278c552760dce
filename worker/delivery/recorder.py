"""Outcomes written as they are decided, in small batches, under the claim's fence.

:meth:`Recorder.record` takes one outcome the moment its delivery is done with (sent, failed,
deferred ...). Outcomes decided within RECORD_FLUSH_MS of each other (or RECORD_FLUSH_MAX of them)
share one round trip: one ``record.lua`` call for their records and the indexes, plus what goes
with them in the same pipeline (suppressions, the closed-window memory, page pauses, the Braze
outbox items of the observers). No outcome waits for another delivery's Graph call. A final
outcome's Braze event (BRAZE_OUTCOME_EVENTS) goes through ``record.lua`` itself, which writes it
with a fresh write only, so it is in the outbox once.

``record.lua`` writes a record only under its claim's token, and remembers the token once
written, so a write may be sent again safely. That is what makes the retry below correct: a write
that fails (Redis stalled, restarting, full) is tried again, with a capped backoff, until it lands.
A sent message is therefore never left recorded as open by a Redis hiccup, which is what would
make the sweeper send it again.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics
from worker.braze.items import outcome_event_item
from worker.config import PageTokens, Settings
from worker.delivery import policy, routes
from worker.delivery.model import Outcome
from worker.delivery.observers import Observer
from worker.delivery.pauses import queue_lift, queue_pause
from worker.logging import get_logger
from worker.states import FINAL, KEEPS_BODY, State
from worker.store import Keys, campaign_ctx, outcomes, records, scripts, unread
from worker.templates.catalogue import field_name

log = get_logger("worker.delivery")
#: Backoff of a failed write: doubles from BASE to CAP (seconds), with jitter.
RETRY_BASE = 0.05
RETRY_CAP = 2.0
#: Tries before a write that Redis keeps refusing as wrong (:func:`refused`) goes without its
#: side effects, so one bad command cannot hold every later outcome of the process.
EFFECTS_TRIES = 3
#: Refusals that are Redis's state, not the command's: they pass, and the write is retried whole.
#: By class (redis-py's for their codes) and, for the codes it leaves as a plain ResponseError,
#: by the code that starts the message.
_PASSING = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.NoScriptError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.ClusterDownError,
)
_PASSING_CODES = ("BUSY ", "MISCONF ", "NOREPLICAS ", "UNBLOCKED ")


def refused(exc: BaseException) -> bool:
    """Redis answered, and refused a command as wrong: sending it again gives the same answer.
    That is a ResponseError but for a server state (out of memory, read-only, busy, MISCONF,
    a failover: those pass). redis-py strips the ``ERR`` code from the message (``ERR invalid
    expire time ...`` reads ``invalid expire time ...``, a script's error likewise), and keeps
    others (``WRONGTYPE ...``)."""
    if not isinstance(exc, redis.exceptions.ResponseError) or isinstance(exc, _PASSING):
        return False
    return not str(exc).startswith(_PASSING_CODES)


#: record.lua's answers for an open outcome written as CANCELLED instead, and why: its campaign
#: was stopped, or an operator cancelled it, while it was held.
CANCELLED_INSTEAD = {3: "campaign_stopped", 4: "operator"}
#: A page's index of waiting deliveries (and a paused template's) outlives the longest wait in
#: it by this much.
PAGE_WAIT_MARGIN = 3600
#: A delivery's history keeps its last entries only.
HISTORY_ENTRIES = 20


_BAD_ENDS = (State.FAILED, State.DEAD, State.EXPIRED)


def _notes(o: Outcome) -> tuple[bytes | str, str]:
    """(the history entry, the failure class) record.lua writes with a fresh write only.

    No history for a round deferred for pacing, nor for a first-try send (its record says it
    all: the happy path writes none). The class of a bad end is ``{status}:{reason}``; a possible
    duplicate that did not end badly is counted as ``possible_duplicate``."""
    entry: bytes | str = ""
    if not o.paced and not (o.status is State.SENT and o.delivery.attempts <= 1):
        entry = history_entry(o)
    cls = ""
    if o.status in _BAD_ENDS:
        cls = f"{o.status.value}:{o.reason or 'unknown'}"
    elif o.possible_duplicate:
        cls = "possible_duplicate"
    return entry, cls


def history_entry(o: Outcome) -> bytes:
    """One line of a delivery's history (``P:hist:{id}``; the console's and the status API's
    look-up): when, what became of it, why, Graph's code, the route and the attempt."""
    info = o.error.info if o.error is not None else None
    entry: dict[str, Any] = {
        "at": round(time.time(), 3),
        "status": o.status.value,
        "attempt": o.delivery.attempts,
    }
    if o.reason:
        entry["reason"] = o.reason
    if info is not None and info.code is not None:
        entry["code"], entry["subcode"] = info.code, info.subcode
    route = o.delivered_via or o.delivery.active_route
    if route:
        entry["route"] = route
    if o.possible_duplicate:
        entry["possible_duplicate"] = True
    return orjson.dumps(entry)


def _unread_entry(o: Outcome, fields: dict[str, Any], now: float) -> bytes:
    """Where record.lua files a sent delivery among its recipient's unread deliveries (the
    receipts find it there: worker/store/unread.py), b"" for none: a sent delivery with a Graph
    message id (this send's, ``fields``, or one its record had) and a recipient. Built here: a
    SHA-1 and a few byte strings cost the worker, not Redis, about 15% of record.lua's Redis CPU."""
    d = o.delivery
    if o.status is not State.SENT or not d.psid or not (fields.get("message_id") or d.kept.get("message_id")):
        return b""
    return unread.locator(d.page_id, d.psid) + unread.entry(d.id, int(now // outcomes.SPAN))


def record_fields(o: Outcome, now: float) -> dict[str, Any]:
    """The record fields an outcome writes (``record.lua`` adds status, times and the fence)."""
    d = o.delivery
    fields: dict[str, Any] = {"attempts": d.attempts, "failures": d.failures}
    if o.status not in FINAL:
        fields["routes_tried"] = orjson.dumps(d.routes_tried)
        fields["active_route"] = d.active_route
        fields["slot_at"] = repr(d.slot_at)
        if o.status is not State.PARKED:
            fields["not_before"] = repr(now + o.delay)
    if o.result is not None:
        if o.result.message_id:
            fields["message_id"] = o.result.message_id
        fields["sent_at"] = repr(o.result.started_at)
    if o.delivered_via:
        fields["delivered_via"] = o.delivered_via
        if routes.is_tag(o.delivered_via):  # the field readers had before routes
            fields["delivered_tag"] = o.delivered_via[len(routes.TAG) :]
    if o.status is not State.SENT and not o.paced and (o.error is not None or o.reason):
        info = o.error.info if o.error is not None else None
        fields["error"] = records.error_fields(
            o.reason,
            info.code if info else None,
            info.subcode if info else None,
            info.message if info else None,
            info.fbtrace_id if info else None,
        )
    return fields


def outcome_value(o: Outcome, fields: dict[str, Any], now: float, braze_receipts: bool) -> bytes:
    """The final record of a delivery that ends here (not a dead letter), as record.lua stores it
    (worker/store/outcomes.py): the kept fields as claimed, this outcome's fields, its status,
    time and a digest of its claim; a sent one without an earlier error, and without its Braze
    user unless BRAZE_RECEIPT_EVENTS needs it for the receipts. Built here, where the delivery is
    already decoded, so that the script only stores it."""
    rec = dict(o.delivery.kept)
    rec.update(
        {name: value.decode() if isinstance(value, bytes) else str(value) for name, value in fields.items()}
    )
    rec["status"], rec["updated_at"], rec["done"] = (
        o.status.value,
        repr(now),
        outcomes.done_digest(o.delivery.claim),
    )
    if o.status is State.SENT:
        rec.pop("error", None)
    if not (o.status is State.SENT and braze_receipts):
        rec.pop("external_id", None)
    return outcomes.pack(rec)


def outcome_event(o: Outcome, outcome_events: bool) -> str:
    """The ``messenger_delivery`` Braze event of a final outcome (BRAZE_OUTCOME_EVENTS), '' for
    none. record.lua puts it in the outbox with a fresh write only: a write sent again after its
    answer was lost, or refused by the fence (another claim decides), adds none."""
    d = o.delivery
    if not (outcome_events and o.final and d.external_id):
        return ""
    item = outcome_event_item(d.external_id, o.status.value, d.id, o.reason, attribution=d.attribution)
    return orjson.dumps(item).decode()


def _index_wait(pipe: Any, key: str, o: Outcome) -> None:
    """Index a waiting delivery -> its due time in ``key``, which outlives its longest wait by
    PAGE_WAIT_MARGIN (a release empties it; an index nothing released expires)."""
    pipe.zadd(key, {o.delivery.id: time.time() + o.delay})
    pipe.expire(key, int(o.delay) + PAGE_WAIT_MARGIN)


class Recorder:
    def __init__(
        self, client: aioredis.Redis, settings: Settings, tokens: PageTokens, observer: Observer
    ) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys.of(settings)
        self._tokens = tokens
        self._observer = observer
        self._linger = settings.record_flush_ms / 1000
        self._outcome_events = campaign_ctx.braze_events(settings, settings.braze_outcome_events)
        self._max = settings.record_flush_max
        self._buffer: list[tuple[Outcome, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: Told when the waits just written fall due (the soonest, epoch seconds): the process's
        #: scheduler, which sleeps longer while idle (worker/delivery/scheduler.py).
        self.on_due: Callable[[float], None] | None = None
        #: What the pipeline being built writes that is told after it lands (one write at a
        #: time: _run writes its batches in turn): the outcomes whose pause it sets, with where
        #: pause.lua's answer will be, and the soonest wait it puts in P:sched (epoch seconds).
        self._pauses: list[tuple[Outcome, int]] = []
        self._soonest: float | None = None

    def record(self, outcome: Outcome) -> asyncio.Future[None]:
        """Queue an outcome; the future is done once it is written (or refused by the fence)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer.append((outcome, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return future

    @property
    def waiting(self) -> int:
        return len(self._buffer)

    async def _run(self) -> None:
        try:
            while self._buffer:
                if len(self._buffer) < self._max and self._linger > 0 and not self._closing:
                    await asyncio.sleep(self._linger)  # outcomes of the same moment share a write
                batch, self._buffer = self._buffer[: self._max], self._buffer[self._max :]
                await self._write_until_landed(batch)
        finally:
            self._task = None

    async def flush(self) -> None:
        """Write everything queued now (shutdown)."""
        self._closing = True
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _write_until_landed(self, batch: list[tuple[Outcome, asyncio.Future[None]]]) -> None:
        decided = [o for o, _ in batch]
        failures = 0
        effects = True
        while True:
            try:
                results = await scripts.execute(
                    self._client, functools.partial(self._build, decided=decided, effects=effects)
                )
                break
            except (redis.exceptions.RedisError, OSError) as exc:
                failures += 1
                if effects and failures >= EFFECTS_TRIES and refused(exc):
                    effects = False  # the outcomes themselves must land: nothing else waits behind them
                    log.exception("outcomes.effects_dropped", count=len(decided), error=str(exc)[:200])
                    metrics.OUTCOME_WRITES.labels("effects_dropped").inc()
                metrics.OUTCOME_WRITES.labels("retried").inc()
                wait = min(RETRY_CAP, RETRY_BASE * 2 ** min(failures, 10)) * (0.5 + random.random() / 2)  # noqa: S311  # jitter
                (log.warning if failures in (1, 10) or failures % 100 == 0 else log.debug)(
                    "outcomes.write_retry", count=len(decided), failures=failures, error=type(exc).__name__
                )
                await asyncio.sleep(wait)
        for o, at in self._pauses:
            o.paused_until = float(results[at])
        for o, written in zip(decided, results[0], strict=True):
            o.written = int(written)
            if o.written in CANCELLED_INSTEAD:  # stopped or cancelled meanwhile
                o.cancel_instead(CANCELLED_INSTEAD[o.written])
                o.written = 1
        metrics.OUTCOME_WRITES.labels("written").inc()
        metrics.OUTCOME_WRITE_SIZE.observe(len(decided))
        if failures:
            log.info("outcomes.written_after_retry", count=len(decided), failures=failures)
        self._observer.recorded(decided)
        if self._soonest is not None and self.on_due is not None:
            self.on_due(self._soonest)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _build(self, pipe: Any, *, decided: Sequence[Outcome], effects: bool = True) -> None:
        """The batch's write: record.lua for every outcome, then (``effects``) what the answers
        taught about recipients and pages and the observers' writes."""
        s, keys, now = self._settings, self._keys, time.time()
        self._pauses, self._soonest = [], None
        args: list[Any] = [
            repr(now),
            keys.delivery_prefix,
            keys.park_prefix,
            keys.stats_prefix,
            s.record_retention,
            int(now // 60),
            keys.history_prefix,
            int(s.message_ttl) + s.record_retention,
            HISTORY_ENTRIES,
            keys.unread_bucket_prefix,
            *campaign_ctx.of_settings(keys, s, now),
        ]
        for o in decided:
            fields = record_fields(o, now)
            due = ""
            deadline = ""
            if o.status is State.PARKED:
                deadline = repr(o.delivery.created_at + s.message_ttl + 1)
            elif o.status not in FINAL:
                at = now + o.delay
                due = repr(at)
                self._soonest = at if self._soonest is None else min(self._soonest, at)
                deadline = repr(at + s.sweep_after_seconds)
            packed, named = b"", _unread_entry(o, fields, now)
            if o.status in FINAL and o.status not in KEEPS_BODY:
                packed = outcome_value(o, fields, now, s.braze_receipt_events)
                fields = {}  # the value holds them all
            d = o.delivery
            rest = [
                due,
                deadline,
                *_notes(o),
                o.reason or "",
                # what record.lua needs of the record, as this claim read it (it reads only the
                # fence): nothing else writes these while the claim is held
                "1" if d.parked else "",
                d.campaign,
                f"{d.page_id}:{d.psid}" if d.parked or o.status is State.PARKED else "",
                outcome_event(o, self._outcome_events),
            ]
            args += [
                d.id,
                d.claim,
                o.status.value,
                packed,
                outcomes.field(d.id) if packed else b"",
                named,
                d.kept.get("created_at", ""),
                # one argument for what is mostly empty (a first-try send has none of it)
                msgpack.packb(rest, use_bin_type=False) if any(rest) else b"",
                len(fields),
            ]
            for name, value in fields.items():
                args += [name, value]
        scripts.queue(
            pipe, "record", keys=[keys.pending, keys.open, keys.sched, keys.dead, keys.parked], args=args
        )
        if not effects:
            return
        for o in decided:
            self._effects(pipe, o)
        self._observer.writes(decided, pipe)

    def _effects(self, pipe: Any, o: Outcome) -> None:
        """What Graph's answer taught about the recipient or the page (not fenced: true whoever
        holds the delivery now)."""
        s, keys, d = self._settings, self._keys, o.delivery
        if o.status is State.SCHEDULED and o.reason in policy.PAGE_WAITS:
            # waiting for its page: indexed, so that resuming the page releases it without a scan
            _index_wait(pipe, keys.page_waits(d.page_id), o)
            if o.reason in policy.TEMPLATE_WAITS and d.utility is not None:
                # and for its template (paused, or pending approval): the catalogue approving
                # it releases it (worker/templates/waits.py), not at the end of its wait
                name = field_name(d.utility.name, d.utility.language)
                _index_wait(pipe, keys.template_waits(d.page_id, name), o)
        if d.window_closed_seen:  # the next messages to this PSID skip the doomed call, a while
            pipe.set(keys.window_closed(d.page_id, d.psid), repr(time.time()), ex=s.window_recheck_seconds)
        if o.suppress:
            pipe.set(keys.suppressed(d.page_id, d.psid), o.reason or "unreachable", ex=s.suppression_ttl)
        if o.suppress_tagged:
            pipe.set(keys.tag_suppressed(d.page_id, d.psid), "tag_abuse", ex=s.tag_abuse_suppression_ttl)
        if o.pause is not None:
            self._pauses.append((o, len(pipe.command_stack)))  # pause.lua answers when it ends
            queue_pause(pipe, keys, s, d.page_id, pause=o.pause, token=self._tokens.get(d.page_id) or "")
        elif d.probe and not o.paced:
            queue_lift(pipe, keys, d.page_id)

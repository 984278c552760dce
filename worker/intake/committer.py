"""Group commit: the send route's requests written to Redis in batches, one Lua call per batch.

A caller's :meth:`GroupCommitter.submit` returns only once the ``accept.lua`` call that carries
its request has returned: delivery records, pending index, idempotency keys, and the ids,
appended to the queue's newest batch or to a new batch with its Celery message
(:mod:`worker.store.envelope`, ``store/lua/accept.lua``). So a 202 means the message is in Redis.

Otherwise it raises, and never leaves a caller waiting longer than its deadline
(``INTAKE_DEADLINE_SECONDS``), whatever Redis does. Each refusal says whether the message may
be stored (:class:`CommitFailed`, answered 503 with Retry-After):

* :class:`Overloaded` — ``INTAKE_MAX_PENDING`` requests already wait for Redis: refused at once,
  nothing enqueued (the buffer is bounded, so a stalled Redis cannot pile requests up in memory);
* :class:`NotStored` — nothing was written: the deadline passed before a commit took the request,
  Redis could not be reached, or it refused the script before running it (OOM, READONLY...);
* :class:`MaybeStored` — the script was sent and its answer was lost (the deadline, a read
  timeout, a dropped connection): it may have run. A retry with the same Idempotency-Key is
  answered 200 ``duplicate`` if it did; without a key the retry may store the message twice.

A request the commit cannot encode fails alone with its :class:`InputError`; the others of its
batch are committed.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rexc

from worker import metrics
from worker.config import Settings
from worker.intake.notices import Throttled
from worker.logging import get_logger
from worker.messenger.validation import InputError, SendRequest, encode_body
from worker.states import State
from worker.store import Keys, envelope, idempotency, ids, records, scripts, shards
from worker.store.campaign_ctx import CONTEXT_ARGS
from worker.store.campaign_ctx import of_settings as campaign_context
from worker.store.records import ATTRIBUTION, owner

log = get_logger("worker.intake")
#: A batch this big is committed without waiting for company (BATCH_MAX caps it).
GATHER_TARGET = 16
#: A queued batch's id list outlives SWEEP_AFTER_SECONDS by this much: if its message is lost,
#: the sweeper re-enqueues the ids first (accept.lua).
BATCH_TTL_MARGIN = 60
#: A request with less time than this left before its deadline is not sent to Redis any more: it
#: is answered NotStored at once rather than MaybeStored a moment later (at most a quarter of
#: INTAKE_DEADLINE_SECONDS).
MIN_COMMIT_SECONDS = 0.5
#: The deadline sweep of waiting requests runs at most this often.
REAP_EVERY_SECONDS = 0.05
#: Redis refused the script before running it: nothing was written.
_REFUSED: tuple[type[Exception], ...] = (
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    rexc.BusyLoadingError,
    rexc.AuthenticationError,
    rexc.NoPermissionError,
)
_REFUSED_CODES = ("BUSY ", "MISCONF ", "MASTERDOWN ", "NOREPLICAS ")
#: Words of redis-py's errors raised before a command is written (connecting, no free connection,
#: no master). Any other error after the call started may follow a written command.
_NOT_SENT = (
    "connecting to",
    "Timeout connecting",
    "No connection available",
    "Too many connections",
    "No master",
)


class CommitFailed(Exception):
    """The message was not stored, or may not have been: answered 503 ``code`` with Retry-After."""

    code = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Overloaded(CommitFailed):
    code = "overloaded"


class NotStored(CommitFailed):
    code = "unavailable"


class MaybeStored(CommitFailed):
    code = "unavailable_maybe_stored"


#: What a submit answers (the send route's ``status``), and accept.lua's answer for a cancelled item.
QUEUED, CANCELLED, DUPLICATE = State.QUEUED.value, State.CANCELLED.value, "duplicate"
CANCELLED_MARK = "-"

_NOT_STORED = "the queue is unavailable; nothing was stored: retry later"
_MAYBE_STORED = (
    "the queue did not confirm in time; the message may have been stored: retry with the same "
    "Idempotency-Key (answered 200 duplicate if it was)"
)


def never_ran(exc: BaseException) -> bool:
    """Whether ``exc``, raised by an ACCEPT call, proves that Redis did not run the script."""
    if isinstance(exc, _REFUSED):
        return True
    if isinstance(exc, rexc.ResponseError):
        return str(exc).startswith(_REFUSED_CODES)
    if isinstance(exc, ConnectionRefusedError):
        return True
    if isinstance(exc, rexc.ConnectionError | rexc.TimeoutError):
        text = str(exc)
        return any(words in text for words in _NOT_SENT)
    return False


@dataclass(slots=True)
class _Item:
    delivery_id: str
    request: SendRequest
    idempotency_key: str
    request_id: str
    external_id: str
    future: asyncio.Future[str]
    #: loop time by which the caller is answered
    deadline: float
    #: The sending token's public id (``worker.config.token_id``): who may read the delivery.
    caller: str = ""
    #: The X-Braze-* attribution, in records.ATTRIBUTION's order ("" = not given).
    attribution: tuple[str, ...] = ("",) * len(ATTRIBUTION)

    @property
    def owner(self) -> str:
        """The campaign it counts towards: its campaign id, else its Canvas id ("" = none)."""
        return owner(dict(zip(ATTRIBUTION, self.attribution, strict=True)))


#: accept.lua's arguments before the first request's (worker/store/lua/accept.lua).
ACCEPT_HEAD = 10 + CONTEXT_ARGS


#: accept.lua's arguments per request: id, idempotency key digest and value, the key as the
#: previous version stored it, campaign.
ACCEPT_ITEM = 4


def accept_items(args: list[Any]) -> int:
    """How many requests an ACCEPT call's arguments carry."""
    return (len(args) - ACCEPT_HEAD) // ACCEPT_ITEM


def _record(
    item: _Item, key: str, body: bytes | str, fallbacks: bytes, template: bytes, *, now: str
) -> list[Any]:
    """The new record's HSET arguments (its key, then field/value pairs), written in the commit's
    MULTI/EXEC before accept.lua decides (which deletes it for a repeated key, or makes it an
    outcome for a stopped campaign): QUEUED at ``now``, what the request says packed in one value
    (records.PACKED_FIELD: one field for Redis to store, not seven), then only those of the rest
    the delivery has, so no empty field is stored; attempts (0) and updated_at (= created_at) are
    written when they change, and the idempotency key is remembered in its bucket only."""
    req = item.request
    packed = records.pack_intake(
        (
            req.page_id,
            req.psid,
            body,
            item.caller,
            item.request_id,  # the caller's X-Request-Id, when it sent one
            fallbacks if fallbacks != b"[]" else b"",
            template,
        )
    )
    pairs: list[Any] = [
        "HSET",
        key,
        "status",
        QUEUED,
        "created_at",
        now,
        records.PACKED_FIELD,
        packed,
    ]
    optional: list[tuple[str, bytes | str]] = [
        ("external_id", item.external_id),
        *zip(ATTRIBUTION, item.attribution, strict=True),
    ]
    for name, value in optional:
        if value:
            pairs += [name, value]
    return pairs


class GroupCommitter:
    """Writes queued requests to Redis in batches: one ACCEPT script call per batch.

    Requests arriving while a commit is in flight ride on the next one, so under heavy load
    batches form by themselves and nobody waits for company. A second commit (``max_inflight``,
    default 2) starts while one is in flight only once ``GATHER_TARGET`` requests are waiting:
    the callers then wait for neither, and batches stay that size (measured with wrk, 64
    connections: the intake's core busy 88-90% instead of 85-87%, 3 of 3 rounds faster, batches
    of about 28 instead of 32). Below that, when requests still arrive less than
    ``BATCH_WINDOW_MS`` apart on average, a batch smaller than ``GATHER_TARGET`` waits for company
    while requests keep coming, at most ``BATCH_WINDOW_MS`` (default 10 ms); a trickle is
    committed at once. Batches cut the per-message cost of Celery tasks in the workers (measured:
    2.5 CPU ms per message at 1-2 ids per task, 1.2 at 30); waiting beyond a modest batch saves
    them little and keeps the waiting callers' connections idle. Batches grow where waiting costs
    nobody anything: a commit's ids join the queue's newest Celery message while it is still
    queued, up to ``QUEUE_BATCH_MAX`` (accept.lua), so a backlog reaches the workers in
    messages of up to 100 ids.

    Bounds: at most ``INTAKE_MAX_PENDING`` requests wait or ride on a commit (beyond, submit
    raises :class:`Overloaded` at once). A waiting request whose deadline passes is answered
    :class:`NotStored` by one timer (not one per request); a commit runs at most until the
    earliest deadline of its requests, then they are answered :class:`MaybeStored`.
    """

    def __init__(self, client: aioredis.Redis, settings: Settings, max_inflight: int = 2) -> None:
        self._client = client
        self._settings = settings
        self._keys = Keys.of(settings)
        self._buffer: list[_Item] = []
        self._inflight = 0
        self._max_inflight = max_inflight
        self._target = min(GATHER_TARGET, settings.batch_max)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_arrival = 0.0
        self._gap = math.inf  # moving average of the time between requests (s)
        self._max_pending = settings.intake_max_pending
        self._deadline = settings.intake_deadline_seconds
        self._min_left = min(MIN_COMMIT_SECONDS, self._deadline / 4)
        self._committing = 0  # requests in commits in flight
        self._reaper: asyncio.TimerHandle | None = None
        self._shed = Throttled("intake.overloaded", every=1.0)

    def close(self) -> None:
        """Cancels the deadline timer (the app stops)."""
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    @property
    def pending(self) -> int:
        """Requests waiting for a commit or riding on one."""
        return len(self._buffer) + self._committing

    async def submit(
        self,
        request: SendRequest,
        idempotency_key: str,
        request_id: str,
        external_id: str = "",
        *,
        caller: str = "",
        deadline: float | None = None,
    ) -> tuple[str, bool]:
        """Returns (delivery_id, accepted). accepted is False for a repeated Idempotency-Key."""
        delivery_id, status = await self.submit_with_status(
            request, idempotency_key, request_id, external_id, caller=caller, deadline=deadline
        )
        return delivery_id, status != DUPLICATE

    async def submit_with_status(
        self,
        request: SendRequest,
        idempotency_key: str,
        request_id: str,
        external_id: str = "",
        *,
        caller: str = "",
        deadline: float | None = None,
        attribution: tuple[str, ...] | None = None,
    ) -> tuple[str, str]:
        """Returns (delivery_id, status): ``queued``, ``cancelled`` (its campaign is stopped:
        recorded, never sent) or ``duplicate`` (a repeated Idempotency-Key: the first delivery's
        id). Raises :class:`CommitFailed` (at the latest at ``deadline``, loop time; default now +
        INTAKE_DEADLINE_SECONDS) or the request's :class:`InputError`.

        An Idempotency-Key is scoped to the sending token and the page: one caller cannot learn
        another's delivery ids by guessing their keys."""
        if len(self._buffer) + self._committing >= self._max_pending:
            self._shed.note(pending=self._max_pending)
            raise Overloaded(
                f"{self._max_pending} requests are waiting for the queue (INTAKE_MAX_PENDING); "
                "nothing was stored: retry later"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        gap = min(now - self._last_arrival, 1.0)
        self._gap = gap if self._gap == math.inf else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now
        scoped = idempotency.scoped(caller, request.page_id, idempotency_key)
        item = _Item(
            shards.new_delivery_id(self._settings),
            request,
            scoped,
            request_id,
            external_id,
            loop.create_future(),
            now + self._deadline if deadline is None else deadline,
            caller,
            attribution or ("",) * len(ATTRIBUTION),
        )
        self._buffer.append(item)
        if self._reaper is None:
            self._reaper = loop.call_at(item.deadline, self._reap)
        if self._inflight == 0 or (  # a second commit only for a batch that needs no company
            self._inflight < self._max_inflight and len(self._buffer) >= self._target
        ):
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        existing = await item.future
        if existing == CANCELLED_MARK:
            return item.delivery_id, CANCELLED
        return (existing, DUPLICATE) if existing else (item.delivery_id, QUEUED)

    def _reap(self) -> None:
        """Answers the waiting requests whose deadline passed before a commit took them: never
        sent, so :class:`NotStored`. Re-armed for the earliest deadline still waiting (at most
        every REAP_EVERY_SECONDS)."""
        self._reaper = None
        if not self._buffer:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        keep = [item for item in self._buffer if item.deadline > now]
        expired = len(self._buffer) - len(keep)
        if expired:
            for item in self._buffer:
                if item.deadline <= now and not item.future.done():
                    item.future.set_exception(NotStored(_NOT_STORED))
            self._buffer[:] = keep
            log.warning(
                "intake.deadline_passed", count=expired, waiting=len(keep), committing=self._committing
            )
        if keep:
            earliest = min(item.deadline for item in keep)
            self._reaper = loop.call_at(max(earliest, now + REAP_EVERY_SECONDS), self._reap)

    async def _drain(self) -> None:
        try:
            window = self._settings.batch_window_ms / 1000
            while self._buffer:
                if window > 0 and self._gap < window:  # every batch, not only the first
                    await self._gather(window)
                batch = self._buffer[: self._settings.batch_max]
                del self._buffer[: self._settings.batch_max]
                try:
                    await self._commit(batch)
                except Exception as exc:  # noqa: BLE001  # a bug here must not strand a caller
                    self._fail([item for item in batch if not item.future.done()], exc)
        finally:
            self._inflight -= 1

    async def _gather(self, window: float) -> None:
        """Company is likely: let concurrent requests share one commit and one Celery message, so
        a worker gets batches, not single messages (measured: 1 msg/task at 300 req/s). Waits
        while requests keep arriving (none for four times the usual gap, at least 1 ms, ends it),
        at most ``window``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while len(self._buffer) < self._target:
            now = loop.time()
            quiet = max(0.001, 4 * self._gap)
            wait = min(self._last_arrival + quiet, deadline) - now
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    async def _accept(self, *, keys: list[str], args: list[Any], writes: list[list[Any]]) -> Any:
        """One commit (a seam: tests hold it in flight): the records' HSETs and the accept.lua
        call in one MULTI/EXEC, so no record is written without the script's decision about it;
        on NOSCRIPT the script again (scripts.execute). accept.lua's answer."""

        def build(pipe: Any) -> None:
            for write in writes:
                pipe.execute_command(*write)
            scripts.queue(pipe, "accept", keys=keys, args=args)

        results = await scripts.execute(self._client, build, transaction=True)
        return results[-1]

    def _arguments(self, batch: list[_Item]) -> tuple[list[_Item], list[Any], list[list[Any]]]:
        """The ACCEPT call's arguments for the requests of ``batch`` that go: not those already
        answered, nor those too close to their deadline (answered NotStored), nor one that cannot
        be encoded (answered with its InputError): each fails alone."""
        s = self._settings
        batch_id = ids.new_delivery_id()  # used only if this commit has to start a batch
        now = time.time()
        at = repr(now)
        args: list[Any] = [
            at,
            s.idempotency_ttl,
            s.sweep_after_seconds,
            self._keys.idem_bucket_prefix,
            self._keys.delivery_prefix,
            self._keys.batch_prefix,
            envelope.celery_message(batch_id, s.queue_name, task=envelope.BATCH_TASK),
            batch_id,
            s.queue_batch_max,
            math.ceil(s.sweep_after_seconds) + BATCH_TTL_MARGIN,
            *campaign_context(self._keys, s, now),
        ]
        latest_start = asyncio.get_running_loop().time() + self._min_left
        going: list[_Item] = []
        writes: list[list[Any]] = []
        for item in batch:
            if item.future.done():
                continue
            if item.deadline < latest_start:
                item.future.set_exception(NotStored(_NOT_STORED))
                continue
            req = item.request
            try:
                body = req.body_json or encode_body(req.body)
                tags = orjson.dumps(req.fallbacks)
                template = orjson.dumps(req.utility.as_json()) if req.utility is not None else b""
            except (InputError, TypeError, ValueError) as exc:
                item.future.set_exception(
                    exc if isinstance(exc, InputError) else InputError(422, "invalid_body", str(exc))
                )
                continue
            writes.append(_record(item, self._keys.delivery(item.delivery_id), body, tags, template, now=at))
            key = item.idempotency_key
            remembered, old = (
                (idempotency.entry(key, item.delivery_id), self._keys.idem(key)) if key else (b"", "")
            )
            args += [item.delivery_id, remembered, old, item.owner]
            going.append(item)
        return going, args, writes

    async def _commit(self, batch: list[_Item]) -> None:
        items, args, writes = self._arguments(batch)
        if not items:
            return
        self._committing += len(items)
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(min(item.deadline for item in items)):
                results = await self._accept(
                    keys=[self._keys.pending, self._keys.queue, self._keys.open, self._keys.gather],
                    args=args,
                    writes=writes,
                )
        except BaseException as exc:  # every caller is answered, whatever happened
            self._fail(items, exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._committing -= len(items)
        elapsed = time.perf_counter() - started
        for _ in items:
            metrics.INTAKE_ENQUEUE.observe(elapsed)
        accepted: list[str] = []
        for item, result in zip(items, results, strict=True):
            # '' accepted, '-' cancelled, else the delivery a repeated key names (idempotency.py)
            existing = idempotency.delivery_id(result) if isinstance(result, bytes) else str(result)
            if not existing or existing == CANCELLED_MARK:
                accepted.append(item.delivery_id)
            if not item.future.done():
                item.future.set_result(existing)
        if accepted:  # one line per commit (the audit trail of 202s), not one per request
            log.info(
                "intake.committed",
                count=len(accepted),
                delivery_ids=accepted,
                enqueue_ms=round(elapsed * 1000, 2),
            )

    def _fail(self, items: list[_Item], exc: BaseException) -> None:
        """Answers every request of a commit that raised: NotStored when Redis provably did not
        run the script, else MaybeStored (its ids are logged: they may be in Redis)."""
        maybe = not never_ran(exc)
        for item in items:
            if not item.future.done():
                item.future.set_exception(MaybeStored(_MAYBE_STORED) if maybe else NotStored(_NOT_STORED))
        log.warning(
            "intake.commit_failed",
            count=len(items),
            maybe_stored=maybe,
            error=type(exc).__name__,
            delivery_ids=[item.delivery_id for item in items] if maybe else None,
        )

"""The durable outbox of writes to Braze, and its one drainer at a time.

Callers never call Braze on the send path: they put items (:mod:`worker.braze.items`) in the
outbox, in Redis, and one drainer (:class:`OutboxDrainer`, holding ``P:braze:lock``) sends them in
batches, one request per batch, paced and retried.

Redis keys (``P`` = the key prefix; names in :class:`worker.store.Keys`)::

    P:braze:outbox     list    JSON items waiting; LPUSH new items, the drainer takes from the right
                               end (oldest first) and puts retried batches back on the right end, so
                               order is kept
    P:braze:inflight   list    items moved out of the outbox by a drainer and not yet acknowledged; a
                               crash between the move and the acknowledgement leaves them here and
                               :meth:`BrazeOutbox.recover` moves them back when a drainer takes the lock
    P:braze:retry_at   string  epoch seconds; no batch is moved out of the outbox before it
    P:braze:failures   string  consecutive retryable failures (backoff exponent); deleted on any
                               answer from Braze that is not retryable
    P:braze:invalid    list    items that cannot be decoded (written by something other than
                               :func:`encode_items`): set aside for a human, never sent or dropped
    P:braze:lock       string  the drainer's id (PX 30 s, renewed every tick while it drains)

Duplicates: attribute updates are idempotent; events are not ("Duplicate events are each ingested
as separate events"), so a crash after Braze accepted a batch and before the acknowledgement, or a
:meth:`~BrazeOutbox.recover` while another drainer of the same prefix is sending, can count an
outcome twice. Nothing is lost in either case.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from worker import metrics
from worker.braze.client import (
    BrazeClient,
    BrazeConfig,
    BrazeFatal,
    BrazeRetryable,
    BrazeSetupError,
)
from worker.braze.items import build_request, check_item
from worker.logging import get_logger
from worker.store import Keys, scripts

log = get_logger("worker.braze")

#: First backoff step (seconds) when Braze gives no wait; doubled per consecutive failure.
RETRY_BASE_SECONDS: Final = 1.0
#: The drainer's lock lasts this long unless renewed (every scheduler tick while it drains).
LOCK_MS: Final = 30_000
#: Requests one drainer tick sends at most (each of up to BRAZE_BATCH_SIZE objects).
REQUESTS_PER_TICK: Final = 20


# Enough doublings to reach any sane cap from RETRY_BASE_SECONDS (2^30 s is 34 years).
_MAX_EXPONENT: Final = 30
_ENQUEUE_CHUNK: Final = 1000  # Lua's unpack() has a stack limit of a few thousand values


@dataclass(frozen=True)
class DrainResult:
    """Items (not request objects) handled by one :meth:`BrazeOutbox.drain_once`; ``rejected``:
    the request objects Braze refused one by one in its 2xx answer (``errors``), lost for good."""

    sent: int
    retried: int
    dropped: int
    invalid: int = 0
    rejected: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BrazeOutbox:
    """The durable queue of Braze writes under one key prefix (keys in the module docstring)."""

    def __init__(self, keys: Keys, *, rng: random.Random | None = None) -> None:
        self.keys = keys
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not cryptography

    async def enqueue(self, redis: aioredis.Redis, items: Sequence[Mapping[str, Any]]) -> None:
        """Validate and append items (InvalidItemError for a malformed one: nothing is written then)."""
        raws = encode_items(items)
        for start in range(0, len(raws), _ENQUEUE_CHUNK):
            await scripts.run(
                redis,
                "braze_enqueue",
                keys=[self.keys.braze_outbox],
                args=raws[start : start + _ENQUEUE_CHUNK],
            )

    async def move(self, redis: aioredis.Redis, limit: int) -> list[str]:
        """Move up to ``limit`` of the oldest items to inflight (nothing while retry_at is ahead)."""
        moved = await scripts.run(
            redis,
            "braze_move",
            keys=[self.keys.braze_outbox, self.keys.braze_inflight, self.keys.braze_retry_at],
            args=[repr(time.time()), limit],
        )
        return [_text(raw) for raw in moved]

    async def recover(self, redis: aioredis.Redis) -> int:
        """At start-up, before any drainer of this prefix runs: inflight items back to the outbox."""
        moved = int(
            await scripts.run(redis, "braze_recover", keys=[self.keys.braze_inflight, self.keys.braze_outbox])
        )
        if moved:
            log.warning("braze.recovered", count=moved)
        return moved

    async def depth(self, redis: aioredis.Redis) -> dict[str, int]:
        """Items waiting, in flight and set aside (for status commands and tests)."""
        pipe = redis.pipeline(transaction=False)
        pipe.llen(self.keys.braze_outbox)
        pipe.llen(self.keys.braze_inflight)
        pipe.llen(self.keys.braze_invalid)
        outbox, inflight, invalid = await pipe.execute()
        return {"outbox": int(outbox), "inflight": int(inflight), "invalid": int(invalid)}

    async def drain_once(
        self, redis: aioredis.Redis, client: BrazeClient, config: BrazeConfig
    ) -> DrainResult:
        """Send one batch of at most ``config.batch_size`` items as one request (see module docstring)."""
        raws = await self.move(redis, config.batch_size)
        if not raws:
            return DrainResult(0, 0, 0)
        items: list[dict[str, Any]] = []
        batch: list[str] = []
        bad: list[str] = []
        for raw in raws:
            try:
                items.append(check_item(orjson.loads(raw)))
                batch.append(raw)
            except ValueError:  # orjson.JSONDecodeError, or InvalidItemError from _check_item
                bad.append(raw)
        invalid = 0
        if bad:
            invalid = int(
                await scripts.run(
                    redis,
                    "braze_quarantine",
                    keys=[self.keys.braze_inflight, self.keys.braze_invalid],
                    args=bad,
                )
            )
            log.error("braze.invalid_items", count=len(bad), key=self.keys.braze_invalid)
        if not batch:
            return DrainResult(0, 0, 0, invalid)
        attributes, events = build_request(items)
        try:
            result = await client.track(attributes, events)
        except BrazeRetryable as exc:
            return await self._retry(redis, config, batch, exc, invalid)
        except BrazeSetupError as exc:
            # a wrong key or URL refuses every write: hold the outbox (in order, backoff up to
            # the cap) until the configuration is fixed, rather than lose what it holds
            held = BrazeRetryable(str(exc), status=exc.status)
            return await self._retry(redis, config, batch, held, invalid, setup=True)
        except BrazeFatal as exc:
            await self._ack(redis, batch)
            log.warning(
                "braze.dropped",
                count=len(batch),
                http_status=exc.status,
                reason=type(exc).__name__,
                attributes=len(attributes),
                events=len(events),
            )
            return DrainResult(0, 0, len(batch), invalid)
        await self._ack(redis, batch)
        log.info(
            "braze.sent",
            count=len(batch),
            attributes=len(attributes),
            events=len(events),
            http_status=result.status,
            latency_ms=round(result.latency_ms, 1),
            object_errors=len(result.errors),
            rate_limit_remaining=result.rate_limit_remaining,
        )
        if result.errors:
            log.warning("braze.object_errors", count=len(result.errors), errors=_error_summary(result.errors))
        return DrainResult(len(batch), 0, 0, invalid, rejected=len(result.errors))

    async def _ack(self, redis: aioredis.Redis, batch: list[str]) -> None:
        await scripts.run(
            redis, "braze_ack", keys=[self.keys.braze_inflight, self.keys.braze_failures], args=batch
        )

    async def _retry(
        self,
        redis: aioredis.Redis,
        config: BrazeConfig,
        batch: list[str],
        exc: BrazeRetryable,
        invalid: int,
        *,
        setup: bool = False,
    ) -> DrainResult:
        server_wait = "" if exc.retry_after is None else repr(float(exc.retry_after))
        now = time.time()
        put_back, failures, wait_text = await scripts.run(
            redis,
            "braze_retry",
            keys=[
                self.keys.braze_inflight,
                self.keys.braze_outbox,
                self.keys.braze_retry_at,
                self.keys.braze_failures,
            ],
            args=[
                repr(now),
                server_wait,
                repr(RETRY_BASE_SECONDS),
                repr(config.retry_cap_seconds),
                repr(self._rng.random()),
                _MAX_EXPONENT,
                "" if exc.status == 429 else "1",  # a 429's wait is Braze's window; else a floor
                *batch,
            ],
        )
        wait = float(_text(wait_text))
        exhausted = int(failures) >= config.max_attempts
        (log.error if exhausted or setup else log.warning)(
            "braze.retry_scheduled",
            count=len(batch),
            http_status=exc.status,
            reason=str(exc),
            failures=int(failures),
            wait_seconds=round(wait, 3),
            retry_at=round(now + wait, 3),
            server_wait=exc.retry_after is not None,
            attempts_exhausted=exhausted,
        )
        return DrainResult(0, int(put_back), 0, invalid)


def _error_summary(errors: list[Any], limit: int = 10) -> list[dict[str, Any]]:
    """Braze's per-object errors without any user data: type, array and index only."""
    out: list[dict[str, Any]] = []
    for err in errors[:limit]:
        if isinstance(err, dict):
            out.append({k: err[k] for k in ("type", "input_array", "index") if k in err})
    return out


def encode_items(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Validated, serialised items (InvalidItemError for a malformed one)."""
    return [orjson.dumps(check_item(dict(item))).decode() for item in items]


def queue_items(pipe: Any, keys: Keys, items: Sequence[Mapping[str, Any]]) -> None:
    """Add items to the outbox inside a caller's pipeline (the engine's outcome write)."""
    raws = encode_items(items)
    if raws:
        pipe.lpush(keys.braze_outbox, *raws)


class OutboxDrainer:
    """One drainer at a time per key prefix: it holds ``P:braze:lock`` while it drains and renews
    it before every request (``braze_lock.lua``: only while it still holds it, so a drainer whose
    lock ran out stops instead of sending what the next holder took back); a drainer that takes
    the lock afresh, or whose last round failed half way, first recovers what was left in flight.
    It runs in a loop of its own (:meth:`run`), not in the scheduler's round: a slow Braze does
    not hold up releases and sweeps."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, config: BrazeConfig, owner: str) -> None:
        self._redis = redis
        self._keys = keys
        self._config = config
        self._owner = owner
        self._outbox = BrazeOutbox(keys)
        self._client: BrazeClient | None = None
        self.holding = False
        self._recover = False

    async def _held(self, action: str = "renew") -> bool:
        done = await scripts.run(
            self._redis, "braze_lock", keys=[self._keys.braze_lock], args=[self._owner, action, LOCK_MS]
        )
        return bool(done)

    async def _lock(self) -> bool:
        if self.holding and await self._held():
            if self._recover:  # the last round failed between a batch's move and its ack
                await self._outbox.recover(self._redis)
                self._recover = False
            return True
        if await self._redis.set(self._keys.braze_lock, self._owner, nx=True, px=LOCK_MS):
            self.holding = True
            await self._outbox.recover(self._redis)
            self._recover = False
            return True
        self.holding = False
        return False

    async def run(self, stop: asyncio.Event, interval: float, idle: float) -> None:
        """Drain until ``stop``: a round every ``interval`` while there is something to send,
        else every ``idle``. A failed round is logged and recovered by the next one. A round
        stops between two requests once ``stop`` is set: a request cut by the shutdown's deadline
        would be sent again (its events twice) by the next drainer."""
        while not stop.is_set():
            sent = 0
            try:
                sent = await self.tick(stop)
            except Exception as exc:  # noqa: BLE001  # the drain must outlive any one bad round
                self._recover = True
                log.warning("braze.drain_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval if sent else idle)

    async def tick(self, stop: asyncio.Event | None = None) -> int:
        """Send up to REQUESTS_PER_TICK batches if this process holds (or takes) the lock (and,
        with ``stop``, until it is set)."""
        if not await self._lock():
            return 0
        if self._client is None:
            self._client = BrazeClient(self._config)
        sent = 0
        for i in range(REQUESTS_PER_TICK):
            if stop is not None and stop.is_set():
                break
            if i and not await self._held():  # ran out while the last request took long: stop
                self.holding = False
                break
            result = await self._outbox.drain_once(self._redis, self._client, self._config)
            sent += result.sent
            metrics.BRAZE_WRITES.labels("sent").inc(result.sent)
            metrics.BRAZE_WRITES.labels("dropped").inc(result.dropped)
            metrics.BRAZE_WRITES.labels("held").inc(result.retried)
            metrics.BRAZE_WRITES.labels("rejected").inc(result.rejected)
            if result.sent + result.retried + result.dropped + result.invalid == 0 or result.retried:
                break
        return sent

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self.holding:
            await self._held("release")  # only if still its own: another may hold it now
            self.holding = False

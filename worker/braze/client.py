"""Writing back to Braze: the ``/users/track`` client, its error classes and a durable outbox.

What we write (messenger-platform.md §7.4): custom attributes on the Braze user (the Messenger PSID
under ``BrazeConfig.psid_attribute``, the page id, ``messenger_reachable``) and a custom event
``messenger_delivery`` per final outcome. Writes never happen on the send path: callers
:meth:`BrazeOutbox.enqueue` items in Redis and a drainer calls :meth:`BrazeOutbox.drain_once`.

Errors (one mapping point, :func:`error_from_response`)::

    BrazeError
    ├── BrazeRetryable      429, 408, 5xx, transport errors: the batch goes back to the outbox and
    │                       nothing is sent before ``retry_after`` (Retry-After; for a 429 without it
    │                       X-RateLimit-Reset minus now; else capped exponential backoff, equal jitter)
    └── BrazeFatal          any other 4xx: Braze will never accept this request; the batch is dropped
        └── BrazeAuthError  401/403: the REST key is wrong or lacks ``users.track``. Nothing can be
                            written with it: the outbox is held (retried like a 5xx, in order, up to
                            the backoff cap) and every refusal is logged at error level, so a fixed
                            key delivers what was held

A 2xx answer with an ``errors`` array (objects Braze refused one by one) is a success; the errors
come back in :class:`TrackResult` and the outbox logs them (types and indexes only).

No ``str()``/``repr()`` here ever shows the REST API key: :class:`BrazeConfig` hides it from its repr,
exception messages are built from status codes and exception type names only.

Redis keys (``P`` = the key prefix)::

    P:braze:outbox     list    JSON items waiting; LPUSH new items, the drainer takes from the right
                               end (oldest first) and puts retried batches back on the right end, so
                               order is kept
    P:braze:inflight   list    items moved out of the outbox by a drainer and not yet acknowledged; a
                               crash between the move and the acknowledgement leaves them here and
                               :meth:`BrazeOutbox.recover` moves them back at start-up (at-least-once)
    P:braze:retry_at   string  epoch seconds; no batch is moved out of the outbox before it
    P:braze:failures   string  consecutive retryable failures (backoff exponent); deleted on any
                               answer from Braze that is not retryable
    P:braze:invalid    list    items that cannot be decoded (written by something other than
                               :meth:`BrazeOutbox.enqueue`): set aside for a human, never sent or dropped

Items (validated by :meth:`BrazeOutbox.enqueue`)::

    {"type": "attribute", "external_id": str, "attributes": {...}}
    {"type": "event", "external_id": str, "name": str, "time": iso8601, "properties": {...}}

One batch is at most ``batch_size`` items and becomes ONE request: attribute items of the same
external_id are merged into one object (later items win per attribute), each event is one object,
so the request holds at most ``batch_size`` objects combined (Braze: "Each request may batch up to
50 updates combined across attribute, event, or purchase objects").

Duplicates: attribute updates are idempotent; events are not ("Duplicate events are each ingested
as separate events"), so a crash after Braze accepted a batch and before the acknowledgement, or a
:meth:`~BrazeOutbox.recover` while another drainer of the same prefix is sending, can count an
outcome twice. Nothing is lost in either case.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import httpx
import orjson
import redis.asyncio as aioredis

from worker.logging import get_logger

__all__ = [
    "OUTCOME_EVENT",
    "BrazeAuthError",
    "BrazeClient",
    "BrazeConfig",
    "BrazeError",
    "BrazeFatal",
    "BrazeOutbox",
    "BrazeRetryable",
    "DrainResult",
    "InvalidItemError",
    "OutboxKeys",
    "SlidingWindowPacer",
    "TrackResult",
    "build_request",
    "error_from_response",
    "outcome_event_item",
    "psid_attribute_item",
    "unreachable_item",
]

log = get_logger("worker.braze")

#: The custom event recorded for every final delivery outcome.
OUTCOME_EVENT: Final = "messenger_delivery"
#: First backoff step (seconds) when Braze gives no wait; doubled per consecutive failure.
RETRY_BASE_SECONDS: Final = 1.0
#: Braze's own ceiling on objects per request (legacy contracts); ``batch_size`` may not exceed it.
MAX_OBJECTS_PER_REQUEST: Final = 75
PACER_WINDOW_SECONDS: Final = 3.0


@dataclass(frozen=True)
class BrazeConfig:
    """Everything the Braze write-back needs; built from Settings by the caller."""

    rest_url: str
    """``https://rest.<instance>.braze.com`` (no trailing path)."""
    api_key: str = field(repr=False)
    """A REST API key with the ``users.track`` permission; never shown by repr/str."""
    psid_attribute: str = "messenger_id"
    batch_size: int = 50
    max_requests_per_3s: int = 3000
    max_attempts: int = 8
    """Consecutive retryable failures after which each further retry is logged at error level
    (``braze.retry_scheduled`` with ``attempts_exhausted=true``). Braze being down is not a reason to
    lose writes: nothing is ever dropped for being retried too often."""
    retry_cap_seconds: float = 300.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.rest_url.startswith(("http://", "https://")):
            raise ValueError("BrazeConfig.rest_url must be an http(s) URL")
        if not self.api_key:
            raise ValueError("BrazeConfig.api_key is required")
        if not self.psid_attribute:
            raise ValueError("BrazeConfig.psid_attribute is required")
        if not 1 <= self.batch_size <= MAX_OBJECTS_PER_REQUEST:
            raise ValueError(f"BrazeConfig.batch_size must be 1..{MAX_OBJECTS_PER_REQUEST}")
        if self.max_requests_per_3s < 1 or self.max_attempts < 1:
            raise ValueError("BrazeConfig.max_requests_per_3s and max_attempts must be >= 1")
        if self.retry_cap_seconds <= 0 or self.timeout <= 0:
            raise ValueError("BrazeConfig.retry_cap_seconds and timeout must be > 0")

    def __repr__(self) -> str:
        return (
            f"BrazeConfig(rest_url={self.rest_url!r}, api_key='***', psid_attribute={self.psid_attribute!r}, "
            f"batch_size={self.batch_size}, max_requests_per_3s={self.max_requests_per_3s}, "
            f"max_attempts={self.max_attempts}, retry_cap_seconds={self.retry_cap_seconds}, "
            f"timeout={self.timeout})"
        )

    __str__ = __repr__


# --------------------------------------------------------------------------------------------------
# Errors


class BrazeError(Exception):
    """A failed ``/users/track`` call. ``status`` is the HTTP status, None for a transport error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BrazeRetryable(BrazeError):
    """Send the same batch again, not before ``retry_after`` seconds when Braze said so."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class BrazeFatal(BrazeError):
    """Braze refused the request for good (4xx other than 408/429)."""


class BrazeAuthError(BrazeFatal):
    """401/403: the REST API key is invalid or lacks the ``users.track`` permission."""


def _retry_after(headers: httpx.Headers, *, now: float) -> float | None:
    """``Retry-After`` as seconds (delta or HTTP date), None when absent or unparsable."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = parsed.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _reset_wait(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (UTC epoch seconds); a small value is taken as a delta."""
    raw = headers.get("x-ratelimit-reset")
    if not raw:
        return None
    try:
        reset = float(raw)
    except ValueError:
        return None
    wait = reset if reset < 1e9 else reset - now
    return wait if math.isfinite(wait) and wait > 0 else None


def error_from_response(response: httpx.Response, *, now: float | None = None) -> BrazeError:
    """The one mapping point from a non-2xx ``/users/track`` answer to an error class."""
    now = time.time() if now is None else now
    status = response.status_code
    if status == 429:
        wait = _retry_after(response.headers, now=now)
        if wait is None:
            wait = _reset_wait(response.headers, now=now)
        return BrazeRetryable(f"Braze rate limit (HTTP {status})", status=status, retry_after=wait)
    if status >= 500 or status == 408:
        wait = _retry_after(response.headers, now=now)
        return BrazeRetryable(f"Braze unavailable (HTTP {status})", status=status, retry_after=wait)
    if status in (401, 403):
        return BrazeAuthError(f"Braze refused the API key (HTTP {status})", status=status)
    return BrazeFatal(f"Braze refused the request (HTTP {status})", status=status)


# --------------------------------------------------------------------------------------------------
# Client


@dataclass(frozen=True)
class TrackResult:
    status: int
    message: str | None
    attributes_processed: int | None = None
    events_processed: int | None = None
    errors: list[Any] = field(default_factory=list)
    """Braze's non-fatal ``errors`` array (objects refused one by one), as returned."""
    rate_limit_remaining: int | None = None
    latency_ms: float = 0.0


class SlidingWindowPacer:
    """At most ``limit`` acquisitions per rolling ``window`` seconds in this process.

    Braze allows 3,000 ``/users/track`` requests per three seconds per workspace; this only keeps
    one process from bursting past it (several processes share Braze's limit, and a 429 they
    provoke together is handled by the retry path).
    """

    def __init__(
        self,
        limit: int,
        window: float = PACER_WINDOW_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._stamps: deque[float] = deque()
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> float:
        """Wait for a free slot; returns the seconds waited."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        waited = 0.0
        async with self._lock:  # FIFO: waiters are served in arrival order
            while True:
                now = self._clock()
                while self._stamps and self._stamps[0] <= now - self.window:
                    self._stamps.popleft()
                if len(self._stamps) < self.limit:
                    self._stamps.append(now)
                    return waited
                delay = self._stamps[0] + self.window - now
                waited += delay
                await self._sleep(delay)


def _opt_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class BrazeClient:
    """One per process: an ``httpx.AsyncClient`` for ``POST /users/track`` and a request pacer.

    The transport is injectable (``httpx.MockTransport`` in unit tests); the client is created on
    first use, so build this object after a fork. Close it with :meth:`aclose` (or ``async with``).
    """

    def __init__(
        self,
        config: BrazeConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        pacer: SlidingWindowPacer | None = None,
    ) -> None:
        self.config = config
        self._transport = transport
        self.pacer = pacer or SlidingWindowPacer(config.max_requests_per_3s)
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"BrazeClient(rest_url={self.config.rest_url!r})"

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.config.rest_url.rstrip("/"),
                timeout=httpx.Timeout(self.config.timeout),
                transport=self._transport,
                headers={
                    "authorization": f"Bearer {self.config.api_key}",
                    "content-type": "application/json",
                    "accept": "application/json",
                },
            )
        return self._client

    async def track(self, attributes: list[dict[str, Any]], events: list[dict[str, Any]]) -> TrackResult:
        """POST one ``/users/track`` request (the caller keeps it within Braze's object limit).

        Raises :class:`BrazeRetryable` or :class:`BrazeFatal`; see the module docstring.
        """
        body: dict[str, Any] = {}
        if attributes:
            body["attributes"] = attributes
        if events:
            body["events"] = events
        if not body:
            raise ValueError("track() needs at least one attribute or event object")
        await self.pacer.acquire()
        started = time.perf_counter()
        try:
            response = await self.client.post("/users/track", content=orjson.dumps(body))
        except httpx.TransportError as exc:
            # from None: the message names the exception type only, never the request's headers.
            raise BrazeRetryable(f"Braze unreachable: {type(exc).__name__}") from None
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code // 100 != 2:
            raise error_from_response(response)
        try:
            payload: Any = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            payload = {}
        message = payload.get("message")
        errors = payload.get("errors")
        remaining = response.headers.get("x-ratelimit-remaining")
        return TrackResult(
            status=response.status_code,
            message=message if isinstance(message, str) else None,
            attributes_processed=_opt_int(payload.get("attributes_processed")),
            events_processed=_opt_int(payload.get("events_processed")),
            errors=errors if isinstance(errors, list) else [],
            rate_limit_remaining=int(remaining) if remaining and remaining.isdigit() else None,
            latency_ms=latency_ms,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> BrazeClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


# --------------------------------------------------------------------------------------------------
# Items


def psid_attribute_item(config: BrazeConfig, external_id: str, page_id: str, psid: str) -> dict[str, Any]:
    """The Braze user ``external_id`` is reachable on Messenger at ``psid`` (page ``page_id``)."""
    return {
        "type": "attribute",
        "external_id": external_id,
        "attributes": {
            config.psid_attribute: psid,
            "messenger_page_id": page_id,
            "messenger_reachable": True,
        },
    }


def unreachable_item(external_id: str, mode: Literal["flag", "clear"], config: BrazeConfig) -> dict[str, Any]:
    """The user cannot be messaged: ``flag`` sets ``messenger_reachable`` false, ``clear`` blanks
    the PSID attribute (so a segment on "``messenger_id`` is not blank" leaves the user out)."""
    attributes: dict[str, Any]
    if mode == "flag":
        attributes = {"messenger_reachable": False}
    elif mode == "clear":
        attributes = {config.psid_attribute: None}
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {"type": "attribute", "external_id": external_id, "attributes": attributes}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome_event_item(
    external_id: str, status: str, delivery_id: str, reason: str | None, *, at: float | None = None
) -> dict[str, Any]:
    """A ``messenger_delivery`` custom event: the final status of one delivery (``at``: epoch s)."""
    properties: dict[str, Any] = {"status": status, "delivery_id": delivery_id}
    if reason is not None:
        properties["reason"] = reason
    return {
        "type": "event",
        "external_id": external_id,
        "name": OUTCOME_EVENT,
        "time": _iso(time.time() if at is None else at),
        "properties": properties,
    }


class InvalidItemError(ValueError):
    """An outbox item that is not one of the two documented shapes."""


def _check_item(item: object) -> dict[str, Any]:
    """The item if it is one of the two documented shapes, else InvalidItemError."""
    if not isinstance(item, dict):
        raise InvalidItemError("an outbox item must be an object")
    external_id = item.get("external_id")
    if not isinstance(external_id, str) or not external_id:
        raise InvalidItemError("an outbox item needs a non-empty external_id")
    kind = item.get("type")
    if kind == "attribute":
        attributes = item.get("attributes")
        if not isinstance(attributes, dict) or not attributes:
            raise InvalidItemError("an attribute item needs a non-empty attributes object")
        return item
    if kind == "event":
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidItemError("an event item needs a name")
        if not isinstance(item.get("time"), str) or not item["time"]:
            raise InvalidItemError("an event item needs an ISO 8601 time")
        if not isinstance(item.get("properties", {}), dict):
            raise InvalidItemError("event properties must be an object")
        return item
    raise InvalidItemError("an outbox item's type is 'attribute' or 'event'")


def build_request(items: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(attributes, events)`` for one request: attribute items merged per external_id (in order of
    first appearance, later values win), one event object per event item."""
    merged: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    for item in items:
        external_id = item["external_id"]
        if item["type"] == "attribute":
            target = merged.setdefault(external_id, {})
            target.update(item["attributes"])
            target["external_id"] = external_id
        else:
            event: dict[str, Any] = {"external_id": external_id, "name": item["name"], "time": item["time"]}
            if item.get("properties"):
                event["properties"] = item["properties"]
            events.append(event)
    return list(merged.values()), events


# --------------------------------------------------------------------------------------------------
# Outbox

# MOVE: take the oldest items out of the outbox into inflight, unless a retry wait is running.
# KEYS[1] outbox, KEYS[2] inflight, KEYS[3] retry_at. ARGV[1] now (epoch s), ARGV[2] limit.
# Returns the moved items, oldest first ({} while retry_at is in the future or the outbox is empty).
MOVE_LUA = """
local wait_until = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if wait_until > tonumber(ARGV[1]) then return {} end
local out = {}
for i = 1, tonumber(ARGV[2]) do
  local v = redis.call('RPOP', KEYS[1])
  if not v then break end
  redis.call('LPUSH', KEYS[2], v)
  out[#out + 1] = v
end
return out
"""

# ACK: Braze answered for good (accepted, or refused for good): forget the items.
# KEYS[1] inflight, KEYS[2] failures. ARGV: the items. Returns how many were still in inflight.
ACK_LUA = """
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
redis.call('DEL', KEYS[2])
return n
"""

# RETRY: put a batch back where it came from (the outbox's right end, oldest rightmost, so it is
# the next batch and order is kept) and schedule the next attempt.
# KEYS[1] inflight, KEYS[2] outbox, KEYS[3] retry_at, KEYS[4] failures.
# ARGV[1] now, ARGV[2] server wait in seconds ('' for none), ARGV[3] backoff base, ARGV[4] cap,
# ARGV[5] jitter fraction in [0, 1), ARGV[6] highest backoff exponent, ARGV[7..] the items, oldest first.
# Without a server wait: wait = min(cap, base * 2^min(failures - 1, max exponent)), equal jitter.
# retry_at only moves forward. An item no longer in inflight (a concurrent recover moved it back)
# is not pushed twice. Returns {items put back, failures, wait as a string}.
RETRY_LUA = """
local n = 0
for i = #ARGV, 7, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
local failures = redis.call('INCR', KEYS[4])
local wait
if ARGV[2] ~= '' then
  wait = tonumber(ARGV[2])
else
  local exponent = math.min(failures - 1, tonumber(ARGV[6]))
  local raw = math.min(tonumber(ARGV[4]), tonumber(ARGV[3]) * 2 ^ exponent)
  wait = raw / 2 + raw / 2 * tonumber(ARGV[5])
end
local at = tonumber(ARGV[1]) + wait
local current = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if at > current then redis.call('SET', KEYS[3], string.format('%.6f', at)) end
return {n, failures, string.format('%.6f', wait)}
"""

# QUARANTINE: items that cannot be decoded leave inflight for the invalid list.
# KEYS[1] inflight, KEYS[2] invalid. ARGV: the items. Returns how many moved.
QUARANTINE_LUA = """
local n = 0
for i = 1, #ARGV do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) > 0 then
    redis.call('LPUSH', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

# RECOVER: everything in inflight goes back to the outbox's right end (sent next, order kept).
# KEYS[1] inflight, KEYS[2] outbox. Returns how many moved.
RECOVER_LUA = """
local n = 0
while true do
  local v = redis.call('LPOP', KEYS[1])
  if not v then break end
  redis.call('RPUSH', KEYS[2], v)
  n = n + 1
end
return n
"""

# ENQUEUE: KEYS[1] outbox; ARGV: items, in order (LPUSH: the first one is sent first).
ENQUEUE_LUA = """
return redis.call('LPUSH', KEYS[1], unpack(ARGV))
"""

# Enough doublings to reach any sane cap from RETRY_BASE_SECONDS (2^30 s is 34 years).
_MAX_EXPONENT: Final = 30
_ENQUEUE_CHUNK: Final = 1000  # Lua's unpack() has a stack limit of a few thousand values


@dataclass(frozen=True)
class OutboxKeys:
    prefix: str

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:braze:outbox"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:braze:inflight"

    @property
    def retry_at(self) -> str:
        return f"{self.prefix}:braze:retry_at"

    @property
    def failures(self) -> str:
        return f"{self.prefix}:braze:failures"

    @property
    def invalid(self) -> str:
        return f"{self.prefix}:braze:invalid"


@dataclass(frozen=True)
class DrainResult:
    """Items (not request objects) handled by one :meth:`BrazeOutbox.drain_once`."""

    sent: int
    retried: int
    dropped: int
    invalid: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BrazeOutbox:
    """The durable queue of Braze writes under one key prefix (keys in the module docstring)."""

    def __init__(self, prefix: str, *, rng: random.Random | None = None) -> None:
        self.keys = OutboxKeys(prefix)
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not cryptography

    async def enqueue(self, redis: aioredis.Redis, items: Sequence[Mapping[str, Any]]) -> None:
        """Validate and append items (InvalidItemError for a malformed one: nothing is written then)."""
        raws = [orjson.dumps(_check_item(dict(item))).decode() for item in items]
        script = redis.register_script(ENQUEUE_LUA)
        for start in range(0, len(raws), _ENQUEUE_CHUNK):
            await script(keys=[self.keys.outbox], args=raws[start : start + _ENQUEUE_CHUNK])

    async def move(self, redis: aioredis.Redis, limit: int) -> list[str]:
        """Move up to ``limit`` of the oldest items to inflight (nothing while retry_at is ahead)."""
        script = redis.register_script(MOVE_LUA)
        moved = await script(
            keys=[self.keys.outbox, self.keys.inflight, self.keys.retry_at], args=[repr(time.time()), limit]
        )
        return [_text(raw) for raw in moved]

    async def recover(self, redis: aioredis.Redis) -> int:
        """At start-up, before any drainer of this prefix runs: inflight items back to the outbox."""
        script = redis.register_script(RECOVER_LUA)
        moved = int(await script(keys=[self.keys.inflight, self.keys.outbox]))
        if moved:
            log.warning("braze.recovered", count=moved)
        return moved

    async def depth(self, redis: aioredis.Redis) -> dict[str, int]:
        """Items waiting, in flight and set aside (for status commands and tests)."""
        pipe = redis.pipeline(transaction=False)
        pipe.llen(self.keys.outbox)
        pipe.llen(self.keys.inflight)
        pipe.llen(self.keys.invalid)
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
                items.append(_check_item(orjson.loads(raw)))
                batch.append(raw)
            except ValueError:  # orjson.JSONDecodeError, or InvalidItemError from _check_item
                bad.append(raw)
        invalid = 0
        if bad:
            script = redis.register_script(QUARANTINE_LUA)
            invalid = int(await script(keys=[self.keys.inflight, self.keys.invalid], args=bad))
            log.error("braze.invalid_items", count=len(bad), key=self.keys.invalid)
        if not batch:
            return DrainResult(0, 0, 0, invalid)
        attributes, events = build_request(items)
        try:
            result = await client.track(attributes, events)
        except BrazeRetryable as exc:
            return await self._retry(redis, config, batch, exc, invalid)
        except BrazeAuthError as exc:
            # a wrong or under-privileged key refuses every write: hold the outbox (in order,
            # backoff up to the cap) until the key is fixed, rather than lose what it holds
            held = BrazeRetryable(f"Braze refused the REST API key (HTTP {exc.status})", status=exc.status)
            return await self._retry(redis, config, batch, held, invalid, auth=True)
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
            log.warning("braze.object_errors", errors=_error_summary(result.errors))
        return DrainResult(len(batch), 0, 0, invalid)

    async def _ack(self, redis: aioredis.Redis, batch: list[str]) -> None:
        script = redis.register_script(ACK_LUA)
        await script(keys=[self.keys.inflight, self.keys.failures], args=batch)

    async def _retry(
        self,
        redis: aioredis.Redis,
        config: BrazeConfig,
        batch: list[str],
        exc: BrazeRetryable,
        invalid: int,
        *,
        auth: bool = False,
    ) -> DrainResult:
        script = redis.register_script(RETRY_LUA)
        server_wait = "" if exc.retry_after is None else repr(float(exc.retry_after))
        now = time.time()
        put_back, failures, wait_text = await script(
            keys=[self.keys.inflight, self.keys.outbox, self.keys.retry_at, self.keys.failures],
            args=[
                repr(now),
                server_wait,
                repr(RETRY_BASE_SECONDS),
                repr(config.retry_cap_seconds),
                repr(self._rng.random()),
                _MAX_EXPONENT,
                *batch,
            ],
        )
        wait = float(_text(wait_text))
        exhausted = int(failures) >= config.max_attempts
        (log.error if exhausted or auth else log.warning)(
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

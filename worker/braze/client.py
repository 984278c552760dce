"""The Braze REST client (``POST /users/track``), its configuration and its error classes.

What we write (messenger-platform.md §7.4): custom attributes on the Braze user (the Messenger PSID
under ``BrazeConfig.psid_attribute``, the page id, ``messenger_reachable``) and a custom event
``messenger_delivery`` per final outcome. Writes never happen on the send path: callers put items
in the durable outbox (:mod:`worker.braze.outbox`) and one drainer sends them.

Errors (one mapping point, :func:`error_from_response`)::

    BrazeError
    ├── BrazeRetryable      429, 408, 5xx, transport errors: the batch goes back to the outbox and
    │                       nothing is sent before ``retry_after`` (Retry-After; for a 429 without it
    │                       X-RateLimit-Reset minus now; at most SERVER_WAIT_CAP_SECONDS; else
    │                       capped exponential backoff, equal jitter)
    └── BrazeFatal          any other 4xx: Braze will never accept this request; the batch is dropped
        └── BrazeSetupError     every request would be refused the same way until an operator fixes
            │                   the configuration: the outbox is held (retried like a 5xx, in order,
            │                   up to the backoff cap) and every refusal is logged at error level, so
            │                   the fixed configuration delivers what was held
            ├── BrazeAuthError      401/403: the REST key is wrong or lacks ``users.track``
            └── BrazeEndpointError  404/405: BRAZE_REST_URL does not lead to ``/users/track`` (e.g.
                                    it was given with a path); Braze answers neither for a request

A 2xx answer with an ``errors`` array (objects Braze refused one by one) is a success; the errors
come back in :class:`TrackResult`; the outbox logs them (types and indexes only) and counts them
``bmw_braze_objects_total{result="rejected"}`` (never retried: Braze would refuse them again).

No ``str()``/``repr()`` here ever shows the REST API key: :class:`BrazeConfig` hides it from its repr,
exception messages are built from status codes and exception type names only. The key is used
without the whitespace around it (:func:`braze_config`: a Secret made from a file keeps its
newline) and refused at start when it could not be sent as a header.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import orjson

from worker.config import Settings

#: Braze's own ceiling on objects per request (legacy contracts); ``batch_size`` may not exceed it.
MAX_OBJECTS_PER_REQUEST: Final = 75
PACER_WINDOW_SECONDS: Final = 3.0
#: The longest one /users/track request may take, all phases together: with the pacer's wait it
#: stays well inside the drainer's lock (worker/braze/outbox.py LOCK_MS, renewed before each
#: request), so no other drainer takes the batch back while it is in flight.
REQUEST_DEADLINE_SECONDS: Final = 15.0
_HEADER_SAFE: Final = re.compile(r"[\x21-\x7e]+")


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
        if not _HEADER_SAFE.fullmatch(self.api_key):  # httpx would refuse every request's header
            raise ValueError("BrazeConfig.api_key may hold only visible ASCII characters (no spaces)")
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


class BrazeSetupError(BrazeFatal):
    """Braze refuses every request alike until the configuration is fixed: hold, never drop."""


class BrazeAuthError(BrazeSetupError):
    """401/403: the REST API key is invalid or lacks the ``users.track`` permission."""


class BrazeEndpointError(BrazeSetupError):
    """404/405: BRAZE_REST_URL does not lead to ``/users/track`` (Braze never answers a request
    there with either)."""


#: The longest wait an answer's Retry-After or X-RateLimit-Reset is believed for: Braze's longest
#: rate-limit window is an hour. A larger value (a proxy's, a misparsed date) would otherwise hold
#: every Braze write for as long, across restarts (the outbox's retry_at only moves forward).
SERVER_WAIT_CAP_SECONDS = 3600.0


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
    return min(SERVER_WAIT_CAP_SECONDS, max(0.0, seconds)) if math.isfinite(seconds) else None


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
    return min(SERVER_WAIT_CAP_SECONDS, wait) if math.isfinite(wait) and wait > 0 else None


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
        return BrazeAuthError(f"Braze refused the REST API key (HTTP {status})", status=status)
    if status in (404, 405):
        return BrazeEndpointError(f"no /users/track at BRAZE_REST_URL (HTTP {status})", status=status)
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
            # one deadline for the whole request (httpx's timeouts are per phase: connect, write
            # and read could add up past the drainer's lock, which another drainer would then
            # take and send this batch again)
            async with asyncio.timeout(REQUEST_DEADLINE_SECONDS):
                response = await self.client.post("/users/track", content=orjson.dumps(body))
        except httpx.TransportError as exc:
            # from None: the message names the exception type only, never the request's headers.
            raise BrazeRetryable(f"Braze unreachable: {type(exc).__name__}") from None
        except TimeoutError:
            raise BrazeRetryable(f"Braze did not answer within {REQUEST_DEADLINE_SECONDS:g} s") from None
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


def braze_config(settings: Settings) -> BrazeConfig | None:
    """The write-back's configuration, or None when BRAZE_REST_URL / BRAZE_API_KEY are not set."""
    if not settings.braze_enabled or settings.braze_rest_url is None or settings.braze_api_key is None:
        return None
    return BrazeConfig(
        rest_url=settings.braze_rest_url.rstrip("/"),
        api_key=settings.braze_api_key.get_secret_value().strip(),
        psid_attribute=settings.braze_psid_attribute,
        batch_size=settings.braze_batch_size,
    )

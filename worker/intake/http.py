"""The intake's HTTP vocabulary: the JSON response, the error shape, bounded body reads, and the
mapping from exceptions to answers that the app registers once (:func:`exception_handlers`).

Every refusal has one shape, ``{"error": {"code": ..., "message": ...}}``, with a stable machine
``code``. A route refuses by raising :class:`~worker.messenger.validation.InputError` (4xx); a Redis
failure (``RedisError`` or ``OSError``) propagates to the app's handler and becomes
``503 unavailable`` with ``Retry-After``, so no route repeats try/except around its Redis calls.
The group commit's refusals (:class:`~worker.intake.committer.CommitFailed`: ``overloaded``,
``unavailable``, ``unavailable_maybe_stored``) are 503 with ``Retry-After`` too, each with its code
(the committer logs them, once per commit or per second, not per request).
The per-route request counter (:func:`counted`) records the status those handlers answer with
(:func:`status_of`), so a refused request is counted like an answered one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.exceptions
from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from worker import metrics
from worker.fleet import Across
from worker.intake.committer import CommitFailed
from worker.logging import get_logger
from worker.messenger.validation import MAX_BODY_BYTES, InputError

log = get_logger("worker.intake")

Handler = Callable[[Request], Awaitable[Response]]
RETRY_AFTER_SECONDS = "5"
#: What the app maps to ``503 unavailable``: Redis refused or could not be reached.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.RedisError, OSError)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def across(body: dict[str, Any], read: Across[Any]) -> dict[str, Any]:
    """A listing across shards: ``unavailable_shards`` names the shards it leaves out (only
    when there are any: with one Redis, or all answering, the body is as it always was)."""
    if read.unavailable:
        body["unavailable_shards"] = list(read.unavailable)
    return body


def unavailable() -> JSONResponse:
    return error(
        503,
        "unavailable",
        "the queue is unavailable; retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def redis_full(ratio: float, headroom: float) -> JSONResponse:
    """The send route's answer while Redis is at or above REDIS_MEMORY_HEADROOM of maxmemory: a 5xx,
    so Braze retries the message later, and nothing was enqueued."""
    return error(
        503,
        "redis_full",
        f"Redis is using {ratio:.0%} of its maxmemory (REDIS_MEMORY_HEADROOM is {headroom:.0%}); retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES, seconds: float | None = None) -> bytes:
    """The request body, refused with 413 ``body_too_large`` as soon as it exceeds ``limit``
    (before reading it when Content-Length says so); with ``seconds`` (a caller not yet
    authenticated: INTAKE_BODY_SECONDS), 408 ``body_timeout`` when it takes longer to arrive."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "body_too_large", f"body is larger than {limit} bytes")
    if seconds is None:  # the authenticated routes: no timer on the hot path
        return await _chunks(request, limit)
    try:
        async with asyncio.timeout(seconds):
            return await _chunks(request, limit)
    except TimeoutError:
        raise InputError(408, "body_timeout", f"the body did not arrive within {seconds:g} s") from None


async def _chunks(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, "body_too_large", f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(exc: BaseException) -> int:
    """The status the app's exception handlers answer ``exc`` with (500: none handles it)."""
    if isinstance(exc, InputError):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, (CommitFailed, *STORE_ERRORS)):
        return 503
    return 500


def counted(route: str, handler: Handler) -> Handler:
    """``handler``, counted in ``bmw_intake_requests_total{route, status}``. The labelled children
    are looked up once per status (``labels()`` costs more than the increment); a request that
    raises is counted with the status its exception handler answers."""
    children: dict[int, Counter] = {}

    def count(status: int) -> None:
        child = children.get(status)
        if child is None:
            child = children[status] = metrics.INTAKE_REQUESTS.labels(route, str(status))
        child.inc()

    async def wrapper(request: Request) -> Response:
        try:
            response = await handler(request)
        except Exception as exc:
            count(status_of(exc))
            raise
        count(response.status_code)
        return response

    return wrapper


async def _input_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return error(exc.status, exc.code, exc.message)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.warning(
        "intake.unavailable",
        path=request.url.path,
        error=type(exc).__name__,
        request_id=request.headers.get("x-request-id"),
    )
    return unavailable()


async def _commit_failed(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CommitFailed)
    return error(503, exc.code, exc.message, headers={"Retry-After": RETRY_AFTER_SECONDS})


async def _not_found(_request: Request, _exc: Exception) -> Response:
    return error(404, "not_found", "no such route")


async def _method_not_allowed(_request: Request, _exc: Exception) -> Response:
    return error(405, "method_not_allowed", "method not allowed")


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """What the app registers: refusals, the commit's and Redis failures, unknown routes and methods."""
    return {
        InputError: _input_error,
        CommitFailed: _commit_failed,
        **dict.fromkeys(STORE_ERRORS, _store_error),
        404: _not_found,
        405: _method_not_allowed,
    }

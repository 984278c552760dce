"""The HTTP intake: a drop-in for the Send API URL in Braze's Facebook Messenger webhook template.

``create_app(settings)`` builds a small Starlette app whose lifespan owns the Redis pool. A send
request is authenticated, validated (:mod:`worker.validation`) and handed to the group committer,
which writes every request that arrived while the previous commit was in flight with one Lua call:
delivery records, pending index, idempotency keys, and the ids, appended to the queue's newest
batch or to a new batch with its Celery message (:mod:`worker.store.envelope`, ``store/lua/accept.lua``). The
answer is 202 only after that call returned, so a 202 means the message is in Redis; anything
else means nothing was enqueued.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker import gc_tuning, metrics, status
from worker.config import Settings
from worker.logging import get_logger, recipient_ref
from worker.messenger.validation import MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY, InputError, SendRequest, validate
from worker.messenger.webhook import event_to_dict, parse_events, verify_handshake, verify_signature
from worker.store import Keys, deadletters, envelope, ids, records, scripts
from worker.store import connections as redisconn

log = get_logger("worker.intake")
RETRY_AFTER_SECONDS = "5"
#: A batch this big is committed without waiting for company (BATCH_MAX caps it).
GATHER_TARGET = 16
#: A queued batch's id list outlives SWEEP_AFTER_SECONDS by this much: if its message is lost,
#: the sweeper re-enqueues the ids first (accept.lua).
BATCH_TTL_MARGIN = 60


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def unavailable() -> JSONResponse:
    return error(
        503,
        "unavailable",
        "the queue is unavailable; retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


@dataclass
class _Item:
    delivery_id: str
    request: SendRequest
    idempotency_key: str
    request_id: str
    external_id: str
    future: asyncio.Future[str]


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

    async def submit(
        self, request: SendRequest, idempotency_key: str, request_id: str, external_id: str = ""
    ) -> tuple[str, bool]:
        """Returns (delivery_id, accepted). accepted is False for a repeated Idempotency-Key."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        gap = min(now - self._last_arrival, 1.0)
        self._gap = gap if self._gap == math.inf else 0.8 * self._gap + 0.2 * gap
        self._last_arrival = now
        item = _Item(
            ids.new_delivery_id(), request, idempotency_key, request_id, external_id, loop.create_future()
        )
        self._buffer.append(item)
        if self._inflight == 0 or (  # a second commit only for a batch that needs no company
            self._inflight < self._max_inflight and len(self._buffer) >= self._target
        ):
            self._inflight += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        existing = await item.future
        return (existing, False) if existing else (item.delivery_id, True)

    async def _drain(self) -> None:
        try:
            window = self._settings.batch_window_ms / 1000
            while self._buffer:
                if window > 0 and self._gap < window:  # every batch, not only the first
                    await self._gather(window)
                batch = self._buffer[: self._settings.batch_max]
                del self._buffer[: self._settings.batch_max]
                await self._commit(batch)
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

    async def _accept(self, *, keys: list[str], args: list[Any]) -> Any:
        """One accept.lua call (a seam: tests hold it in flight)."""
        return await scripts.run(self._client, "accept", keys=keys, args=args)

    async def _commit(self, batch: list[_Item]) -> None:
        s = self._settings
        batch_id = ids.new_delivery_id()  # used only if this commit has to start a batch
        args: list[Any] = [
            repr(time.time()),
            s.idempotency_ttl,
            s.sweep_after_seconds,
            self._keys.idem_prefix,
            self._keys.delivery_prefix,
            self._keys.batch_prefix,
            envelope.celery_message(batch_id, s.queue_name, task=envelope.BATCH_TASK),
            batch_id,
            s.queue_batch_max,
            math.ceil(s.sweep_after_seconds) + BATCH_TTL_MARGIN,
            9,
        ]
        for item in batch:
            req = item.request
            args += [
                item.delivery_id,
                item.idempotency_key,
                req.page_id,
                req.psid,
                orjson.dumps(req.body),
                req.passthrough_token,
                orjson.dumps(req.fallback_tags),
                item.request_id,
                item.external_id,
            ]
        try:
            started = time.perf_counter()
            results = await self._accept(
                keys=[self._keys.pending, self._keys.queue, self._keys.open, self._keys.gather], args=args
            )
            elapsed = time.perf_counter() - started
            for _ in batch:
                metrics.INTAKE_ENQUEUE.observe(elapsed)
        except (redis.exceptions.RedisError, OSError) as exc:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        accepted: list[str] = []
        for item, result in zip(batch, results, strict=True):
            existing = result.decode() if isinstance(result, bytes) else str(result)
            if not existing:
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


def _bearer_ok(settings: Settings, request: Request) -> bool:
    if settings.intake_insecure_no_auth:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    ok = False
    for expected in settings.intake_token_values:
        ok |= hmac.compare_digest(given, expected)
    return ok


_SEND_HEADERS = frozenset(
    (b"x-request-id", b"content-type", b"idempotency-key", b"x-braze-external-id", b"x-fallback-tags")
)


def _send_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The send route's headers in one pass over the ASGI list (names arrive lower-cased; the
    first of a repeated header wins, as with Starlette's ``Headers.get``)."""
    out: dict[bytes, str] = {}
    for name, value in raw:
        if name in _SEND_HEADERS and name not in out:
            out[name] = value.decode("latin-1")
    return out


WEBHOOK_MAX_BYTES = 1024 * 1024  # Messenger batches many events per POST


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError(413, "body_too_large", f"body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, "body_too_large", f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    settings: Settings, client: aioredis.Redis | None = None, *, tune_gc: bool = False
) -> Starlette:
    """The intake ASGI app. ``client`` is injectable for tests; by default the lifespan owns one.
    ``tune_gc`` (the served process, not a test's) applies :func:`worker.gc_tuning.tune` once
    the app has started."""
    state: dict[str, Any] = {}
    keys = Keys.of(settings)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        own = client is None
        redis_client = client or make_async_redis(settings)
        state["redis"] = redis_client
        state["committer"] = GroupCommitter(redis_client, settings)
        state["sync_redis"] = redisconn.sync_client(settings, timeout=2)
        tuned = tune_gc and gc_tuning.tune(settings)
        log.info(
            "intake.started",
            queue=settings.queue_name,
            auth=not settings.intake_insecure_no_auth,
            gc_gen0_threshold=settings.gc_gen0_threshold if tuned else None,
        )
        try:
            yield
        finally:
            state["sync_redis"].close()
            if own:
                await redis_client.aclose()
            log.info("intake.stopped")

    def authed(handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            if not _bearer_ok(settings, request):
                return error(
                    401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
                )
            return await handler(request)

        return wrapper

    counters: dict[tuple[str, int], Counter] = {}  # the labelled children, looked up once each

    def counted(route: str, handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            response = await handler(request)
            key = (route, response.status_code)
            child = counters.get(key)
            if child is None:
                child = counters[key] = metrics.INTAKE_REQUESTS.labels(route, str(response.status_code))
            child.inc()
            return response

        return wrapper

    async def metrics_endpoint(_request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(status.render_metrics, settings, state.get("sync_redis"))
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def send(request: Request) -> Response:
        headers = _send_headers(request.scope["headers"])
        request_id = headers.get(b"x-request-id") or ids.new_delivery_id()
        if "json" not in headers.get(b"content-type", "").lower():
            return error(415, "unsupported_media_type", "send the body as application/json")
        idem = headers.get(b"idempotency-key", "")
        if len(idem) > MAX_IDEMPOTENCY_KEY:
            return error(
                422, "invalid_idempotency_key", f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY}"
            )
        external_id = headers.get(b"x-braze-external-id", "").strip()
        if len(external_id) > 200:
            return error(422, "invalid_external_id", "X-Braze-External-Id is longer than 200 characters")
        try:
            raw = await _read_body(request)
            send_request = validate(
                raw,
                settings,
                path_page_id=request.path_params.get("page_id"),
                query_token=request.query_params.get("access_token"),
                query_page_id=request.query_params.get("page_id"),
                fallback_header=headers.get(b"x-fallback-tags"),
            )
        except InputError as exc:
            return error(exc.status, exc.code, exc.message)
        try:
            delivery_id, accepted = await state["committer"].submit(
                send_request, idem, request_id, external_id
            )
        except (redis.exceptions.RedisError, OSError):
            log.warning("intake.unavailable", request_id=request_id)
            return unavailable()
        if not accepted:
            log.info("delivery.duplicate", delivery_id=delivery_id, request_id=request_id)
            return JSONResponse({"delivery_id": delivery_id, "status": "duplicate"}, status_code=200)
        if send_request.stripped_tag:
            log.info(
                "delivery.tag_stripped",
                delivery_id=delivery_id,
                page_id=send_request.page_id,
                recipient=recipient_ref(settings, send_request.psid),
                request_id=request_id,
                tag=send_request.stripped_tag,
            )
        return JSONResponse({"delivery_id": delivery_id, "status": "queued"}, status_code=202)

    async def delivery(request: Request) -> Response:
        delivery_id = request.path_params["delivery_id"]
        if len(delivery_id) > 64:
            return error(404, "not_found", "no such delivery")
        try:
            raw = await state["redis"].hgetall(keys.delivery(delivery_id))
            rec = records.decode(raw) if raw else None
        except (redis.exceptions.RedisError, OSError):
            return unavailable()
        if rec is None:
            return error(404, "not_found", "no such delivery")
        return JSONResponse(records.public_view(delivery_id, rec))

    def _dead_filter(params: dict[str, Any]) -> deadletters.Filter:
        def num(name: str, kind: type[int] | type[float]) -> Any:
            value = params.get(name)
            if value in (None, ""):
                return None
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise InputError(422, "invalid_filter", f"{name} must be a number") from None

        page = params.get("page_id")
        return deadletters.Filter(
            page_id=str(page) if page else None,
            error_code=num("code", int),
            older_than=num("older_than", float),
            limit=min(num("limit", int) or 1000, 10_000),
        )

    async def dead_list(request: Request) -> Response:
        try:
            flt = _dead_filter(dict(request.query_params))
            items = await deadletters.list_dead(state["redis"], settings, flt)
        except InputError as exc:
            return error(exc.status, exc.code, exc.message)
        except (redis.exceptions.RedisError, OSError):
            return unavailable()
        return JSONResponse({"dead_letters": items, "count": len(items)})

    async def dead_action(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("replay", "purge"):
            return error(404, "not_found", "no such route")
        try:
            ids, flt = _parse_dead_body(await _read_body(request))
            listed = await deadletters.select(state["redis"], settings, ids, flt)
            chosen = [i["delivery_id"] for i in listed]
            if action == "replay":
                done = await deadletters.replay(state["redis"], settings, chosen)
                return JSONResponse({"replayed": done, "count": len(done)})
            return JSONResponse({"purged": await deadletters.purge(state["redis"], settings, chosen)})
        except InputError as exc:
            return error(exc.status, exc.code, exc.message)
        except (redis.exceptions.RedisError, OSError):
            return unavailable()

    def _parse_dead_body(raw: bytes) -> tuple[list[str] | None, deadletters.Filter]:
        try:
            params: Any = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise InputError(400, "invalid_json", "body is not valid JSON") from None
        if not isinstance(params, dict):
            raise InputError(422, "invalid_body", "body must be a JSON object")
        ids = params.get("delivery_ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise InputError(422, "invalid_body", "delivery_ids must be a list of strings")
        return ids, _dead_filter(params)

    async def webhook_verify(request: Request) -> Response:
        """Messenger's subscription handshake: echo hub.challenge when the verify token matches."""
        token = settings.messenger_verify_token
        challenge = None
        if token is not None:
            challenge = verify_handshake(dict(request.query_params), token.get_secret_value())
        if challenge is None:
            return error(403, "forbidden", "verification failed")
        return Response(challenge, media_type="text/plain")

    async def webhook_events(request: Request) -> Response:
        """Messenger events: signature checked on the raw body, then queued; 200 at once."""
        if settings.app_secret is None:
            return error(503, "not_configured", "APP_SECRET is not configured")
        header = request.headers.get("x-hub-signature-256")
        if not header:
            return error(401, "missing_signature", "X-Hub-Signature-256 is required")
        try:
            raw = await _read_body(request, limit=WEBHOOK_MAX_BYTES)
        except InputError as exc:
            return error(exc.status, exc.code, exc.message)
        if not verify_signature(settings.app_secret.get_secret_value(), raw, header):
            return error(403, "bad_signature", "X-Hub-Signature-256 does not match the body")
        try:
            payload: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return error(400, "invalid_json", "body is not valid JSON")
        events = [event_to_dict(e) for e in parse_events(payload)]
        if events:
            message = envelope.celery_message(events, settings.queue_name, task=envelope.INBOUND_TASK)
            try:
                await state["redis"].lpush(settings.queue_name, message)
            except (redis.exceptions.RedisError, OSError):
                return unavailable()
        return JSONResponse({"status": "EVENT_RECEIVED", "events": len(events)})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def readyz(_request: Request) -> Response:
        try:
            await state["redis"].ping()
        except (redis.exceptions.RedisError, OSError):
            return unavailable()
        return JSONResponse({"ok": True})

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def not_found(_request: Request, _exc: Exception) -> Response:
        return error(404, "not_found", "no such route")

    async def method_not_allowed(_request: Request, _exc: Exception) -> Response:
        return error(405, "method_not_allowed", "method not allowed")

    routes = [
        Route("/me/messages", counted("send", authed(send)), methods=["POST"]),
        Route("/{version}/me/messages", counted("send", authed(send)), methods=["POST"]),
        Route("/{version}/{page_id}/messages", counted("send", authed(send)), methods=["POST"]),
        Route("/v1/deliveries/{delivery_id}", counted("delivery", authed(delivery)), methods=["GET"]),
        Route("/v1/dead-letters", counted("dead_letters", authed(dead_list)), methods=["GET"]),
        Route("/v1/dead-letters/{action}", counted("dead_letters", authed(dead_action)), methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/messenger/webhook", counted("webhook", webhook_verify), methods=["GET"]),
        Route("/messenger/webhook", counted("webhook", webhook_events), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: method_not_allowed},
    )


def make_async_redis(settings: Settings) -> aioredis.Redis:
    return redisconn.async_client(settings, max_connections=64, timeout=5)


def app_factory() -> Starlette:
    """uvicorn factory (``--workers N`` re-imports this in each process)."""
    from worker.config import load_settings
    from worker.logging import configure_logging

    settings = load_settings()
    configure_logging(settings)
    if not settings.intake_tokens and not settings.intake_insecure_no_auth:
        raise SystemExit("INTAKE_TOKENS is empty: set it, or start with --insecure-no-auth")
    return create_app(settings, tune_gc=True)


def openapi_document() -> dict[str, Any]:
    err = {"$ref": "#/components/schemas/Error"}
    send_responses = {
        "202": {
            "description": "queued",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "200": {"description": "repeated Idempotency-Key: the earlier delivery_id, nothing enqueued"},
        **{
            code: {"description": desc, "content": {"application/json": {"schema": err}}}
            for code, desc in {
                "400": "invalid JSON",
                "401": "missing or wrong bearer token",
                "413": "body over 64 KiB",
                "415": "not application/json",
                "422": "schema error",
                "503": "Redis unavailable (Retry-After)",
            }.items()
        },
    }
    send_op = {
        "summary": "Queue one Send API message (the body Braze's Messenger webhook template posts)",
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "maxLength": 255},
            },
            {"name": "X-Fallback-Tags", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "page_id", "in": "query", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SendBody"}}},
        },
        "responses": send_responses,
    }
    version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    page_param = {"name": "page_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "braze-messenger-worker intake", "version": "0.1.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
                "Accepted": {
                    "type": "object",
                    "properties": {"delivery_id": {"type": "string"}, "status": {"type": "string"}},
                },
                "SendBody": {
                    "type": "object",
                    "required": ["recipient"],
                    "properties": {
                        "recipient": {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": {"type": "string", "minLength": 1}},
                        },
                        "messaging_type": {"type": "string", "enum": ["RESPONSE", "UPDATE", "MESSAGE_TAG"]},
                        "tag": {"type": "string"},
                        "message": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string", "maxLength": 1999},
                                "attachment": {"type": "object"},
                                "quick_replies": {"type": "array", "maxItems": 13},
                            },
                        },
                        "sender_action": {"type": "string", "enum": ["typing_on", "typing_off", "mark_seen"]},
                    },
                },
                "Delivery": {
                    "type": "object",
                    "properties": {
                        "delivery_id": {"type": "string"},
                        "status": {
                            "type": "string",
                            "enum": ["queued", "retrying", "sent", "failed", "expired", "dead"],
                        },
                        "attempts": {"type": "integer"},
                        "page_id": {"type": "string"},
                        "created_at": {"type": "number"},
                        "updated_at": {"type": "number"},
                        "message_id": {"type": "string"},
                        "error": {"type": "object"},
                    },
                },
            },
        },
        "paths": {
            "/me/messages": {"post": {**send_op, "operationId": "send_me"}},
            "/{version}/me/messages": {
                "post": {
                    **send_op,
                    "operationId": "send_version_me",
                    "parameters": [version_param, *send_op["parameters"]],
                }
            },
            "/{version}/{page_id}/messages": {
                "post": {
                    **send_op,
                    "operationId": "send_page",
                    "parameters": [version_param, page_param, *send_op["parameters"]],
                }
            },
            "/v1/deliveries/{delivery_id}": {
                "get": {
                    "operationId": "get_delivery",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "the delivery",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Delivery"}}
                            },
                        },
                        "401": {"description": "unauthorized"},
                        "404": {"description": "unknown delivery"},
                    },
                }
            },
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Redis reachable"},
                        "503": {"description": "Redis down"},
                    },
                }
            },
        },
    }

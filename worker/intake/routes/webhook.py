"""Messenger's webhook: ``GET /messenger/webhook`` (the subscription handshake) and
``POST /messenger/webhook`` (events), parsed by :mod:`worker.messenger.webhook`.

Not behind the bearer check: Meta signs each POST with ``X-Hub-Signature-256`` (HMAC-SHA256 of
the raw body with ``APP_SECRET``), checked before the body is parsed. Valid events are queued as
one Celery message for the workers (:mod:`worker.delivery.inbound`) and answered 200 at once, as
Meta expects: ``messaging`` items (:mod:`worker.messenger.webhook`) and template status changes
(``changes`` of the ``message_template_status_update`` field, :mod:`worker.templates.events`).

With REDIS_SHARDS each page's events go to its shard's queue, every shard's at once and each
within ``INTAKE_DEADLINE_SECONDS``. When one shard does not take its part (down, or stalled),
the others' parts are queued all the same, and the answer is ``503 unavailable``: Meta sends the
whole POST again later, and what was queued twice is applied once (message ids are recorded,
windows only move later, receipts mark a time once: :mod:`worker.delivery.inbound`). So a shard
that is down delays only its own pages' events.

What an unsigned caller can cost us is bounded, in this order, before any byte of the body is
read: no ``X-Hub-Signature-256`` is 401 ``missing_signature``; a header that is not
``sha256=<64 hex>`` (it could never match) is 403 ``bad_signature``; a declared Content-Length
over :data:`WEBHOOK_MAX_BYTES` is 413 ``body_too_large``. Then at most that many bytes are read
(a body without Content-Length, or lying about it, is cut off at the limit), the HMAC is checked
over them, and only then is the JSON parsed. The body must arrive within ``INTAKE_BODY_SECONDS``
(408 ``body_timeout``): a sender trickling it cannot hold a connection for long.

Without ``APP_SECRET`` a POST is ``503 not_configured``: the intake cannot tell Meta's requests
from anyone's, and the fault is the server's configuration, not the request. A 5xx is a failed
delivery for Meta, which retries it for a while, so events are not acknowledged and lost while
the operator sets the secret (a 4xx would blame the sender; a 200 would drop them). Without
``MESSENGER_VERIFY_TOKEN`` the handshake is refused (403 ``forbidden``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker.config import Settings
from worker.intake import state
from worker.intake.http import JSONResponse, counted, error, read_body
from worker.intake.notices import Throttled
from worker.messenger.errors import InputError
from worker.messenger.webhook import (
    event_to_dict,
    parse_events,
    signature_well_formed,
    verify_handshake,
    verify_signature,
)
from worker.store import envelope
from worker.templates import TEMPLATE_STATUS, parse_status_events

WEBHOOK_MAX_BYTES = 1024 * 1024  # Messenger batches many events per POST
#: A moved page's events not taken by its old shard (worker/intake/moved.py).
COPY_FAILED = Throttled("intake.moved_events_not_copied", every=60.0)


async def webhook_verify(request: Request) -> Response:
    """Messenger's subscription handshake: echo hub.challenge when the verify token matches."""
    token = state.of(request).settings.messenger_verify_token
    challenge = None
    if token is not None:
        challenge = verify_handshake(request.query_params, token.get_secret_value())
    if challenge is None:
        raise InputError(403, "forbidden", "verification failed")
    return Response(challenge, media_type="text/plain")


async def webhook_events(request: Request) -> Response:
    """Messenger events: signature checked on the raw body, then queued; 200 at once."""
    intake = state.of(request)
    settings = intake.settings
    if settings.app_secret is None:
        return error(503, "not_configured", "APP_SECRET is not configured")
    header = request.headers.get("x-hub-signature-256")
    if not header:
        raise InputError(401, "missing_signature", "X-Hub-Signature-256 is required")
    if not signature_well_formed(header):  # refused before the body is read
        raise InputError(403, "bad_signature", "X-Hub-Signature-256 is not sha256=<64 hex digits>")
    raw = await read_body(request, limit=WEBHOOK_MAX_BYTES, seconds=settings.intake_body_seconds)
    if not verify_signature(settings.app_secret.get_secret_value(), raw, header):
        raise InputError(403, "bad_signature", "X-Hub-Signature-256 does not match the body")
    try:
        payload: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InputError(400, "invalid_json", "body is not valid JSON") from None
    events = [event_to_dict(e) for e in parse_events(payload)]
    events += [e.as_dict() for e in parse_status_events(payload)]  # message_template_status_update
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for event in events:  # each page's events go to its shard's workers
        by_shard.setdefault(intake.for_page(str(event.get("page_id", ""))).shard.index, []).append(event)
    seconds = settings.intake_deadline_seconds
    if intake.moved.watched:
        await _copies_for_old_shards(intake, by_shard, seconds)
    pushed = await asyncio.gather(
        *(
            _queue(intake.links[index].redis, settings.queue_name, part, seconds)
            for index, part in by_shard.items()
        ),
        return_exceptions=True,
    )
    failed = next((r for r in pushed if isinstance(r, BaseException)), None)
    if failed is not None:
        if isinstance(failed, (OSError, redis.exceptions.RedisError)):  # TimeoutError is an OSError
            raise redis.exceptions.ConnectionError("a shard did not take its events") from failed
        raise failed
    return JSONResponse({"status": "EVENT_RECEIVED", "events": len(events)})


async def _copies_for_old_shards(
    intake: state.IntakeState, by_shard: dict[int, list[dict[str, Any]]], seconds: float
) -> None:
    """A page `shards move` brought whose old shard still sends for it (before `--finish`): its
    users' events are applied there too, marked ``local`` (windows, parked messages, receipts
    of the messages that shard sent; no Braze link, which the page's own shard makes). Best
    effort: an old shard that does not take them does not fail the POST."""
    copies: dict[int, list[dict[str, Any]]] = {}
    for index, part in by_shard.items():
        for event in part:
            if event.get("kind") == TEMPLATE_STATUS:
                continue
            source = await intake.moved.sending_source(index, str(event.get("page_id", "")))
            if source is not None:
                copies.setdefault(source, []).append({**event, "local": True})
    queue = intake.settings.queue_name
    done = await asyncio.gather(
        *(_queue(intake.links[source].redis, queue, part, seconds) for source, part in copies.items()),
        return_exceptions=True,
    )
    for source, result in zip(copies, done, strict=True):
        if isinstance(result, BaseException):
            COPY_FAILED.note(shard=source, error=type(result).__name__, events=len(copies[source]))


async def _queue(client: aioredis.Redis, queue: str, events: list[dict[str, Any]], seconds: float) -> None:
    """One shard's part of a POST, as one Celery message on its queue, within ``seconds``."""
    message = envelope.celery_message(events, queue, task=envelope.INBOUND_TASK)
    async with asyncio.timeout(seconds):
        await client.lpush(queue, message)  # type: ignore[misc]  # redis-py: Awaitable[T] | T


def routes(_settings: Settings) -> list[Route]:
    return [
        Route("/messenger/webhook", counted("webhook", webhook_verify), methods=["GET"]),
        Route("/messenger/webhook", counted("webhook", webhook_events), methods=["POST"]),
    ]

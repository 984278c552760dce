"""The send route: a drop-in for the Send API URL in Braze's Facebook Messenger webhook template.

``POST /me/messages``, ``/{version}/me/messages`` and ``/{version}/{page_id}/messages``: the
request is authenticated (an intake token: :mod:`worker.intake.auth`), its headers and body
validated (:mod:`worker.messenger.validation`), its page resolved from the URL and checked
against the pages the token may send as,
admitted by Redis memory (:mod:`worker.intake.guard`) and handed to the group committer. The
answer is 202 only after the commit that carries it returned, so a 202 means the message is in
Redis; 200 means a repeated ``Idempotency-Key`` (nothing enqueued); anything else means nothing
was enqueued.

Every answer comes within ``INTAKE_DEADLINE_SECONDS`` whatever Redis does: the memory gate's
Redis read and the commit share that deadline, and the committer sheds load beyond
``INTAKE_MAX_PENDING`` (:mod:`worker.intake.committer`: 503 ``overloaded``, ``unavailable``,
``unavailable_maybe_stored``). A request without ``Idempotency-Key`` is accepted, with a warning
(``intake.no_idempotency_key``, at most once a minute with a count): a Braze retry of it after a
``unavailable_maybe_stored`` cannot be recognised and may be sent twice. A caller's
``X-Request-Id`` is stored and logged with its delivery; a request without one gets no id of its
own: the delivery id names it in every line (a made-up id would cost 33 bytes in every record and
outcome, and name nothing the caller knows).

This is the benchmarked hot path: headers are read in one pass over the ASGI list, the memory
check is one attribute read (the guard is asked once a second), the request counter's children
are cached, and there is no middleware.
"""

from __future__ import annotations

import asyncio
import re

import redis.exceptions
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from worker import metrics
from worker.config import Settings
from worker.intake import state
from worker.intake.auth import Role, authed, caller_of
from worker.intake.committer import CANCELLED, DUPLICATE, NotStored
from worker.intake.guard import MemoryGate
from worker.intake.http import JSONResponse, counted, read_body, redis_full
from worker.intake.notices import Throttled
from worker.logging import get_logger, recipient_ref
from worker.messenger.validation import MAX_IDEMPOTENCY_KEY, InputError, SendHeaders, SendRequest, validate
from worker.states import State
from worker.store import idempotency
from worker.store.records import ATTRIBUTION
from worker.templates import check_request

log = get_logger("worker.intake")
MAX_EXTERNAL_ID = 200
#: The longest X-Request-Id stored and logged with a delivery (printable ASCII only).
MAX_REQUEST_ID = 200
#: The media types of a JSON body: application/json or application/<something>+json (RFC 6838
#: names), parameters (``; charset=utf-8``) aside; compared in lower case.
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\+)?json")
_QUEUED = State.QUEUED.value  # the status a 202 reports
#: Requests without Idempotency-Key: one warning line a minute at most, with their count.
NO_KEY_WARNING = Throttled("intake.no_idempotency_key", every=60.0)
#: Removed tags skipped from X-Fallback-Tags / FALLBACK_TAGS (DEPRECATED_TAG_POLICY=strip).
TAG_SKIPPED = Throttled("intake.fallback_tag_skipped", every=60.0)

_SEND_HEADERS = frozenset(
    (
        b"x-request-id",
        b"content-type",
        b"idempotency-key",
        b"x-braze-external-id",
        b"x-fallback-tags",
        b"x-utility-template",
        b"x-utility-parameters",
        b"x-braze-campaign-id",
        b"x-braze-canvas-id",
        b"x-braze-canvas-step-id",
        b"x-braze-message-variation-id",
        b"x-braze-send-id",
    )
)
#: The attribution headers, in records.ATTRIBUTION's order (campaign_id, canvas_id, ...).
ATTRIBUTION_HEADERS = (
    "X-Braze-Campaign-Id",
    "X-Braze-Canvas-Id",
    "X-Braze-Canvas-Step-Id",
    "X-Braze-Message-Variation-Id",
    "X-Braze-Send-Id",
)
_ATTRIBUTION_KEYS = tuple(name.lower().encode() for name in ATTRIBUTION_HEADERS)
#: An attribution value: Braze's ids are 36-character UUIDs or 24-hex ids; this leaves room.
MAX_ATTRIBUTION = 128
_NO_ATTRIBUTION = ("",) * len(ATTRIBUTION_HEADERS)


def _send_headers(raw: list[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """The send route's headers in one pass over the ASGI list (names arrive lower-cased; the
    first of a repeated header wins, as with Starlette's ``Headers.get``)."""
    out: dict[bytes, str] = {}
    for name, value in raw:
        if name in _SEND_HEADERS and name not in out:
            out[name] = value.decode("latin-1")
    return out


def _utf8(value: str | None, name: str, code: str = "invalid_utility_parameters") -> str | None:
    """A header Braze fills with profile data, as the UTF-8 it was sent in (ASGI hands over
    bytes; ``_send_headers`` decoded them as latin-1); InputError 422 ``code`` if it is not."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(422, code, f"{name} is not UTF-8") from None


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type names a JSON body: exactly ``application/json`` or
    ``application/<something>+json``, in any case, with or without parameters."""
    if content_type == "application/json":  # Braze's webhook template: the usual case
        return True
    return _JSON_MEDIA_TYPE.fullmatch(content_type.partition(";")[0].strip().lower()) is not None


def request_id_of(headers: dict[bytes, str]) -> str | None:
    """The caller's X-Request-Id (None without one; none is made up: the module docstring). It is
    stored and logged with the delivery: longer than MAX_REQUEST_ID or anything but printable
    ASCII is 422 ``invalid_request_id``."""
    value = headers.get(b"x-request-id") or None
    if value is None:
        return None
    if len(value) > MAX_REQUEST_ID:
        raise InputError(
            422, "invalid_request_id", f"X-Request-Id is longer than {MAX_REQUEST_ID} characters"
        )
    if not (value.isascii() and value.isprintable()):  # " " to "~"
        raise InputError(422, "invalid_request_id", "X-Request-Id must be printable ASCII")
    return value


def external_id_of(headers: dict[bytes, str]) -> str:
    """X-Braze-External-Id as the UTF-8 Braze sent ("" without one); over MAX_EXTERNAL_ID
    characters or not UTF-8 is 422 ``invalid_external_id``."""
    raw = headers.get(b"x-braze-external-id")
    external_id = (_utf8(raw, "X-Braze-External-Id", "invalid_external_id") or "").strip()
    if len(external_id) > MAX_EXTERNAL_ID:
        raise InputError(
            422, "invalid_external_id", f"X-Braze-External-Id is longer than {MAX_EXTERNAL_ID} characters"
        )
    return external_id


def attribution(headers: dict[bytes, str]) -> tuple[str, ...]:
    """The X-Braze-* ids (campaign, Canvas, step, variation, send), "" for those absent or empty
    (Liquid renders ``{{campaign.${api_id}}}`` empty in a Canvas). A value longer than
    MAX_ATTRIBUTION or with anything but printable ASCII without spaces is 422
    ``invalid_attribution``: it names Redis keys and log fields."""
    if not any(key in headers for key in _ATTRIBUTION_KEYS):
        return _NO_ATTRIBUTION
    out = []
    for key, name in zip(_ATTRIBUTION_KEYS, ATTRIBUTION_HEADERS, strict=True):
        value = headers.get(key, "").strip()
        if len(value) > MAX_ATTRIBUTION:
            raise InputError(
                422, "invalid_attribution", f"{name} is longer than {MAX_ATTRIBUTION} characters"
            )
        if value in (".", ".."):  # a path's dot segment: the console could not name it in a URL
            raise InputError(422, "invalid_attribution", f"{name} may not be '.' or '..'")
        if value and not all("!" <= c <= "~" for c in value):
            raise InputError(
                422, "invalid_attribution", f"{name} must be printable ASCII without spaces (a Braze id)"
            )
        out.append(value)
    return tuple(out)


async def _check_template(intake: state.IntakeState, link: state.ShardLink, request: SendRequest) -> None:
    """A utility template the page's catalogue knows it cannot send is refused (422, naming
    it) before Braze's send is lost downstream; one Redis read per template per few seconds."""
    if request.utility is None:
        return
    try:
        async with asyncio.timeout(intake.settings.intake_deadline_seconds):
            await check_request(link.redis, link.keys, request.page_id, request.utility, intake.templates)
    except (TimeoutError, redis.exceptions.RedisError):
        raise NotStored("Redis did not answer in time; nothing was stored: retry later") from None


async def _accepted_before_move(
    intake: state.IntakeState, link: state.ShardLink, page_id: str, caller: str, idem: str
) -> str | None:
    """For a page `shards move` brought to ``link``'s shard (worker/intake/moved.py): the id
    the shard it came from gave a request with this Idempotency-Key, if it remembers one."""
    source = await intake.moved.source(link.shard.index, page_id)
    if source is None:
        return None
    return await intake.moved.remembered(source, idempotency.scoped(caller, page_id, idem))


async def _admit(memory: MemoryGate, seconds: float) -> tuple[float, bool]:
    """The memory gate's slow path (an INFO read at most once a second) within the request's
    deadline: (the deadline, loop time; whether Redis has room). A stalled read is answered 503
    ``unavailable`` at the deadline; nothing was submitted."""
    deadline = asyncio.get_running_loop().time() + seconds
    try:
        async with asyncio.timeout_at(deadline):
            return deadline, await memory.admit()
    except TimeoutError:
        raise NotStored("Redis did not answer in time; nothing was stored: retry later") from None


async def send(request: Request) -> Response:
    intake = state.of(request)
    settings = intake.settings
    headers = _send_headers(request.scope["headers"])
    if not is_json_media_type(headers.get(b"content-type", "")):
        raise InputError(415, "unsupported_media_type", "send the body as application/json")
    request_id = request_id_of(headers)
    idem = headers.get(b"idempotency-key", "")
    if len(idem) > MAX_IDEMPOTENCY_KEY:
        raise InputError(
            422, "invalid_idempotency_key", f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY}"
        )
    external_id = external_id_of(headers)
    braze_ids = attribution(headers)
    send_request = validate(
        await read_body(request),
        settings,
        path_page_id=request.path_params.get("page_id"),
        query_token=request.query_params.get("access_token"),
        query_page_id=request.query_params.get("page_id"),
        pages=intake.pages,
        headers=SendHeaders(
            fallback_tags=headers.get(b"x-fallback-tags"),
            utility_template=headers.get(b"x-utility-template"),
            utility_parameters=_utf8(headers.get(b"x-utility-parameters"), "X-Utility-Parameters"),
        ),
    )
    if send_request.skipped_tags:
        TAG_SKIPPED.note(tags=list(send_request.skipped_tags), page_id=send_request.page_id)
    caller = caller_of(request)
    if not caller.may_send_as(send_request.page_id):
        raise InputError(
            403, "page_not_allowed", f"this intake token may not send as page {send_request.page_id}"
        )
    link = intake.for_page(send_request.page_id)
    await _check_template(intake, link, send_request)
    if idem and intake.moved.watched:  # a page `shards move` brought: its old shard may know the key
        earlier = await _accepted_before_move(intake, link, send_request.page_id, caller.id, idem)
        if earlier is not None:
            return _duplicate(earlier, request_id, moved=True)
    memory = link.memory
    deadline = None
    if not memory.open:  # a bad request still gets its 4xx above
        deadline, room = await _admit(memory, settings.intake_deadline_seconds)
        if not room:
            return redis_full(memory.guard.ratio, memory.guard.headroom)
    if not idem:
        NO_KEY_WARNING.note(request_id=request_id, page_id=send_request.page_id)
    delivery_id, status = await link.committer.submit_with_status(
        send_request,
        idem,
        request_id or "",
        external_id,
        caller=caller.id,
        deadline=deadline,
        attribution=braze_ids,
    )
    if status == DUPLICATE:
        return _duplicate(delivery_id, request_id)
    if status == CANCELLED:  # its campaign is stopped: 2xx, so Braze does not retry it
        metrics.count_cancels(settings, [(send_request.page_id, "campaign_stopped", 1)])
        return _cancelled(delivery_id, send_request.page_id, request_id, braze_ids)
    if send_request.stripped_tag:
        log.info(
            "delivery.tag_stripped",
            delivery_id=delivery_id,
            page_id=send_request.page_id,
            recipient=recipient_ref(settings, send_request.psid),
            request_id=request_id,
            tag=send_request.stripped_tag,
        )
    return JSONResponse({"delivery_id": delivery_id, "status": _QUEUED}, status_code=202)


def _duplicate(delivery_id: str, request_id: str | None, *, moved: bool = False) -> Response:
    """200 for a repeated Idempotency-Key, with the first request's delivery id (``moved``: the
    shard a moved page came from remembered it)."""
    extra = {"moved": True} if moved else {}
    log.info("delivery.duplicate", delivery_id=delivery_id, request_id=request_id, **extra)
    return JSONResponse({"delivery_id": delivery_id, "status": DUPLICATE}, status_code=200)


def _cancelled(
    delivery_id: str, page_id: str, request_id: str | None, braze_ids: tuple[str, ...]
) -> Response:
    log.info(
        "delivery.cancelled",
        delivery_id=delivery_id,
        page_id=page_id,
        request_id=request_id,
        reason="campaign_stopped",
        **_attribution_fields(braze_ids),
    )
    return JSONResponse({"delivery_id": delivery_id, "status": CANCELLED}, status_code=200)


def _attribution_fields(values: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in zip(ATTRIBUTION, values, strict=True) if value}


def routes(settings: Settings) -> list[Route]:
    endpoint = counted("send", authed(settings, send, Role.SEND))
    return [
        Route("/me/messages", endpoint, methods=["POST"]),
        Route("/{version}/me/messages", endpoint, methods=["POST"]),
        Route("/{version}/{page_id}/messages", endpoint, methods=["POST"]),
    ]

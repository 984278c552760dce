"""The Graph error hierarchy, with one mapping point: :func:`classify` (and :func:`from_response`).

Graph reports throttling, temporary failures and permanent refusals alike with HTTP 400, so we
classify on ``error.code`` / ``error_subcode`` (messenger-platform.md §3.2, §3.3, §4.4), never on
the status, unless the answer carries no Graph error (a gateway's or a proxy's answer)::

    GraphError                      any failed Send API call (carries code, subcode, fbtrace_id)
    ├── TransientError              retry with capped, jittered backoff (burns an attempt)
    │   │                           1200, 2, 1 (any subcode not named here), 2018321,
    │   │                           100/2018008, 100/2018294, HTTP 408 without a Graph error,
    │   │                           transport errors before the request was sent
    │   └── AmbiguousError          the request may have been delivered: read timeout after sending,
    │       │                       connection lost mid-answer, HTTP 5xx without a Graph error (a
    │       │                       gateway's 502/504), a 2xx without Graph's success body.
    │       │                       Retried (at-least-once), counted as a possible duplicate
    │       └── UnconfirmedSendError  1/1357046 ("Received invalid JSON reply": the message was
    │                               most likely sent, §3.3 "DO NOT blind-retry"): not retried, a
    │                               dead letter at once (replayable), counted as a possible duplicate
    ├── RateLimitedError            4, 17, 32, 341, 613 (not 613/2018338), 80001, 80006, 4/2018022
    │                               and HTTP 429 without a Graph error:
    │                               wait (Business-Use-Case header's estimate, else backoff), retry
    │                               without burning an attempt; the page pauses
    ├── WindowClosedError           10/2018278, 10/2534022, 10/2018065: the 24-hour window is closed
    ├── TagRejectedError            100 naming the tag ("Invalid tag", deprecated tag, "Messaging
    │                               type should be MESSAGE_TAG"): try the next fallback tag
    ├── RecipientUnreachableError   551, 551/1545041, 200/1545041, 10/2018108, 100/2018001: failed,
    │                               never retried, PSID suppressed
    ├── TagAbuseError               613/2018338: failed, tagged sends to this PSID suppressed 24 h
    ├── TemplateRejectedError       a utility template Graph will not send: 132000 (parameters),
    │   │                           132001 (no such name/language, or not approved), 132005,
    │   │                           132007, 132012 (parameter format), 132016 (disabled),
    │   │                           100/2018416 (a button type utility templates refuse): the
    │   │                           next route, else failed
    │   └── TemplatePausedError     132015: paused by Meta (it unpauses after hours): the next
    │                               route, else the message waits (TEMPLATE_PAUSE_RETRY_SECONDS)
    ├── PagePausedError             the page cannot send at all; its messages wait
    │   ├── TokenInvalidError       190 and 102 (OAuth session, §3.2) with any subcode
    │   └── PageRestrictedError     368, 10/1893063 (long pause)
    └── PermanentError              everything else (bad request, permissions, attachments, 4/2018354 …);
                                    ``is_transient: true`` makes an unknown code transient, never a row

Transport problems become ``TransientError`` when the request surely did not reach Graph (connect
errors, pool timeouts) and ``AmbiguousError`` when it may have (write/read timeouts, a connection
dropped before the answer). ``classify`` is the only place that looks at codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from worker.logging import REDACTOR


@dataclass(frozen=True)
class ErrorInfo:
    code: int | None
    subcode: int | None
    message: str
    fbtrace_id: str | None = None
    http_status: int | None = None
    is_transient: bool | None = None


class GraphError(Exception):
    """A failed Send API call. ``reason`` is the short machine name recorded in outcomes."""

    reason = "graph_error"

    def __init__(self, info: ErrorInfo, *, retry_after: float | None = None) -> None:
        super().__init__(f"Graph error {info.code}/{info.subcode}: {info.message}")
        self.info = info
        self.retry_after = retry_after


class TransientError(GraphError):
    reason = "transient"


class AmbiguousError(TransientError):
    reason = "ambiguous"


class UnconfirmedSendError(AmbiguousError):
    """Graph's error says the message most likely went out (1/1357046, messenger-platform.md
    §3.3: "DO NOT blind-retry"): a retry would send it again, and the next answer is likely the
    same. Its ``reason`` stays ``ambiguous`` (logged and counted as a possible duplicate)."""


class RateLimitedError(GraphError):
    reason = "rate_limited"


class WindowClosedError(GraphError):
    reason = "outside_window"


class TagRejectedError(GraphError):
    reason = "tag_rejected"


class RecipientUnreachableError(GraphError):
    reason = "unreachable"


class TagAbuseError(GraphError):
    reason = "tag_abuse"


class TemplateRejectedError(GraphError):
    """A utility template Graph will not send. The 1320xx codes are those of Meta's template
    system as the WhatsApp Cloud API documents them; Messenger's own list is not published
    (messenger-platform.md §2.5), so this mapping is an assumption the sandbox shares."""

    reason = "template_rejected"


class TemplatePausedError(TemplateRejectedError):
    reason = "template_paused"


class PagePausedError(GraphError):
    reason = "page_paused"


class TokenInvalidError(PagePausedError):
    reason = "token_invalid"


class PageRestrictedError(PagePausedError):
    reason = "page_restricted"


class PermanentError(GraphError):
    reason = "permanent"


# One table, one lookup: (code, subcode) first, then (code, None). Rows of §3.3.
_BY_CODE: dict[tuple[int, int | None], type[GraphError]] = {
    (1200, None): TransientError,
    (2, None): TransientError,
    (1, 99): TransientError,
    (1, None): TransientError,
    (2018321, None): TransientError,
    (100, 2018008): TransientError,
    (100, 2018294): TransientError,
    (1, 1357046): UnconfirmedSendError,
    (2, 2018344): PermanentError,
    (4, None): RateLimitedError,
    (4, 2018022): RateLimitedError,
    (4, 2018354): PermanentError,
    (17, None): RateLimitedError,
    (32, None): RateLimitedError,
    (613, None): RateLimitedError,
    (613, 2018338): TagAbuseError,
    (613, 1893016): PermanentError,
    (9, 2018352): PermanentError,
    (2022, None): PermanentError,
    (2018300, None): PermanentError,
    (10303, None): PermanentError,
    (9000001, None): PermanentError,
    (80001, None): RateLimitedError,
    (80006, None): RateLimitedError,
    (10, 2018278): WindowClosedError,
    (10, 2534022): WindowClosedError,
    (10, 2018065): WindowClosedError,
    (10, 2018108): RecipientUnreachableError,
    (10, 1893063): PageRestrictedError,
    (551, None): RecipientUnreachableError,
    (551, 1545041): RecipientUnreachableError,
    (200, 1545041): RecipientUnreachableError,
    (100, 2018001): RecipientUnreachableError,
    (190, None): TokenInvalidError,
    (102, None): TokenInvalidError,  # §3.2: OAuth session: token expired/revoked/invalid
    (341, None): RateLimitedError,  # §3.2: application limit reached: wait and retry
    (368, None): PageRestrictedError,
    (132000, None): TemplateRejectedError,
    (132001, None): TemplateRejectedError,
    (132005, None): TemplateRejectedError,
    (132007, None): TemplateRejectedError,
    (132012, None): TemplateRejectedError,
    (132015, None): TemplatePausedError,
    (132016, None): TemplateRejectedError,
    (100, 2018416): TemplateRejectedError,
}
# Codes whose every subcode maps like the bare code (190, 102: 458-467, 492 ...; throttling
# subcodes; 1 and 2, Graph's "temporary issue, wait and retry" (§3.2), but for their rows above).
_ANY_SUBCODE = frozenset(
    {1, 2, 1200, 102, 190, 4, 17, 32, 341, 80001, 80006, 368, 551, 132000, 132001, 132012, 132015, 132016}
)
# Answers without a Graph error body, by HTTP status (a proxy or Graph's front end answered).
_BY_STATUS: dict[int, type[GraphError]] = {408: TransientError, 429: RateLimitedError}
_TAG_MARKERS = ("invalid tag", "messaging type should be message_tag", "tag is required", "message tag")


def _code_class(info: ErrorInfo) -> type[GraphError]:
    code, subcode = info.code, info.subcode
    if code is None:
        status = info.http_status or 0
        if status >= 500 or 200 <= status < 300:  # Graph (or its front end) may have sent it
            return AmbiguousError
        return _BY_STATUS.get(status, PermanentError)
    found = _BY_CODE.get((code, subcode))
    if found is not None:
        return found
    if code == 613 and subcode != 2018338:
        return RateLimitedError
    if code in _ANY_SUBCODE:
        return _BY_CODE[(code, None)]
    return PermanentError


def classify(info: ErrorInfo, *, tag: str | None = None) -> type[GraphError]:
    """The one mapping point from a Graph error to its class (see the module docstring)."""
    if info.code == 100 and info.subcode is None:
        text = info.message.lower()
        if any(marker in text for marker in _TAG_MARKERS) or (
            tag is not None and "invalid parameter" in text
        ):
            return TagRejectedError
    cls = _code_class(info)
    # Graph's is_transient rescues a code the table does not know; a row of §3.3 that says
    # fail or drop (2/2018344, 4/2018354, 613/1893016 ...) wins over it.
    if (
        cls is PermanentError
        and info.is_transient
        and info.code not in (100, 10, 200, 190, 102)
        and (info.code, info.subcode) not in _BY_CODE
    ):
        return TransientError
    return cls


def parse_buc_wait(headers: httpx.Headers) -> float | None:
    """Seconds until access is regained, from ``X-Business-Use-Case-Usage`` (minutes in Graph's header).

    Returns the longest estimate across all business objects and types, or None when the header
    is absent, unparsable or gives no estimate.
    """
    raw = headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    best: float | None = None
    if isinstance(data, dict):
        for entries in data.values():
            if not isinstance(entries, list):
                continue
            for entry in entries:
                if isinstance(entry, dict):
                    minutes = entry.get("estimated_time_to_regain_access")
                    if isinstance(minutes, int | float) and not isinstance(minutes, bool) and minutes >= 0:
                        best = max(best or 0.0, float(minutes) * 60.0)
    return best


def parse_buc_usage(headers: httpx.Headers) -> int | None:
    """The highest usage percentage reported by ``X-Business-Use-Case-Usage`` (for adaptive pacing)."""
    raw = headers.get("x-business-use-case-usage")
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    top: int | None = None
    if isinstance(data, dict):
        for entries in data.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    for key in ("call_count", "total_cputime", "total_time"):
                        value = entry.get(key)
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            top = max(top or 0, int(value))
    return top


def scrubbed(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (Graph's words) without a secret: the call's own token and proof (``secrets``),
    then every secret the process knows and any ``access_token=``/``appsecret_proof=`` value.
    Graph echoes what it was sent ("Malformed access token EAAB..."), and its message is stored in
    the delivery's record, shown by the API, the CLI and the console, and logged."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return REDACTOR.scrub(text)


def _error_info(response: httpx.Response, content: bytes, secrets: Iterable[str] = ()) -> ErrorInfo:
    secrets = tuple(secrets)  # it may be lazy (GraphClient's), and it is read twice
    try:
        payload: Any = orjson.loads(content)
    except orjson.JSONDecodeError:
        payload = None
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return ErrorInfo(
            code=None,
            subcode=None,
            message=f"HTTP {response.status_code} without a Graph error body",
            http_status=response.status_code,
        )
    code = err.get("code")
    subcode = err.get("error_subcode")
    trace = err.get("fbtrace_id")
    transient = err.get("is_transient")
    return ErrorInfo(
        code=code if isinstance(code, int) else None,
        subcode=subcode if isinstance(subcode, int) else None,
        # scrubbed before it is cut: a cut could leave a secret's head that no longer matches
        message=scrubbed(str(err.get("message", "")), secrets)[:500],
        fbtrace_id=scrubbed(trace, secrets)[:64] if isinstance(trace, str) else None,
        http_status=response.status_code,
        is_transient=transient if isinstance(transient, bool) else None,
    )


def from_response(
    response: httpx.Response,
    *,
    tag: str | None = None,
    content: bytes | None = None,
    secrets: Iterable[str] = (),
) -> GraphError:
    """Build the typed error for a non-2xx Send API answer (``content``: its body, if the
    response was not read through httpx; ``secrets``: what the call carried, its page token and
    proof, masked in Graph's message like every configured secret)."""
    info = _error_info(response, response.content if content is None else content, secrets)
    cls = classify(info, tag=tag)
    retry_after = parse_buc_wait(response.headers) if issubclass(cls, RateLimitedError) else None
    return cls(info, retry_after=retry_after)


def from_success(
    response: httpx.Response,
    content: bytes,
    payload: object,
    *,
    tag: str | None,
    message: bool,
    secrets: Iterable[str] = (),
) -> GraphError | None:
    """The error hidden in a 2xx answer, or None when it is Graph's success answer.

    Graph's success body names the message sent (``message_id``, messenger-platform.md §1.4; a
    sender action's names only the recipient). A 2xx carrying Graph's error object is that
    error; a 2xx to a ``message`` send without a ``message_id`` (an HTML page, ``{}``, a proxy's
    "OK") did not come from Graph's send path: whether it went out is unknown, so it is
    :class:`AmbiguousError` (retried, counted as a possible duplicate), never recorded as sent.
    """
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return from_response(response, tag=tag, content=content, secrets=secrets)
    message_id = payload.get("message_id") if isinstance(payload, dict) else None
    if not message or (isinstance(message_id, str) and message_id):
        return None
    info = ErrorInfo(
        code=None,
        subcode=None,
        message=f"HTTP {response.status_code} without a message_id: not Graph's success answer",
        http_status=response.status_code,
    )
    return AmbiguousError(info)


def _maybe_sent(exc: httpx.TransportError) -> bool:
    """Could the request have reached Graph? Decided on the aiohttp cause when there is one.

    httpx-aiohttp maps every ``aiohttp.ClientConnectionError`` (a server disconnect mid-answer
    included) to ``httpx.ConnectTimeout``, which would hide possible duplicates; its original
    exception is kept as ``__cause__``.
    """
    import aiohttp

    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return False
    if isinstance(
        cause, aiohttp.ClientConnectionError | aiohttp.ServerTimeoutError | aiohttp.ClientPayloadError
    ):
        return True
    return isinstance(
        exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.RemoteProtocolError | httpx.ReadError
    )


def from_transport(exc: httpx.TransportError) -> GraphError:
    """Transport failures: ambiguous if the request may have reached Graph, else transient."""
    sent_maybe = _maybe_sent(exc)
    info = ErrorInfo(code=None, subcode=None, message=f"transport error: {type(exc).__name__}")
    return AmbiguousError(info) if sent_maybe else TransientError(info)

"""The Send API endpoint, ``POST /{version}/{page_id}/messages``: the hot path, as raw ASGI.

Owns reading the request, deciding the answer in the documented order (body parsing, token,
page-wide faults, validation (a UTILITY send's: :mod:`worker.sandbox.templates`), reserved PSIDs), the added latency, recording the call, and writing
the answer (with ``facebook-api-version`` and, on throttling, ``X-Business-Use-Case-Usage``), or,
for a ``drop-`` PSID, closing the connection without one (:class:`ConnectionDropped` where that
cannot be done). The path is deliberately lean: no Starlette request or response objects, orjson,
no regular expressions, no per-request logging. The benchmarks measure it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import orjson
from starlette.types import Receive, Scope, Send

from worker.sandbox.config import EXPIRED_TOKEN_PREFIX, SANDBOX_TOKEN_PREFIX
from worker.sandbox.errors import Answer, Refusal, graph_error, invalid
from worker.sandbox.rules import apply_rule
from worker.sandbox.state import Call, SandboxState
from worker.sandbox.templates import UTILITY, check_utility_send
from worker.sandbox.validation import (
    BadJSON,
    is_form_encoded,
    parse_body,
    request_fields,
    token_and_proof,
    validate,
)

#: The scope key under which the app keeps the server's own ``send`` (for ``drop-``).
RAW_SEND_KEY: Final = "sandbox.raw_send"


class ConnectionDropped(Exception):
    """Raised for a ``drop-`` PSID when the ASGI server's connection cannot be closed directly."""


class SendEndpoint:
    """The raw ASGI endpoint of ``/{version}/{page_id}/messages`` (``page_id`` may be ``me``)."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.time()
        raw = await _read_body(receive)
        if raw is None:
            return  # the client went away before sending its body
        content_type = b""
        auth: bytes | None = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
            elif key == b"authorization":
                auth = value
        params: dict[str, str] = scope["path_params"]
        path_page = params.get("page_id", "me")
        state = self.state

        call = Call(arrived, None if path_page == "me" else path_page)
        try:
            answer, extra_ms = self._answer(
                scope, raw, content_type=content_type, auth=auth, path_page=path_page, call=call
            )
        except Refusal as refusal:
            answer, extra_ms = refusal.answer, 0.0

        delay = state.latency_ms + extra_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000.0)
        state.record(call, answer)
        if state.receipts is not None and answer.message_id is not None and call.psid and call.page_id:
            state.receipts.sent(call.page_id, call.psid, answer.message_id)

        if answer.drop:
            await _drop_connection(scope)
            return
        headers = [
            (b"content-type", answer.content_type),
            (b"content-length", str(len(answer.body)).encode()),
            (b"facebook-api-version", params.get("version", "").encode("latin-1", "replace")),
        ]
        if answer.buc is not None:
            headers.append((b"x-business-use-case-usage", answer.buc))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    def _answer(
        self,
        scope: Scope,
        raw: bytes,
        *,
        content_type: bytes,
        auth: bytes | None,
        path_page: str,
        call: Call,
    ) -> tuple[Answer, float]:
        """The answer to a send call and its extra delay in ms (or :class:`Refusal`); fills ``call``."""
        is_form = is_form_encoded(raw, content_type)
        try:
            body = parse_body(raw, is_form)
        except BadJSON:
            call.appsecret_proof = token_and_proof(scope, {}, auth)[1]
            raise Refusal(invalid("Invalid JSON")) from None
        call.raw = raw
        call.is_form = is_form
        call.psid, call.messaging_type, call.tag = psid, mtype, tag = request_fields(body)
        token, call.appsecret_proof = token_and_proof(scope, body, auth)
        page_id = self._page_for(token, path_page)
        call.page_id = page_id

        state = self.state
        if state.faults:
            state.raise_page_fault(page_id)
        if mtype == UTILITY:  # the one comparison the regular path pays for utility sends
            check_utility_send(state.templates, body, page_id, tag)
        else:
            validate(body, mtype, tag)
        extra_ms = apply_rule(state, psid, mtype, page_id) if psid is not None and "-" in psid else 0.0

        recipient = body.get("recipient")
        by_id = isinstance(recipient, dict) and recipient.get("id") is not None
        if not by_id and isinstance(recipient, dict) and recipient.get("phone_number"):
            _match_phone(str(recipient["phone_number"]))
        recipient_id = psid if psid is not None else ""
        if body.get("message") is None:  # a sender action
            return Answer(200, orjson.dumps({"recipient_id": recipient_id})), extra_ms
        message_id = state.next_message_id()
        # "the Send API does not include recipient_id ... for recipient.user_ref or recipient.phone_number"
        if (
            by_id
            or not isinstance(recipient, dict)
            or not (recipient.get("user_ref") or recipient.get("phone_number"))
        ):
            payload = orjson.dumps({"recipient_id": recipient_id, "message_id": message_id})
        else:
            payload = orjson.dumps({"message_id": message_id})
        return Answer(200, payload, message_id=message_id), extra_ms

    def _page_for(self, token: str | None, path_page: str) -> str:
        """The page the token belongs to (explicit map, then ``sandbox-token-<page_id>``)."""
        if token is None:
            message = "An active access token must be used to query information about the current user."
            raise Refusal(graph_error(190, None, message))
        page_id = self.state.tokens.get(token)
        if page_id is None and token.startswith(SANDBOX_TOKEN_PREFIX):
            if token.startswith(EXPIRED_TOKEN_PREFIX):
                raise Refusal(graph_error(190, 463))
            page_id = token[len(SANDBOX_TOKEN_PREFIX) :] or None
        if page_id is None:
            raise Refusal(graph_error(190, None, "Invalid OAuth access token - Cannot parse access token"))
        if path_page not in ("me", page_id):
            raise Refusal(graph_error(190, None, "(#190) The access token does not belong to this page"))
        return page_id


def _match_phone(number: str) -> None:
    """Customer Matching: a number ending in 0000 matches nobody (Graph's 100/2018001)."""
    digits = "".join(c for c in number if c.isdigit())
    if len(digits) < 5:
        raise Refusal(
            graph_error(100, None, "(#100) Param recipient[phone_number] must be a valid phone number")
        )
    if digits.endswith("0000"):
        raise Refusal(graph_error(100, 2018001, "(#100) No matching user found"))


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drop_connection(scope: Scope) -> None:
    """Close the client connection without writing any HTTP response.

    uvicorn hands the application its ``RequestResponseCycle.send`` bound method, whose owner holds
    the connection's transport. Closing it makes uvicorn see a disconnect (``connection_lost``), after
    which it neither writes a 500 nor logs anything. Other servers get :class:`ConnectionDropped`.
    """
    raw_send = scope.get(RAW_SEND_KEY)
    cycle = getattr(raw_send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    abort = getattr(transport, "abort", None)
    if not callable(abort):
        raise ConnectionDropped("sandbox: drop- PSID (connection closed without a response)")
    abort()
    for _ in range(20):  # connection_lost runs on a following loop iteration
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0)

"""The control endpoints, ``/__sandbox/*`` (JSON, no auth), and ``GET /healthz``.

Owns what tests and benchmarks use to look at and steer a running sandbox: the call record
(``GET``/``DELETE /__sandbox/calls``), the counters (``GET /__sandbox/stats``), the latency
(``/__sandbox/config``), page-wide faults (``/__sandbox/faults``) and the 24 h window of
``outside-`` PSIDs (``POST /__sandbox/window``). These are ordinary Starlette endpoints: they are
not on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.requests import Request
from starlette.responses import Response

from worker.sandbox.replies import BadRequest, bad, json_payload, json_response
from worker.sandbox.rules import parse_digits
from worker.sandbox.state import PageFault, SandboxState


def _optional_int(payload: Mapping[str, object], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer or null")
    return value


def _parse_fault(payload: Mapping[str, object]) -> tuple[str, PageFault]:
    page_id = payload.get("page_id")
    if isinstance(page_id, bool) or not isinstance(page_id, str | int) or page_id == "":
        raise BadRequest("page_id is required")
    code = _optional_int(payload, "code")
    if code is None:
        raise BadRequest("code is required")
    count = _optional_int(payload, "count")
    if count is not None and count < 1:
        raise BadRequest("count must be >= 1 or null")
    regain = _optional_int(payload, "regain_minutes") or 0
    return str(page_id), PageFault(code, _optional_int(payload, "subcode"), count, regain)


class Control:
    """The ``/__sandbox/*`` endpoints of one app, over its :class:`SandboxState`."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    async def calls(self, request: Request) -> Response:
        params = request.query_params
        page_id = params.get("page_id") or None
        psid = params.get("psid") or None
        since_text = params.get("since")
        since = 0
        if since_text:
            parsed = parse_digits(since_text)
            if parsed is None:
                return bad("since must be a non-negative integer")
            since = parsed
        selected = [
            call.as_json()
            for call in self.state.calls_kept()
            if call.seq > since
            and (page_id is None or call.page_id == page_id)
            and (psid is None or call.psid == psid)
        ]
        return json_response({"calls": selected})

    async def clear_calls(self, request: Request) -> Response:
        self.state.clear()
        return json_response({"ok": True})

    async def stats(self, request: Request) -> Response:
        state = self.state
        return json_response({"calls": state.calls, "sent": state.sent, "errors": state.errors})

    async def get_config(self, request: Request) -> Response:
        return json_response({"latency_ms": self.state.latency_ms})

    async def set_config(self, request: Request) -> Response:
        try:
            payload = await json_payload(request)
        except BadRequest as exc:
            return bad(str(exc))
        if "latency_ms" in payload:
            latency = payload["latency_ms"]
            if isinstance(latency, bool) or not isinstance(latency, int | float) or latency < 0:
                return bad("latency_ms must be a non-negative number")
            self.state.latency_ms = float(latency)
        return json_response({"latency_ms": self.state.latency_ms})

    async def get_faults(self, request: Request) -> Response:
        faults = [fault.as_json(page_id) for page_id, fault in self.state.faults.items()]
        return json_response({"faults": faults})

    async def add_fault(self, request: Request) -> Response:
        try:
            page_id, fault = _parse_fault(await json_payload(request))
        except BadRequest as exc:
            return bad(str(exc))
        self.state.faults[page_id] = fault
        return json_response(fault.as_json(page_id))

    async def open_window(self, request: Request) -> Response:
        """``{"psid": "outside-x", "open": true}``: the user re-engaged (or, false, left again)."""
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return json_response({"error": "invalid JSON"}, 400)
        psid = body.get("psid") if isinstance(body, dict) else None
        if not isinstance(psid, str):
            return json_response({"error": "psid is required"}, 400)
        if body.get("open", True):
            self.state.opened.add(psid)
        else:
            self.state.opened.discard(psid)
        return json_response({"psid": psid, "open": psid in self.state.opened})

    async def clear_faults(self, request: Request) -> Response:
        page_id = request.query_params.get("page_id")
        if page_id:
            self.state.faults.pop(page_id, None)
        else:
            self.state.faults.clear()
        return json_response({"ok": True})


async def healthz(request: Request) -> Response:
    """``GET /healthz``: ``{"ok": true}``."""
    return json_response({"ok": True})

"""A local double of Braze's REST ``POST /users/track`` (messenger-platform.md §7.4).

A real HTTP server (a Starlette app, served by uvicorn) for integration tests and local runs of the
Braze write-back (``worker.braze``): it checks the key, validates the body's shape, records every
request and injects faults on demand. It does not store users.

``POST /users/track``
    * ``Authorization: Bearer <BrazeDoubleConfig.api_key>``, else 401
      ``{"message": "Invalid API key: ..."}`` (the key itself is never echoed or recorded).
    * Queued faults (``/__braze/faults``) come next: the request fails with the fault's status;
      it carries ``Retry-After`` when the fault has ``retry_after`` (a 429 also ``X-RateLimit-*``).
    * With ``enforce_rate_limit`` more than ``rate_limit`` requests in the current window give 429
      with ``X-RateLimit-Reset`` only (no ``Retry-After``), as Braze does.
    * Body: a JSON object whose ``attributes``, ``events`` and ``purchases`` (each optional) are
      arrays of objects; every object has a non-empty string ``external_id``; events also have a
      ``name`` and a ``time``; at least one and at most ``max_objects`` (75) objects in total.
      Otherwise 400 ``{"message": "...", "errors": ["..."]}``.
    * Success: 201 ``{"message": "success", "attributes_processed": n, "events_processed": m}``
      (a count for each array sent) with ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
      ``X-RateLimit-Reset`` (epoch seconds at the end of the current window).

Control endpoints (JSON, no auth)
    * ``GET /__braze/requests`` -> ``{"requests": [{"seq", "at", "status", "authorized", "body"}]}``,
      every ``/users/track`` request, oldest first (``body`` is the parsed JSON or null);
      ``DELETE /__braze/requests`` clears them.
    * ``POST /__braze/faults {"status": 429|500|502|503|504|400|401, "count": n, "retry_after": s|null}``:
      the next ``n`` requests fail with that status (faults queue up in order);
      ``GET /__braze/faults`` lists them; ``DELETE /__braze/faults`` clears them.
    * ``GET /healthz`` -> ``{"ok": true}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["DEFAULT_API_KEY", "BrazeDoubleConfig", "create_app", "main", "serve"]

DEFAULT_API_KEY: Final = "braze-double-rest-key"
_ARRAYS: Final = ("attributes", "events", "purchases")
_FAULT_STATUSES: Final = frozenset({400, 401, 403, 408, 413, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class BrazeDoubleConfig:
    api_key: str = field(default=DEFAULT_API_KEY, repr=False)
    max_objects: int = 75
    """Braze's ceiling on objects per request, combined across the arrays."""
    rate_limit: int = 3000
    """Requests per ``rate_window`` seconds reported in ``X-RateLimit-*`` (and enforced, if asked)."""
    rate_window: float = 3.0
    enforce_rate_limit: bool = False
    latency_ms: float = 0.0
    record_limit: int = 100_000


@dataclass
class _Fault:
    status: int
    remaining: int
    retry_after: float | None

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.remaining, "retry_after": self.retry_after}


@dataclass
class _State:
    config: BrazeDoubleConfig
    records: deque[dict[str, Any]] = field(default_factory=deque)
    faults: deque[_Fault] = field(default_factory=deque)
    seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    window_start: float = 0.0
    window_count: int = 0

    def record(self, status: int, authorized: bool, body: object) -> None:
        self.records.append(
            {
                "seq": next(self.seq),
                "at": time.time(),
                "status": status,
                "authorized": authorized,
                "body": body,
            }
        )
        while len(self.records) > self.config.record_limit:
            self.records.popleft()

    def count_request(self, now: float) -> tuple[int, float]:
        """Count one request in the current fixed window; returns (remaining, reset epoch)."""
        window = self.config.rate_window
        start = math.floor(now / window) * window
        if start != self.window_start:
            self.window_start, self.window_count = start, 0
        self.window_count += 1
        return self.config.rate_limit - self.window_count, start + window

    def next_fault(self) -> _Fault | None:
        if not self.faults:
            return None
        fault = self.faults[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            self.faults.popleft()
        return fault


def _json(payload: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers)


def _validate(body: object, max_objects: int) -> tuple[dict[str, int], list[str]]:
    """Objects processed per array, and the errors (empty when the body is acceptable)."""
    if not isinstance(body, dict):
        return {}, ["body must be a JSON object"]
    counts: dict[str, int] = {}
    errors: list[str] = []
    for name in _ARRAYS:
        if name not in body:
            continue
        array = body[name]
        if not isinstance(array, list):
            errors.append(f"'{name}' must be an array")
            continue
        counts[name] = len(array)
        for index, obj in enumerate(array):
            if not isinstance(obj, dict):
                errors.append(f"{name}[{index}] must be an object")
                continue
            external_id = obj.get("external_id")
            if not isinstance(external_id, str) or not external_id:
                errors.append(f"{name}[{index}] has no external_id")
            if name == "events":
                for key in ("name", "time"):
                    if not isinstance(obj.get(key), str) or not obj[key]:
                        errors.append(f"events[{index}] has no {key}")
    total = sum(counts.values())
    if not errors and total == 0:
        errors.append("no attributes, events or purchases to process")
    if total > max_objects:
        errors.append(f"{total} objects in one request; at most {max_objects} are allowed")
    return counts, errors


class _Api:
    def __init__(self, state: _State) -> None:
        self.state = state

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.state.config.api_key

    async def track(self, request: Request) -> Response:
        state, config = self.state, self.state.config
        raw = await request.body()
        try:
            body: object = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        now = time.time()
        remaining, reset = state.count_request(now)
        headers = {
            "X-RateLimit-Limit": str(config.rate_limit),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(math.ceil(reset)),
        }
        if not self._authorized(request):
            state.record(401, False, body)
            return _json({"message": "Invalid API key: the key is missing or unknown"}, 401)
        fault = state.next_fault()
        if fault is not None:
            state.record(fault.status, True, body)
            if fault.retry_after is not None:  # a 429's, or a 5xx's (a proxy's, a load balancer's)
                headers["Retry-After"] = _seconds_text(fault.retry_after)
            return _json({"message": f"Injected fault (HTTP {fault.status})"}, fault.status, headers)
        if config.enforce_rate_limit and remaining < 0:
            state.record(429, True, body)
            return _json({"message": "API rate limit exceeded"}, 429, headers)
        if body is None:
            state.record(400, True, None)
            return _json({"message": "Invalid JSON", "errors": ["the body is not valid JSON"]}, 400, headers)
        counts, errors = _validate(body, config.max_objects)
        if errors:
            state.record(400, True, body)
            return _json({"message": "Bad request", "errors": errors}, 400, headers)
        state.record(201, True, body)
        answer: dict[str, Any] = {"message": "success"}
        for name, count in counts.items():
            answer[f"{name}_processed"] = count
        return _json(answer, 201, headers)

    async def requests(self, request: Request) -> Response:
        return _json({"requests": list(self.state.records)})

    async def clear_requests(self, request: Request) -> Response:
        self.state.records.clear()
        return _json({"ok": True})

    async def faults(self, request: Request) -> Response:
        return _json({"faults": [fault.as_json() for fault in self.state.faults]})

    async def add_fault(self, request: Request) -> Response:
        try:
            payload: object = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        status, count, retry_after = (
            payload.get("status"),
            payload.get("count", 1),
            payload.get("retry_after"),
        )
        if isinstance(status, bool) or not isinstance(status, int) or status not in _FAULT_STATUSES:
            return _json({"error": f"status must be one of {sorted(_FAULT_STATUSES)}"}, 400)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return _json({"error": "count must be an integer >= 1"}, 400)
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or retry_after < 0
        ):
            return _json({"error": "retry_after must be a number >= 0 or null"}, 400)
        fault = _Fault(status, count, None if retry_after is None else float(retry_after))
        self.state.faults.append(fault)
        return _json(fault.as_json())

    async def clear_faults(self, request: Request) -> Response:
        self.state.faults.clear()
        return _json({"ok": True})


def _seconds_text(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.3f}"


async def _healthz(request: Request) -> Response:
    return _json({"ok": True})


def create_app(config: BrazeDoubleConfig | None = None) -> Starlette:
    """The double as an ASGI app (each app has its own record and faults)."""
    api = _Api(_State(config or BrazeDoubleConfig()))
    routes = [
        Route("/users/track", api.track, methods=["POST"]),
        Route("/__braze/requests", api.requests, methods=["GET"]),
        Route("/__braze/requests", api.clear_requests, methods=["DELETE"]),
        Route("/__braze/faults", api.faults, methods=["GET"]),
        Route("/__braze/faults", api.add_fault, methods=["POST"]),
        Route("/__braze/faults", api.clear_faults, methods=["DELETE"]),
        Route("/healthz", _healthz, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.braze = api.state
    return app


def serve(host: str = "127.0.0.1", port: int = 8082, config: BrazeDoubleConfig | None = None) -> None:
    """Run the double with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.Server(
        uvicorn.Config(
            create_app(config), host=host, port=port, access_log=False, log_level="warning", lifespan="off"
        )
    ).run()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m worker.braze_double [--host H] [--port P] [--api-key K] [--latency-ms MS]``."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.braze_double", description="A local double of Braze POST /users/track."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8082)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    serve(args.host, args.port, BrazeDoubleConfig(api_key=args.api_key, latency_ms=args.latency_ms))


if __name__ == "__main__":
    main()

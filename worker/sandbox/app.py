"""The sandbox as an ASGI app, and the server that runs it.

Owns :func:`create_app` (the route table: the send endpoint, the template listing, ``/healthz``
and the control endpoints, all over one :class:`~worker.sandbox.state.SandboxState`) and :func:`serve` (uvicorn,
no access log, as ``messenger-worker sandbox`` and ``up --sandbox`` run it). The app is Starlette,
remembering the server's own ``send`` in the scope so that a ``drop-`` PSID can close the
connection. What the sandbox does is documented in the package docstring (:mod:`worker.sandbox`).
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from worker.sandbox.config import SandboxConfig
from worker.sandbox.control import Control, healthz
from worker.sandbox.send import RAW_SEND_KEY, SendEndpoint
from worker.sandbox.state import SandboxState
from worker.sandbox.templates import TemplateControl, TemplateListing

__all__ = ["create_app", "serve"]


class _SandboxApp(Starlette):
    """Starlette, remembering the server's own ``send`` so that ``drop-`` can close the connection."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[RAW_SEND_KEY] = send
        await super().__call__(scope, receive, send)


def create_app(config: SandboxConfig | None = None) -> Starlette:
    """The sandbox as an ASGI app (each app has its own record, counters and faults)."""
    state = SandboxState(config or SandboxConfig())
    control = Control(state)
    send = SendEndpoint(state)
    templates = TemplateControl(state.templates)
    routes = [
        Route("/{version}/{page_id}/messages", send, methods=["POST"]),
        Route(
            "/{version}/{page_id}/message_templates",
            TemplateListing(state.templates, send._page_for).endpoint,
            methods=["GET"],
        ),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/__sandbox/calls", control.calls, methods=["GET"]),
        Route("/__sandbox/calls", control.clear_calls, methods=["DELETE"]),
        Route("/__sandbox/stats", control.stats, methods=["GET"]),
        Route("/__sandbox/config", control.get_config, methods=["GET"]),
        Route("/__sandbox/config", control.set_config, methods=["POST"]),
        Route("/__sandbox/faults", control.get_faults, methods=["GET"]),
        Route("/__sandbox/faults", control.add_fault, methods=["POST"]),
        Route("/__sandbox/faults", control.clear_faults, methods=["DELETE"]),
        Route("/__sandbox/window", control.open_window, methods=["POST"]),
        Route("/__sandbox/templates", templates.get, methods=["GET"]),
        Route("/__sandbox/templates", templates.post, methods=["POST"]),
        Route("/__sandbox/templates", templates.delete, methods=["DELETE"]),
    ]
    app = _SandboxApp(routes=routes)
    app.state.sandbox = state
    return app


def serve(
    host: str = "127.0.0.1",
    port: int = 8081,
    latency_ms: float = 0.0,
    tokens: Mapping[str, str] | None = None,
    receipts: Mapping[str, object] | None = None,
) -> None:
    """Run the sandbox with uvicorn until SIGINT/SIGTERM (``receipts``: SandboxConfig's
    receipts_* fields, without the prefix: webhook, secret, share, delay_ms)."""
    import uvicorn

    extra = {f"receipts_{k}": v for k, v in (receipts or {}).items() if v is not None}
    config = SandboxConfig(latency_ms=latency_ms, tokens=dict(tokens or {}), **extra)  # type: ignore[arg-type]
    app = create_app(config)
    # What start-up allocated (modules, Starlette, uvicorn) is kept out of every later collection.
    # A full collection walked it all, and every kept call, and stalled the sandbox: 22 ms with
    # 10,000 calls kept, 5-8 ms now (SandboxState.records). Arrivals queued behind a stall were
    # stamped at once, and the pacing benchmark's peak second read up to 265 where the workers
    # had sent 253 (docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="auto",
            http="auto",
            access_log=False,
            log_level="warning",
        )
    ).run()

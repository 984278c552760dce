"""A worker process's own HTTP listener: ``/metrics``, ``/healthz`` and ``/readyz`` on METRICS_PORT.

What each answers (JSON ``{"ok": bool, "checks": {name: {"ok": bool, ...}}}``, 200 or 503):

* ``/healthz`` — liveness: the process is not wedged. The engine's event loop runs a no-op within
  ``LOOP_TIMEOUT_S`` and the Celery consumer has not stopped. It does not depend on Redis: a Redis
  blip must not make Kubernetes restart every healthy worker.
* ``/readyz`` — readiness: the worker is doing its job now. Liveness, plus the consumer is
  connected to the broker, the loop's lag is under ``READY_MAX_LAG_S`` and the scheduler's last
  successful round is recent (``scheduler_stale_after``). A worker cut off from Redis is not ready.

The probes are callables registered by the entry point (:mod:`worker.celery`), so this module
knows nothing of Celery or the engine. Several workers on one host: when METRICS_PORT is taken,
the next free port of the ``PORT_SPAN`` that follow is used and logged (``worker.metrics_port``);
``worker.ready`` shows the port. In a container or a pod there is one worker, on METRICS_PORT.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.logging import get_logger

log = get_logger("worker.health")

#: How long the engine's loop may take to run a no-op before the process counts as wedged.
LOOP_TIMEOUT_S = 5.0
#: Loop lag above which the worker is alive but not ready.
READY_MAX_LAG_S = 1.0
#: Ports tried after METRICS_PORT when it is taken (another worker on the same host).
PORT_SPAN = 16
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A probe answers (ok, details); it must return quickly and never raise for a failed check.
Probe = Callable[[], tuple[bool, dict[str, Any]]]


@dataclass
class Health:
    """The probes of one worker process, by name, split into liveness and readiness."""

    live: dict[str, Probe] = field(default_factory=dict)
    ready: dict[str, Probe] = field(default_factory=dict)

    def report(self, *, readiness: bool) -> tuple[bool, dict[str, Any]]:
        probes = {**self.live, **(self.ready if readiness else {})}
        checks: dict[str, Any] = {}
        for name, probe in probes.items():
            try:
                ok, details = probe()
            except Exception as exc:  # noqa: BLE001  # a probe that breaks is a failed check, not a 500
                ok, details = False, {"error": type(exc).__name__}
            checks[name] = {"ok": ok, **details}
        return all(c["ok"] for c in checks.values()), checks


def _handler(health: Health, metrics: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics(), METRICS_MEDIA_TYPE)
            elif path in ("/healthz", "/readyz"):
                ok, checks = health.report(readiness=path == "/readyz")
                body = json.dumps({"ok": ok, "checks": checks}).encode()
                self._send(200 if ok else 503, body, "application/json")
            else:
                self.send_error(404)

        def _send(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", media_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # http.server's name
            return None  # probes and scrapes every few seconds: no access log

    return Handler


class HealthServer:
    """The listener; :meth:`start` binds METRICS_PORT or the next free port after it."""

    def __init__(self, health: Health, metrics: Callable[[], bytes], host: str = "0.0.0.0") -> None:  # noqa: S104  # probed and scraped from outside the pod
        self._handler = _handler(health, metrics)
        self._host = host
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def start(self, port: int) -> int | None:
        """Serve on ``port`` or one of the PORT_SPAN after it; the port, or None when all are taken."""
        for candidate in range(port, min(port + PORT_SPAN, 65_535) + 1):
            try:
                self._server = ThreadingHTTPServer((self._host, candidate), self._handler)
            except OSError:
                continue
            self._server.daemon_threads = True
            threading.Thread(target=self._server.serve_forever, name="health", daemon=True).start()
            if candidate != port:
                log.warning("worker.metrics_port", wanted=port, port=candidate, reason="in_use")
            return candidate
        log.error("worker.metrics_port", wanted=port, port=None, reason="all_in_use", span=PORT_SPAN)
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

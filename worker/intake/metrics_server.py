"""The intake's ``/metrics``, on a listener of its own (INTAKE_METRICS_PORT, default 9809).

What /metrics tells (queue depths, the ids of the pages, error rates by Graph code) is for
Prometheus, not for the internet, so it is not on the public port that Braze calls: the
intake's Service and load balancer publish only that one, as a worker's METRICS_PORT is never
published either.

A small threaded HTTP server in the intake process answers ``GET /metrics`` with
:func:`worker.status.render_metrics`: this process's counters (or, with ``--workers N``,
every process's, aggregated by prometheus-client's multiprocess mode) and the status read
model, read from Redis with bounded, pipelined calls. With ``--workers N`` each process tries
to bind the port; one succeeds and serves the aggregate, the others do without (a process that
dies frees the port for the next one uvicorn starts).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker import status
from worker.config import Settings
from worker.logging import get_logger

log = get_logger("worker.intake")
MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsServer:
    def __init__(
        self,
        settings: Settings,
        shards: list[tuple[Settings, Any]],
        host: str = "0.0.0.0",  # noqa: S104  # scraped from other hosts/pods
    ) -> None:
        self._settings = settings
        self._shards = shards
        self._host = host
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def start(self) -> bool:
        """Serve on INTAKE_METRICS_PORT; False when it is off or another process holds the port."""
        port = self._settings.intake_metrics_port
        if not port:
            return False
        shards = self._shards

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = status.render_metrics(shards)
                self.send_response(200)
                self.send_header("Content-Type", MEDIA_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # http.server's name
                return None  # no access log: Prometheus scrapes every few seconds

        try:
            self._server = ThreadingHTTPServer((self._host, port), Handler)
        except OSError as exc:  # --workers N: a sibling serves the aggregate
            log.info("intake.metrics_port_taken", port=port, error=type(exc).__name__)
            return False
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

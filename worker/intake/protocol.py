"""The intake's HTTP/1.1 protocol: uvicorn's httptools protocol with the two limits it lacks.

uvicorn times neither a request's header block nor limits its size: a client that trickles
headers, or sends them without end, holds a connection (and its share of
INTAKE_LIMIT_CONCURRENCY) for as long as it likes, and grows the process's memory, before any
route could check its token. So, before the app sees anything:

* a request's headers must arrive within INTAKE_HEADER_SECONDS of its first byte, else
  ``408 header_timeout`` and the connection closes;
* the request line and headers together are at most INTAKE_MAX_HEADER_BYTES (counted by the
  chunks read while a head is incomplete: an upper bound, exact but for a pipelined request's
  neighbours), else ``431 headers_too_large`` and the connection closes;
* a connection that never sends a byte is closed after the keep-alive timeout
  (INTAKE_KEEPALIVE_SECONDS), as uvicorn closes one idle between requests.

The answers are the app's JSON error shape. The limits are set per process by the app factory
(:func:`configure`) from the settings; this class is what ``messenger-worker intake`` gives
uvicorn (``http=``), importable by reference so that ``--workers N`` can pass it on.
"""

from __future__ import annotations

import asyncio

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Defaults; :func:`configure` sets the settings' values in each served process.
_LIMITS = {"header_seconds": 10.0, "max_header_bytes": 65_536}


def configure(header_seconds: float, max_header_bytes: int) -> None:
    _LIMITS["header_seconds"] = float(header_seconds)
    _LIMITS["max_header_bytes"] = int(max_header_bytes)


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's protocol with a deadline and a size cap on each request's head. The size is
    counted per chunk read, not per header (no Python call per header on the hot path): the bytes
    of every chunk that ends with the head still incomplete, an upper bound of the head's size."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _in_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        super().connection_made(transport)
        # a connection that sends nothing is idle: closed as uvicorn closes an idle keep-alive
        # one (data_received cancels this timer, as it does uvicorn's)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_head:
            return
        self._head_bytes += len(data)
        if self._head_bytes > _LIMITS["max_header_bytes"]:
            limit = int(_LIMITS["max_header_bytes"])
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                f"the request's headers exceed {limit} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._in_head = True
        self._disarm()
        self._head_timer = self.loop.call_later(_LIMITS["header_seconds"], self._head_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        seconds = _LIMITS["header_seconds"]
        self._refuse(
            408,
            "Request Timeout",
            "header_timeout",
            f"the request's headers did not arrive within {seconds:g} s",
        )

    def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
        """Answer a head refused (JSON, as the app's errors) and close the connection."""
        self._in_head = False
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_answer(status, reason, code, message))
            self.transport.close()

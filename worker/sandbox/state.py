"""What a sandbox remembers: recorded calls, counters, ``flaky`` counters, page faults, open windows.

Owns :class:`SandboxState` (one per app, shared by the send endpoint and the control endpoints;
it holds the pages' utility templates too),
:class:`Call` (one recorded send call, as ``GET /__sandbox/calls`` lists it) and :class:`PageFault`
(a page-wide fault armed by ``POST /__sandbox/faults``).
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields

from worker.sandbox.config import SandboxConfig
from worker.sandbox.errors import Answer, Refusal, graph_error
from worker.sandbox.receipts import Receipts
from worker.sandbox.templates import Templates
from worker.sandbox.validation import BadJSON, parse_body


@dataclass(slots=True)
class PageFault:
    """A page-wide fault: the next ``remaining`` sends for the page (all if None) fail so."""

    code: int
    subcode: int | None
    remaining: int | None
    regain_minutes: int

    def as_json(self, page_id: str) -> dict[str, object]:
        return {
            "page_id": page_id,
            "code": self.code,
            "subcode": self.subcode,
            "remaining": self.remaining,
            "regain_minutes": self.regain_minutes,
        }


@dataclass(slots=True)
class Call:
    """One recorded send call. The body is kept raw (a quarter of the memory of the parsed form)."""

    at: float
    page_id: str | None
    seq: int = 0
    psid: str | None = None
    messaging_type: str | None = None
    tag: str | None = None
    status: int = 0
    code: int | None = None
    subcode: int | None = None
    message_id: str | None = None
    appsecret_proof: bool = False
    raw: bytes | None = None  # None: the body did not parse
    is_form: bool = False

    def frozen(self) -> tuple[object, ...]:
        """The fields, in order, as a plain tuple (what :class:`SandboxState` keeps)."""
        return tuple(getattr(self, name) for name in _CALL_FIELDS)

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] | None = None
        if self.raw is not None:
            try:
                body = parse_body(self.raw, self.is_form)
            except BadJSON:  # pragma: no cover - it parsed when it was received
                body = None
        return {
            "seq": self.seq,
            "at": self.at,
            "page_id": self.page_id,
            "psid": self.psid,
            "messaging_type": self.messaging_type,
            "tag": self.tag,
            "status": self.status,
            "code": self.code,
            "subcode": self.subcode,
            "message_id": self.message_id,
            "appsecret_proof": self.appsecret_proof,
            "body": body,
        }


_CALL_FIELDS = tuple(f.name for f in fields(Call))


class SandboxState:
    """One app's mutable state: the send endpoint writes it, the control endpoints read and reset it."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.latency_ms = float(config.latency_ms)
        self.tokens: dict[str, str] = dict(config.tokens)
        #: The recorded calls, oldest first, each as a plain tuple of Call's fields: the cyclic
        #: garbage collector stops tracking a tuple of strings and numbers, so kept calls do not
        #: lengthen its full collections (a Call object is tracked, and walked by each). Read
        #: them with :meth:`calls_kept`.
        self.records: deque[tuple[object, ...]] = deque(maxlen=max(1, config.record_limit))
        self.seq = itertools.count(1)
        self.message_seq = itertools.count(1)
        self.instance = secrets.token_hex(4)
        self.calls = 0
        self.sent = 0
        self.errors = 0
        self.flaky: dict[str, int] = {}
        #: ``throttle<M>-`` PSIDs: when each was first throttled (monotonic seconds).
        self.throttled: dict[str, float] = {}
        self.faults: dict[str, PageFault] = {}
        #: ``outside-`` PSIDs whose user re-engaged (POST /__sandbox/window): their window is open.
        self.opened: set[str] = set()
        #: Every page's utility templates (worker/sandbox/templates.py).
        self.templates = Templates()
        #: Delivery and read receipts for accepted sends (worker/sandbox/receipts.py), if configured.
        self.receipts = (
            Receipts(
                config.receipts_webhook,
                config.receipts_secret,
                config.receipts_share,
                config.receipts_delay_ms,
            )
            if config.receipts_webhook
            else None
        )

    def clear(self) -> None:
        self.records.clear()
        self.flaky.clear()
        self.throttled.clear()
        self.calls = self.sent = self.errors = 0

    def next_message_id(self) -> str:
        return f"m_sandbox.{self.instance}.{next(self.message_seq)}"

    def calls_kept(self) -> Iterator[Call]:
        """The recorded calls, oldest first."""
        for kept in self.records:
            yield Call(*kept)  # type: ignore[arg-type]  # Call.frozen(): its fields in order

    def record(self, call: Call, answer: Answer) -> None:
        """Complete and keep ``call`` (just before answering), and count it."""
        call.seq = next(self.seq)
        call.status = 0 if answer.drop else answer.status
        call.code = answer.code
        call.subcode = answer.subcode
        call.message_id = answer.message_id
        self.records.append(call.frozen())
        self.calls += 1
        if answer.status != 200 or answer.drop:
            self.errors += 1
        elif answer.message_id is not None:
            self.sent += 1

    def raise_page_fault(self, page_id: str) -> None:
        """Raise :class:`Refusal` if a page-wide fault is armed for ``page_id`` (and count it)."""
        fault = self.faults.get(page_id)
        if fault is None:
            return
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                del self.faults[page_id]
        raise Refusal(
            graph_error(fault.code, fault.subcode, page_id=page_id, regain_minutes=fault.regain_minutes)
        )

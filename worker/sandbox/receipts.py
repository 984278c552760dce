"""The sandbox's Messenger receipts: signed ``message_deliveries`` / ``message_reads`` webhook
events for the messages it accepted, so ``up --sandbox`` shows the whole loop without Facebook.

With ``SandboxConfig.receipts_webhook`` (the intake's ``/messenger/webhook``) and
``receipts_secret`` (the app secret the intake checks ``X-Hub-Signature-256`` with), a share
(``receipts_share``) of the accepted sends get a delivery receipt (mid and watermark)
``receipts_delay_ms`` after the send, and the same share of those a read receipt (a watermark)
as long again later. Receipts due together go in one POST (one ``entry`` per page). The send
path pays one attribute check when this is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import time
from dataclasses import dataclass

import orjson

#: How often due receipts are posted.
FLUSH_SECONDS = 0.2
#: Receipts waiting at most (beyond: dropped; the sandbox is a development double).
MAX_PENDING = 100_000


@dataclass(slots=True)
class _Receipt:
    due: float
    kind: str  # "delivery" or "read"
    page_id: str
    psid: str
    mid: str


class Receipts:
    """Collects receipts for accepted sends and posts them when due (one background task)."""

    def __init__(self, url: str, secret: str, share: float, delay_ms: float) -> None:
        self.url = url
        self._secret = secret.encode()
        self.share = max(0.0, min(1.0, share))
        self.delay = max(0.0, delay_ms) / 1000
        self._pending: list[_Receipt] = []
        self._task: asyncio.Task[None] | None = None
        self.posted = 0
        self.failed = 0

    def sent(self, page_id: str, psid: str, mid: str) -> None:
        """A send was accepted: maybe a delivery receipt (and later a read) for it."""
        if len(self._pending) >= MAX_PENDING or random.random() >= self.share:  # noqa: S311  # a share, not a secret
            return
        self._pending.append(_Receipt(time.time() + self.delay, "delivery", page_id, psid, mid))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=5) as client:
            while self._pending:
                await asyncio.sleep(FLUSH_SECONDS)
                now = time.time()
                due = [r for r in self._pending if r.due <= now]
                if not due:
                    continue
                self._pending = [r for r in self._pending if r.due > now]
                for r in due:  # the read follows the delivery, for the same share
                    if r.kind == "delivery" and random.random() < self.share:  # noqa: S311
                        self._pending.append(_Receipt(now + self.delay, "read", r.page_id, r.psid, r.mid))
                await self._post(client, due, now)
        self._task = None

    async def _post(self, client: object, due: list[_Receipt], now: float) -> None:
        import httpx

        assert isinstance(client, httpx.AsyncClient)
        body = self.body(due, now)
        signature = "sha256=" + hmac.new(self._secret, body, hashlib.sha256).hexdigest()
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
        with contextlib.suppress(httpx.HTTPError):
            resp = await client.post(self.url, content=body, headers=headers)
            if resp.status_code == 200:
                self.posted += len(due)
                return
        self.failed += len(due)

    @staticmethod
    def body(due: list[_Receipt], now: float) -> bytes:
        """The webhook body, Messenger's shape: one entry per page, one item per receipt."""
        ms = int(now * 1000)
        entries: dict[str, list[dict[str, object]]] = {}
        for r in due:
            item: dict[str, object] = {
                "sender": {"id": r.psid},
                "recipient": {"id": r.page_id},
                "timestamp": ms,
            }
            if r.kind == "delivery":
                item["delivery"] = {"mids": [r.mid], "watermark": ms}
            else:
                item["read"] = {"watermark": ms}
            entries.setdefault(r.page_id, []).append(item)
        return orjson.dumps(
            {
                "object": "page",
                "entry": [{"id": p, "time": ms, "messaging": items} for p, items in entries.items()],
            }
        )

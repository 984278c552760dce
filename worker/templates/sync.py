"""Reading each page's templates from Graph into the catalogue, on demand and periodically.

:func:`sync_page` reads ``GET {GRAPH_API_URL}/{version}/{page-id}/message_templates`` (the Page
token; ``appsecret_proof`` with APP_SECRET, as every Graph call of the service), following the
``paging.cursors.after`` cursor (at most :data:`MAX_PAGES` pages of :data:`PAGE_LIMIT`; a cursor
seen before fails the sync at once), and
replaces the page's catalogue in one MULTI/EXEC (:func:`worker.templates.catalogue.replace_page`),
then releases the messages waiting on a template Meta paused that it now holds APPROVED
(:mod:`worker.templates.waits`; ``released`` on the ``templates.synced`` line).
Any failure (a Graph error, a transport error, an answer that is not Graph's shape, too many
pages) leaves the old catalogue as it was: logged ``templates.sync_failed`` (Graph's code and
message, never the token or the URL) and counted in ``bmw_template_syncs_total{result="error"}``.

:class:`TemplateRefresher` runs in every worker process (started with the scheduler by
:class:`worker.delivery.engine.Engine`). Every TEMPLATE_SYNC_SECONDS (0: never) one process
syncs every configured page: whoever takes ``Keys.templates_lock`` (SET NX EX, lasting the
interval) does it, so the lock's expiry *is* the schedule and a fleet of workers reads Graph
once per interval. The sync runs beside the loop's other work; a stop cancels it while it waits
for Graph, never during its Redis write.

Not imported by the intake (which must not import the Graph client): the intake uses
:mod:`worker.templates.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx
import orjson
import redis.asyncio as aioredis
import redis.exceptions

from worker import metrics
from worker.config import PageTokens, Settings
from worker.graph.errors import from_response
from worker.logging import get_logger
from worker.store import Keys, shards
from worker.templates.catalogue import APPROVED, TemplateInfo, from_graph, replace_page
from worker.templates.waits import release_approved

log = get_logger("worker.templates")

#: The template fields read (Graph returns only what is asked for).
FIELDS: Final = "id,name,language,status,category,components,rejected_reason,parameter_format"
PAGE_LIMIT: Final = 100
#: Pages of PAGE_LIMIT read at most per Page: a catalogue beyond this is refused whole (kept old).
MAX_PAGES: Final = 50
#: How often a worker asks whether the catalogue is due (one SET NX), at most.
CHECK_SECONDS: Final = 30.0
HTTP_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)


class SyncError(Exception):
    """A page's templates could not be read. The message never holds a token or a URL."""

    def __init__(self, message: str, code: int | None = None, subcode: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.subcode = subcode


def _params(settings: Settings, token: str) -> dict[str, str]:
    params = {"fields": FIELDS, "limit": str(PAGE_LIMIT), "access_token": token}
    if settings.app_secret is not None:
        secret = settings.app_secret.get_secret_value().encode()
        params["appsecret_proof"] = hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()
    return params


async def fetch_page(http: httpx.AsyncClient, settings: Settings, page_id: str, token: str) -> list[Any]:
    """Every template Graph lists for the page (raw objects); :class:`SyncError` on any failure."""
    url = f"{settings.graph_base}/{page_id}/message_templates"
    params = _params(settings, token)
    items: list[Any] = []
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        try:
            response = await http.get(url, params=params, timeout=HTTP_TIMEOUT)
        except httpx.HTTPError as exc:
            raise SyncError(f"Graph unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            info = from_response(response).info
            raise SyncError(info.message, info.code, info.subcode)
        try:
            payload: Any = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            payload = None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise SyncError("the answer has no data list")
        items += data
        paging = payload.get("paging")
        paging = paging if isinstance(paging, dict) else {}
        cursors = paging.get("cursors")
        after = cursors.get("after") if isinstance(cursors, dict) else None
        if not paging.get("next") or not data:
            return items
        if not isinstance(after, str) or not after:
            raise SyncError("paging.next without a cursor")
        if after in seen:  # Graph pointing back: the listing would not end, nor be complete
            raise SyncError("paging.cursors.after repeats an earlier cursor")
        seen.add(after)
        params = {**params, "after": after}
    raise SyncError(f"more than {MAX_PAGES} pages of templates ({len(items)} read)")


async def sync_page(
    client: aioredis.Redis, settings: Settings, http: httpx.AsyncClient, page_id: str, token: str
) -> int:
    """Read the page's templates from Graph and replace its catalogue; returns how many it holds.
    Raises :class:`SyncError` (logged, counted; the old catalogue stays)."""
    started = time.time()
    try:
        raw = await fetch_page(http, settings, page_id, token)
    except SyncError as exc:
        metrics.TEMPLATE_SYNCS.labels("error").inc()
        log.warning(
            "templates.sync_failed", page_id=page_id, error=str(exc), code=exc.code, subcode=exc.subcode
        )
        raise
    templates: dict[str, TemplateInfo] = {}
    for item in raw:
        info = from_graph(item, started) if isinstance(item, dict) else None
        if info is not None:
            templates[info.hash_field] = info
    # shielded: a stop that cancels the sync cuts neither the MULTI/EXEC nor the release in half
    released = await asyncio.shield(_store(client, Keys.of(settings), page_id, templates, started))
    metrics.TEMPLATE_SYNCS.labels("ok").inc()
    log.info(
        "templates.synced",
        page_id=page_id,
        templates=len(templates),
        approved=sum(1 for t in templates.values() if t.status == APPROVED),
        released=released,
        ms=round((time.time() - started) * 1000),
    )
    return len(templates)


async def _store(
    client: aioredis.Redis, keys: Keys, page_id: str, templates: dict[str, TemplateInfo], at: float
) -> int:
    """Replace the page's catalogue, then release the messages waiting on a template it now holds
    APPROVED (worker/templates/waits.py). Returns how many were released."""
    written = await replace_page(client, keys, page_id, list(templates.values()), at)
    return await release_approved(client, keys, page_id, written)


async def sync_all(
    client: aioredis.Redis,
    settings: Settings,
    http: httpx.AsyncClient,
    tokens: PageTokens | Mapping[str, str] | None = None,
    pages: list[str] | None = None,
) -> dict[str, int | None]:
    """Sync every configured page (or ``pages``): page -> templates held, None where it failed."""
    if tokens is None:
        tokens = PageTokens(settings)
    wanted = pages if pages is not None else sorted(settings.page_access_tokens)
    wanted = [page for page in wanted if shards.owns_page(settings, page)]  # a worker: its shard's
    out: dict[str, int | None] = {}
    for page_id in wanted:
        token = tokens.get(page_id)
        if token is None:
            log.warning("templates.sync_failed", page_id=page_id, error="no page token configured")
            out[page_id] = None
            continue
        try:
            out[page_id] = await sync_page(client, settings, http, page_id, token)
        except SyncError:
            out[page_id] = None
    return out


class TemplateRefresher:
    """The periodic sync of one worker process (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, settings: Settings, tokens: PageTokens) -> None:
        self._client = client
        self._settings = settings
        self._tokens = tokens
        self._lock_key = Keys.of(settings).templates_lock
        self._every = settings.template_sync_seconds

    async def due(self) -> bool:
        """Take the fleet's sync turn if it is due (the lock lasts the interval)."""
        taken = await self._client.set(self._lock_key, "1", nx=True, ex=max(1, round(self._every)))
        return bool(taken)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: every CHECK_SECONDS (or the interval, if shorter), sync if due."""
        if self._every <= 0:
            return
        check = min(CHECK_SECONDS, self._every)
        async with httpx.AsyncClient() as http:
            while not stop.is_set():
                try:
                    if await self.due():
                        await self._sync(http, stop)
                except (redis.exceptions.RedisError, OSError) as exc:
                    log.warning("templates.refresh_error", error=type(exc).__name__)
                except Exception:  # a bug here must not end the periodic sync for good
                    log.exception("templates.refresh_failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), check)

    async def _sync(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """One sync of every page, abandoned (between Redis writes) when ``stop`` is set."""
        work = asyncio.ensure_future(sync_all(self._client, self._settings, http, self._tokens))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if not work.cancelled():
            work.result()  # raise what the sync raised (RedisError: logged by run)

"""The service's Lua scripts: ``store/lua/*.lua``, read once per process, run by SHA.

Each script's contract (KEYS, ARGV, what it returns) is the comment at the top of its file.
Every script is prefixed with the state names of :mod:`worker.states` (``S.QUEUED``, ``OPEN``,
``FINAL``, ``CLAIMABLE``, ``KEEPS_BODY``) and the fields a final record keeps (``OUTCOME``, its
times ``OUTCOME_TIMES`` and ``OUTCOME_ZERO_ABSENT``: :mod:`worker.store.outcomes`), so no script
spells a status or a field list of its own. A line ``--!include NAME.lua`` is replaced by that
file, the first time a script includes it (shared helpers whose name starts with ``_`` are not
scripts themselves).

Running: :func:`run` sends ``EVALSHA``; after a Redis restart (or failover) the server has no
scripts, answers ``NOSCRIPT`` and the script is sent once with ``EVAL``, which caches it again.
So a script costs one SHA per call, never a ``SCRIPT EXISTS`` round trip (redis-py's pipelines
issue one per ``execute``). In a pipeline, :func:`queue` adds an ``EVALSHA``; :func:`execute`
runs a pipeline built by a function, and on ``NOSCRIPT`` loads the scripts and runs the function
again: pipelines given to it must be safe to apply twice (every caller's are: fenced or
idempotent writes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from worker import states
from worker.store import idempotency, outcomes, records, seals, unread
from worker.store.keys import text

LUA_DIR: Final = Path(__file__).with_name("lua")
_INCLUDE = re.compile(r"^--!include (\S+)$", re.M)


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str

    def __repr__(self) -> str:
        return f"Script({self.name})"


def _prelude() -> str:
    kept = ", ".join(f"'{field}'" for field in outcomes.FIELDS)
    attribution = ", ".join(f"'{field}'" for field in records.ATTRIBUTION)
    packed = ", ".join(f"'{field}'" for field in records.PACKED)
    return (
        f"{states.lua_prelude()}local OUTCOME = {{{kept}}}\n"
        f"local OUTCOME_TIMES = {states.lua_set(outcomes.TIMES)}\n"
        f"local OUTCOME_ZERO_ABSENT = {states.lua_set(outcomes.ZERO_ABSENT)}\n"
        f"local ATTRIBUTION = {{{attribution}}}\n"
        f"local PACKED_FIELD, PACKED = '{records.PACKED_FIELD}', {{{packed}}}\n"
        f"local OUTCOME_SPAN, OUTCOME_SUFFIX, OUTCOME_DONE = {outcomes.SPAN}, {outcomes.SUFFIX}, {outcomes.DONE}\n"
        f"local IDEM_SUFFIX, IDEM_FIELD = {idempotency.SUFFIX}, {idempotency.FIELD}\n"
        f"local UNREAD_SUFFIX, UNREAD_FIELD = {unread.SUFFIX}, {unread.FIELD}\n"
        f"local SEAL_MIN, SEAL_RETIRED = {seals.SEAL_MIN}, {seals.RETIRED!r}\n"
    )


def _read(name: str, seen: set[str] | None = None) -> str:
    """A script's text with its includes, each file once (a helper two includes share is
    defined by the first)."""
    seen = set() if seen is None else seen
    seen.add(name)
    text = (LUA_DIR / name).read_text(encoding="utf-8")

    def include(match: re.Match[str]) -> str:
        wanted = match.group(1)
        return "" if wanted in seen else _read(wanted, seen).rstrip("\n")

    return _INCLUDE.sub(include, text)


@cache
def script(name: str) -> Script:
    """The script ``store/lua/{name}.lua`` (read and hashed once per process)."""
    if name.startswith("_") or not (LUA_DIR / f"{name}.lua").is_file():
        raise KeyError(f"no Lua script {name!r}")
    source = _prelude() + _read(f"{name}.lua")
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def names() -> list[str]:
    """Every script's name (for tests and for loading them all)."""
    return sorted(p.stem for p in LUA_DIR.glob("*.lua") if not p.stem.startswith("_"))


async def run(client: aioredis.Redis, name: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
    """Run a script by SHA; sent whole only when the server does not have it (NOSCRIPT)."""
    s = script(name)
    try:
        return await client.evalsha(s.sha, len(keys), *keys, *args)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    except NoScriptError:
        return await client.eval(s.source, len(keys), *keys, *args)  # type: ignore[misc]


def run_sync(client: Any, name: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
    """:func:`run` for a synchronous client (the CLI and the metrics collector)."""
    s = script(name)
    try:
        return client.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(s.source, len(keys), *keys, *args)


def queue(pipe: Any, name: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> None:
    """Add the script to a pipeline (run by :func:`execute`)."""
    s = script(name)
    pipe.evalsha(s.sha, len(keys), *keys, *args)


async def execute(
    client: aioredis.Redis, build: Callable[[Any], Awaitable[None] | None], *, transaction: bool = False
) -> list[Any]:
    """Build a pipeline with ``build(pipe)`` and execute it. If a script in it was missing on the
    server (NOSCRIPT: Redis restarted or its scripts were flushed), load the scripts and send
    again only the commands that failed so, in their order, and answer as if they had not: the
    pipeline's other commands were applied once and are not applied again (a list push, a
    counter). Errors other than NOSCRIPT are raised as usual."""
    pipe = client.pipeline(transaction=transaction)
    built = build(pipe)
    if built is not None:
        await built
    stack = list(pipe.command_stack)  # execute() empties it
    results: list[Any] = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        for name in names():
            await client.script_load(script(name).source)
        again = client.pipeline(transaction=transaction)
        for i in missing:
            args, options = stack[i]
            again.execute_command(*args, **options)
        for i, result in zip(missing, await again.execute(raise_on_error=False), strict=True):
            results[i] = result
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def cancels(flat: Sequence[Any]) -> list[tuple[str, str, int]]:
    """What a script's camp_cancel ended, as claim.lua and cancel.lua answer it (_campaign.lua's
    camp_cancels: {page_id, reason, count, ...}): (page_id, reason, count) each."""
    return [(text(flat[i]), text(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat) - 2, 3)]

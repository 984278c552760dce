"""What the CLI's commands share: settings loading that prints a line instead of a traceback,
whether a variable is configured, and the sandbox's page."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the CLI imports the service's modules only when a command needs them
    from worker.fleet import Across

T = TypeVar("T")

SANDBOX_PAGE = "1234567890"


def settings(**overrides: object) -> Any:
    from worker.config import load_settings

    try:
        return load_settings(**overrides)
    except ValueError as exc:  # pydantic ValidationError: print the message, not a traceback
        raise SystemExit(f"configuration error: {exc}") from None


def service_settings(**overrides: object) -> Any:
    """Settings for a service process (the intake, a worker): also :func:`check_service`'s
    requirements (RECIPIENT_HASH_SALT)."""
    from worker.config import check_service

    loaded = settings(**overrides)
    try:
        check_service(loaded)
    except ValueError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    return loaded


def warn_unavailable(shards: Sequence[int]) -> None:
    """The shards a listing or a status leaves out (they did not answer), on stderr."""
    if shards:
        names = ", ".join(str(i) for i in shards)
        print(f"warning: shard {names} did not answer; these figures leave it out", file=sys.stderr)


def warn_partial(read: Across[T]) -> T:
    """A listing across shards' value, after :func:`warn_unavailable` of what it leaves out."""
    warn_unavailable(read.unavailable)
    return read.value


def with_fleet(work: Callable[[Any], Awaitable[T]], loaded: Any = None) -> T:
    """Run ``work(fleet)`` with a client per shard (:class:`worker.fleet.Fleet`), closed after;
    ``loaded``: the command's settings when it has them already."""
    import asyncio

    from worker.fleet import Fleet
    from worker.store import connections

    loaded = loaded if loaded is not None else settings()

    async def run() -> T:
        fleet = Fleet.connect(loaded, connections.async_client)
        try:
            return await work(fleet)
        finally:
            await fleet.close()

    return asyncio.run(run())


def configured(name: str) -> bool:
    """Whether ``name`` is set in the environment or in ./.env."""
    if os.environ.get(name):
        return True
    env_file = Path(".env")
    return env_file.is_file() and any(
        line.strip().startswith(f"{name}=") for line in env_file.read_text(encoding="utf-8").splitlines()
    )

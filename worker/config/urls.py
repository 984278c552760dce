"""Redis URLs in the settings: which schemes are taken, which Redis a URL names (so that
REDIS_SHARDS cannot list one Redis twice under two spellings), and the passwords they carry
(masked in logs and error lines)."""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

_MASK = "***"


def parts(url: str) -> list[str]:
    """The URLs one setting holds: each Sentinel node of a ``sentinel://a;sentinel://b`` URL,
    else the URL itself (a ``;`` in a redis:// URL's password is part of the password)."""
    if url.startswith("sentinel://"):
        return [part.strip() for part in url.split(";")]
    return [url]


def _split(part: str) -> SplitResult | None:
    """``part`` split, or None when its authority cannot be read (``port`` raises: a password
    with an unencoded ``/``, ``?`` or ``#`` ends the authority early)."""
    try:
        split = urlsplit(part)
        _ = split.port
    except ValueError:
        return None
    return split


def redis_url(value: str, name: str) -> str:
    """``value`` when it is a Redis URL this service can use (ValueError naming ``name``; the
    message never quotes the URL: it carries a password)."""
    if not value.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        raise ValueError(f"{name} must be a redis://, rediss://, unix:// or sentinel:// URL")
    if any(_split(part) is None for part in parts(value)):
        raise ValueError(
            f"{name} is not a URL that can be read: percent-encode a password's reserved "
            "characters (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)"
        )
    return value


def passwords(url: str) -> list[str]:
    """The passwords ``url`` carries (its authority's, as written and decoded, and a
    ``?password=`` query's, which redis-py also reads), for masking."""
    found: list[str] = []
    for part in parts(url):
        split = _split(part)
        if split is None:  # not readable (redis_url refuses it): what may be the password, masked
            userinfo = part.partition("://")[2].rpartition("@")[0]
            found += [userinfo, userinfo.partition(":")[2]]
            continue
        if split.password:
            found += [split.password, unquote(split.password)]
        found += [value for key, value in parse_qsl(split.query) if key.lower() == "password" and value]
    return [secret for secret in found if secret]


def redacted(url: str) -> str:
    """``url`` without its passwords, for an error line."""
    out = []
    for part in parts(url):
        split = _split(part)
        if split is None:
            out.append(part.partition("://")[0] + "://" + _MASK)  # nothing of it can be trusted
            continue
        text = part
        if split.password:
            host = split.hostname or ""
            host = f"[{host}]" if ":" in host else host
            port = f":{split.port}" if split.port else ""
            text = split._replace(netloc=f"{split.username or ''}:{_MASK}@{host}{port}").geturl()
        query = parse_qsl(split.query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in query):
            masked = (f"{key}={_MASK if key.lower() == 'password' else value}" for key, value in query)
            text = text.partition("?")[0] + "?" + "&".join(masked)  # (a fragment is dropped)
        out.append(text)
    return ";".join(out)


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
    for part in parts(url):
        split = urlsplit(part)
        if split.scheme == "unix":
            out.add(("unix", split.path, 0, _db("", split.query)))
        elif split.scheme == "sentinel":
            out.add(("sentinel", _host(split.hostname), split.port or 26379, _db(split.path, split.query)))
        else:  # redis:// and rediss:// reach the same server
            out.add(("redis", _host(split.hostname), split.port or 6379, _db(split.path, split.query)))
    return frozenset(out)

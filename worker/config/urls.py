"""Redis URLs in the settings: which schemes are taken, which Redis a URL names (so that
REDIS_SHARDS cannot list one Redis twice under two spellings), the passwords they carry
(masked in logs and error lines), and the form Celery's broker (kombu) reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, parse_qs, parse_qsl, quote, unquote, unquote_plus, urlsplit

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
        read = _query_value(split.query, "password")  # as redis-py decodes it (twice)
        found += [read] if read else []
    # and as broker_url writes them into an authority (Celery's broker URL)
    return [form for secret in found if secret for form in (secret, quote(secret, safe=""))]


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


def _query_value(query: str, key: str) -> str | None:
    """``key``'s value in ``query`` as redis-py's ``parse_url`` reads it: the first non-blank
    one, percent-decoded by ``parse_qs`` and then once more; None without one."""
    values = parse_qs(query).get(key)
    return unquote(values[0]) if values else None


#: The query keys redis-py reads that broker_url moves out of the query (kombu takes each query
#: key as a keyword argument of its Connection, which has none of these).
_MOVED = ("password", "username", "db")


def _kept(query: str, moved: tuple[str, ...]) -> list[str]:
    """``query``'s ``key=value`` parts but those of the keys ``moved`` out of it."""
    return [p for p in query.split("&") if p and unquote_plus(p.partition("=")[0]) not in moved]


def _flag(value: str) -> bool:
    """A flag in a URL's query as redis-py reads it (``to_bool``)."""
    return value.upper() not in ("0", "F", "FALSE", "N", "NO")


#: redis-py's connection settings in a URL's query that kombu's Redis transport takes as
#: transport options instead (its Channel's ``from_transport_options``; in the URL, kombu takes
#: them for keyword arguments of its Connection and stops), each parsed as redis-py parses it.
_TRANSPORT: dict[str, Callable[[str], Any]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": _flag,
    "health_check_interval": int,
    "max_connections": int,
    "retry_on_timeout": _flag,
}


def broker_transport_options(url: str, name: str = "REDIS_URL") -> dict[str, Any]:
    """The redis-py connection settings in ``url``'s query (``?socket_timeout=5``), as Celery's
    transport options: :func:`broker_url` takes them out of the URL. A value redis-py would refuse
    is refused (ValueError naming ``name`` and the key). None for a Sentinel URL (the service's
    Sentinel clients do not read the query)."""
    split = None if url.startswith("sentinel://") else _split(url)
    if split is None:
        return {}
    out: dict[str, Any] = {}
    for key, parse in _TRANSPORT.items():
        value = _query_value(split.query, key)
        if value:
            try:
                out[key] = parse(value)
            except ValueError:
                raise ValueError(f"{name}: the value of {key} is not a {parse.__name__}") from None
    return out


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """A ``sentinel://`` URL as the service reads it, one reading for its own clients
    (worker/store/connections.py) and Celery's broker (:func:`broker_url`): the nodes, the
    database (the last node's path that names one; 0 without) and the password (the last node's
    that carries one: its authority's, percent-decoded, else its ``?password=``)."""
    nodes: list[tuple[str, int]] = []
    db = 0
    password: str | None = None
    for part in parts(url):
        split = urlsplit(part)
        nodes.append((split.hostname or "127.0.0.1", split.port or 26379))
        found = unquote(split.password) if split.password else _query_value(split.query, "password")
        if found:
            password = found
        if split.path.strip("/").isdigit():
            db = int(split.path.strip("/"))
    return nodes, db, password


def _sentinel_broker(url: str) -> str:
    """Every node of a Sentinel URL with the password and database the service reads
    (:func:`sentinel_parts`): kombu takes them from the node it is on (the first, then whichever
    it fails over to), so nodes that differ would have the worker read another database than the
    intake writes, or connect without the password."""
    _, db, password = sentinel_parts(url)
    userinfo = f":{quote(password, safe='')}@" if password else ""
    out = []
    for part in parts(url):
        split = urlsplit(part)
        kept = _kept(split.query, _MOVED)
        netloc = userinfo + split.netloc.rpartition("@")[2]
        out.append(split._replace(netloc=netloc, path=f"/{db}", query="&".join(kept)).geturl())
    return ";".join(out)


def broker_url(url: str, name: str = "REDIS_URL") -> str:
    """``url`` as Celery's broker (kombu) reads it, meaning what redis-py makes of it.

    kombu passes every query key to its ``Connection`` as a keyword argument: ``?password=``
    collides with the URL's own (``TypeError: dict() got multiple values``), ``?username=`` and
    ``?db=`` are refused (``unexpected keyword argument``). redis-py reads all three (a query
    value decoded twice, the first one when repeated); an authority username or password wins
    over the query's, a ``?db=`` over the path's. So, in each part of the URL (each Sentinel
    node of a ``sentinel://a;sentinel://b`` one):

    * the username and password redis-py reads go into the authority, percent-encoded (a ``;``
      there would split the URL into kombu's failover list, a ``/`` would end the authority);
    * redis:// and rediss://: a ``?db=`` becomes the path (left in the query when it is no
      integer: redis-py refuses it too);
    * unix:// (kombu has no such transport): ``redis+socket://[user:password@]/path``, the
      database as ``?virtual_host=N`` (how kombu's socket transport selects one); other query
      keys would reach redis-py as strings, so they are refused (ValueError naming ``name``);
    * Sentinel: every node gets the password and database the service's own clients use
      (:func:`sentinel_parts`: the last node's that names one; a ``?db=`` is not read);
    * redis-py's connection settings (``socket_timeout``, ``health_check_interval``, …) leave
      the query: Celery gets them as transport options (:func:`broker_transport_options`);
    * every other query key is kept as written (``ssl_*``: kombu reads them).

    The result carries the password: it is for kombu only (Celery prints the broker URL with
    the password masked; :func:`passwords` lists the encoded form for the log redactor).
    """
    if url.startswith("sentinel://"):
        return _sentinel_broker(url)
    return ";".join(_broker_part(part, name) for part in parts(url))


def _broker_part(part: str, name: str) -> str:
    split = _split(part)
    if split is None:
        raise ValueError(f"{name} is not a URL that can be read")  # (redis_url refuses it first)
    username = unquote(split.username) if split.username else _query_value(split.query, "username")
    password = unquote(split.password) if split.password else _query_value(split.query, "password")
    db = _query_value(split.query, "db")
    moves_db = split.scheme != "sentinel" and (db is None or _is_int(db))  # a bad one: refused as it was
    moved = (*(_MOVED if moves_db else _MOVED[:2]), *_TRANSPORT)  # those: transport options
    db = db if moves_db else None
    kept = _kept(split.query, moved)
    userinfo = ""
    if username or password:
        userinfo = quote(username or "", safe="") + (f":{quote(password, safe='')}" if password else "") + "@"
    if split.scheme == "unix":
        if kept:
            keys = {unquote_plus(p.partition("=")[0]) for p in kept}
            shown = sorted(key for key in keys if key.isidentifier())  # a mistyped "password:x" is not
            raise ValueError(
                f"{name}: Celery's broker cannot take the query keys {shown}"
                + (f" (and {len(keys) - len(shown)} more)" if len(shown) < len(keys) else "")
                + " of a unix:// URL (only an integer db, password, username and redis-py's"
                + f" connection settings: {', '.join(_TRANSPORT)})"
            )
        vhost = f"?virtual_host={int(db)}" if db is not None else ""
        return f"redis+socket://{userinfo}{split.path}{vhost}"
    netloc = userinfo + split.netloc.rpartition("@")[2]
    path = f"/{int(db)}" if db is not None else split.path
    return split._replace(netloc=netloc, path=path, query="&".join(kept)).geturl()


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


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

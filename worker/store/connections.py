"""Redis connections: the one place that turns REDIS_URL into clients (and Celery's broker options).

``REDIS_URL`` forms:

* ``redis://[:password@]host:6379/0`` — plain TCP;
* ``rediss://[:password@]host:6380/0`` — TLS (certificates verified; ``?ssl_cert_reqs=none`` only
  for testing), passed to redis-py and to Celery's broker as is;
* ``sentinel://[:password@]host1:26379;sentinel://host2:26379/0`` with ``REDIS_SENTINEL_MASTER``
  (default ``mymaster``) — Redis Sentinel: clients ask the sentinels for the current master, so a
  failover needs no restart. Celery uses the same URL with its ``master_name`` transport option.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from worker.config import Settings, urls

#: What the service asks of its Redis beyond the defaults (README "Redis memory"). A delivery
#: record is a hash whose largest value is the body (and, once sent, Graph's message id: over 64
#: bytes): past ``hash-max-listpack-value`` (default 64) Redis stores the hash as a hashtable,
#: and never converts it back. Measured (a 270-byte body, 15 fields): 1,934 bytes per open record
#: as a hashtable, 816 as a listpack; a final one 1,022 against 560. Listpack reads scan at most
#: ~25 short fields. Redis 6.2 names it ``hash-max-ziplist-value``.
RECOMMENDED_CONFIG: dict[str, str] = {"hash-max-listpack-value": "1024"}


def server_args() -> list[str]:
    """RECOMMENDED_CONFIG as redis-server arguments (the embedded server, the benchmarks)."""
    return [arg for name, value in RECOMMENDED_CONFIG.items() for arg in (f"--{name}", value)]


def config_advice(client: Any) -> dict[str, str]:
    """Each RECOMMENDED_CONFIG entry the server runs below: name -> its value ({} when it meets
    them, or when CONFIG is not allowed, as on most managed Redis: their parameter groups)."""
    advice: dict[str, str] = {}
    for name, wanted in RECOMMENDED_CONFIG.items():
        try:
            current = client.config_get(name).get(name)
        except redis.exceptions.RedisError:
            return {}
        if current is not None and int(current) < int(wanted):
            advice[name] = str(current)
    return advice


def is_sentinel(settings: Settings) -> bool:
    return settings.redis_url.startswith("sentinel://")


class _HiredisPack:
    """Packs commands with hiredis (C) instead of redis-py's asyncio packer (Python), as redis-py's
    sync client does. Measured: 21 us instead of 145 us for the intake's 25-message ACCEPT call."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # "CLIENT SETNAME" style names are sent as separate words
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:  # the types redis-py's encoder refuses, with its error type
            raise redis.exceptions.DataError(str(exc)) from None


def _hiredis_packing(pool: aioredis.ConnectionPool) -> None:
    base = pool.connection_class
    if not issubclass(base, _HiredisPack):
        pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPack, base), {})


def async_client(settings: Settings, *, max_connections: int = 64, timeout: float = 5.0) -> aioredis.Redis:
    """An asyncio client with a blocking pool (waits for a free connection instead of failing)."""
    if is_sentinel(settings):
        nodes, db, password = urls.sentinel_parts(settings.redis_url)  # the broker's reading too
        sentinel = AsyncSentinel(nodes, socket_timeout=timeout, password=password)  # type: ignore[no-untyped-call]  # untyped in redis-py
        client: aioredis.Redis = sentinel.master_for(
            settings.redis_sentinel_master, db=db, password=password, socket_timeout=timeout
        )
        _hiredis_packing(client.connection_pool)
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 3.0),
    )
    _hiredis_packing(pool)
    return aioredis.Redis(connection_pool=pool)


def sync_client(settings: Settings, *, timeout: float = 5.0) -> Any:
    """A synchronous client (CLI, metrics collector). Typed Any: redis-py's sync typing is a union."""
    if is_sentinel(settings):
        nodes, db, password = urls.sentinel_parts(settings.redis_url)  # the broker's reading too
        sentinel = Sentinel(nodes, socket_timeout=timeout, password=password)  # type: ignore[no-untyped-call]  # untyped in redis-py
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            settings.redis_sentinel_master, db=db, password=password, socket_timeout=timeout
        )
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 3.0)
    )


def celery_transport_options(settings: Settings) -> dict[str, Any]:
    # the URL's ?socket_timeout= and the like, which kombu cannot take in the URL (urls.broker_url)
    options: dict[str, Any] = urls.broker_transport_options(settings.redis_url)
    if is_sentinel(settings):
        options["master_name"] = settings.redis_sentinel_master
    return options

"""The asyncio clients pack commands with hiredis: same bytes on the wire as redis-py's packer."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.typing import EncodableT

from worker.config import Settings, urls
from worker.store import connections as redisconn

ARGS: list[tuple[EncodableT, ...]] = [
    ("SET", "key", "value"),
    ("EVALSHA", "a" * 40, 3, "k1", "k2", "k3", 1732550000.123456, b"\x00\xff body", "pâté", -7),
    ("CLIENT SETNAME", "bmw-intake"),  # a two-word name goes out as two words
    (b"CONFIG GET", "maxmemory"),
    ("RPUSH", "q", b"x" * 10_000),  # above redis-py's buffer cutoff: it sends chunks, hiredis one buffer
]


def _settings(url: str) -> Settings:
    return Settings(redis_url=url, intake_insecure_no_auth=True)


@pytest.mark.parametrize("args", ARGS)
def test_packs_the_same_bytes_as_redis_py(args: tuple[EncodableT, ...]) -> None:
    python_packed = b"".join(aioredis.Connection().pack_command(*args))
    client = redisconn.async_client(_settings("redis://127.0.0.1:6399/0"))
    conn = client.connection_pool.connection_class()
    assert b"".join(conn.pack_command(*args)) == python_packed


def test_unencodable_arguments_raise_redis_data_error() -> None:
    client = redisconn.async_client(_settings("redis://127.0.0.1:6399/0"))
    conn = client.connection_pool.connection_class()
    with pytest.raises(redis.exceptions.DataError):
        conn.pack_command("SET", "key", None)  # type: ignore[arg-type]  # the point of the test


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("redis://127.0.0.1:6399/0", aioredis.Connection),
        ("rediss://127.0.0.1:6399/0", aioredis.SSLConnection),
        ("unix:///tmp/redis.sock", aioredis.UnixDomainSocketConnection),
    ],
)
def test_every_url_form_keeps_its_connection_class(url: str, base: type) -> None:
    cls = redisconn.async_client(_settings(url)).connection_pool.connection_class
    assert issubclass(cls, base)
    assert cls is not base


def test_a_sentinel_urls_password_is_percent_decoded_as_a_redis_urls_is() -> None:
    """A password with a reserved character is percent-encoded in the URL (`p@ss/w` as
    `p%40ss%2Fw`); redis-py decodes a redis:// URL's, and the Sentinel's was passed on encoded:
    authentication failed."""
    nodes, db, password = urls.sentinel_parts(
        "sentinel://:p%40ss%2Fw@10.0.0.1:26379;sentinel://10.0.0.2:26380/2"
    )
    assert (nodes, db, password) == ([("10.0.0.1", 26379), ("10.0.0.2", 26380)], 2, "p@ss/w")

"""The broker URL: REDIS_URL as Celery's broker (kombu) reads it, meaning what redis-py makes of it.

kombu passes each query key of the URL to its ``Connection`` as a keyword argument: a
``?password=`` (which redis-py reads, and the settings accept) stopped every worker at start with
``TypeError: dict() got multiple values for keyword argument 'password'``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Connection
from kombu.utils.url import parse_url

from worker.celery import make_app
from worker.config import Settings, urls
from worker.logging import Redactor

RESERVED = "p@ss:w/rd?#"


def redis_py(url: str) -> dict[str, Any]:
    """What redis-py's client makes of ``url``: its connection's keyword arguments."""
    return redis.ConnectionPool.from_url(url).connection_kwargs


def kombu(url: str) -> dict[str, Any]:
    """What kombu makes of a (non-Sentinel, TCP) broker URL."""
    parsed: dict[str, Any] = parse_url(url)
    return parsed


def same_meaning(url: str) -> None:
    theirs, ours = redis_py(url), kombu(urls.broker_url(url))
    assert ours["password"] == theirs.get("password")
    assert ours["userid"] == theirs.get("username")
    assert int(ours["virtual_host"] or 0) == theirs.get("db", 0)
    assert (ours["hostname"], ours["port"]) == (theirs["host"], theirs.get("port"))


def test_a_query_password_is_read_by_kombu() -> None:
    url = "redis://localhost:6390/0?password=s3cret"
    with pytest.raises(TypeError, match="multiple values for keyword argument 'password'"):
        parse_url(url)  # what stopped the worker
    assert urls.broker_url(url) == "redis://:s3cret@localhost:6390/0"
    parsed = kombu(urls.broker_url(url))
    assert (parsed["hostname"], parsed["port"], parsed["password"], parsed["virtual_host"]) == (
        "localhost",
        6390,
        "s3cret",
        "0",
    )
    same_meaning(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:authority-pw@h:1/0?password=query-pw",
        "redis://user:authority-pw@h:1/0?password=query-pw&username=other",
        "redis://:@h:1/0?password=query-pw",  # an empty authority password is none (redis-py)
        "redis://h:1/0?password=first-pw&password=second-pw",  # redis-py takes the first
        "redis://h:1/0?password=",  # blank: no password
        "redis://user@h:1/2?password=pw",  # the username is kept
        "redis://h:1/0?username=qu&password=pw",
        "redis://h:1/0?db=3&password=pw",  # ?db= wins over the path, as in redis-py
        "redis://h:1/5?db=&password=pw",
        "redis://[::1]:6379/4?password=pw",
        "rediss://h:6380/0?password=pw&ssl_cert_reqs=required",
        "redis://h:1/0?password=a+b",  # "+" is a space in a query
        "redis://h:1/0?password=a%2541",  # redis-py decodes a query value twice: "aA"
        "redis://:semi;colon@h:1/0",  # kombu split the URL at the ";" and printed "semi"
        "redis://:p%40ss%3Aw%2Frd%3F%23@h:1/0",
    ],
)
def test_kombu_reads_what_redis_py_reads(url: str) -> None:
    same_meaning(url)
    assert "password=" not in urls.broker_url(url)


def test_the_authority_password_wins() -> None:
    url = "redis://:authority-pw@h:1/0?password=query-pw"
    assert kombu(urls.broker_url(url))["password"] == "authority-pw"
    assert redis_py(url)["password"] == "authority-pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6390/0?password=" + quote(RESERVED, safe=""),
        "redis://user:" + quote(RESERVED, safe="") + "@127.0.0.1:6390/0",
    ],
    ids=["query", "authority"],
)
def test_reserved_characters_round_trip(url: str) -> None:
    broker = urls.broker_url(url)
    parsed = kombu(broker)
    assert parsed["password"] == RESERVED
    assert (parsed["hostname"], parsed["port"]) == ("127.0.0.1", 6390)
    assert Connection(broker).password == RESERVED
    same_meaning(url)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(password=st.text(min_size=1, max_size=24), form=st.sampled_from(["query", "authority", "both"]))
def test_any_password_means_the_same(password: str, form: str) -> None:
    encoded = quote(password, safe="")
    url = {
        "query": f"redis://h:1/0?password={encoded}",
        "authority": f"redis://:{encoded}@h:1/0",
        "both": f"redis://:{encoded}@h:1/0?password=other",
    }[form]
    same_meaning(url)


def test_ssl_and_other_query_keys_are_kept_as_written() -> None:
    url = "rediss://h:6380/0?ssl_cert_reqs=required&password=pw&ssl_ca_certs=%2Ftmp%2Fca.pem"
    assert urls.broker_url(url) == "rediss://:pw@h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=%2Ftmp%2Fca.pem"
    assert kombu(urls.broker_url(url))["ssl"]["ssl_ca_certs"] == "/tmp/ca.pem"
    assert urls.broker_url("redis://h:6379/0") == "redis://h:6379/0"  # nothing to move: unchanged
    assert urls.broker_url("redis://h:1/0?db=x&password=pw") == "redis://:pw@h:1/0?db=x"  # refused as before


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/3",  # kombu read db 0 (the first node's)
        "sentinel://10.0.0.1:26379;sentinel://:pw@10.0.0.2:26380/3",  # kombu read no password
        "sentinel://10.0.0.1:26379?password=pw;sentinel://10.0.0.2:26380/3",
        "sentinel://:lost@10.0.0.1:26379/3;sentinel://10.0.0.2:26380?password=pw",  # the last one named
    ],
)
def test_every_sentinel_node_carries_the_password_and_db_the_service_reads(url: str) -> None:
    """kombu takes the password and database of the node it is on (the first, then the one it
    fails over to); the service's own clients read them across the nodes (urls.sentinel_parts).
    Where they differed, the worker read another database than the intake wrote."""
    nodes, db, password = urls.sentinel_parts(url)
    assert (nodes, db, password) == ([("10.0.0.1", 26379), ("10.0.0.2", 26380)], 3, "pw")
    conn = Connection(urls.broker_url(url), transport_options={"master_name": "mymaster"})
    read = [parse_url(node) for node in conn.alt]
    assert [(r["hostname"], r["port"]) for r in read] == nodes
    assert [(r["password"], r["virtual_host"]) for r in read] == [("pw", "3")] * 2


def test_a_unix_url_becomes_kombus_socket_url() -> None:
    url = "unix:///run/redis%20x.sock?db=2&password=" + quote(RESERVED, safe="")
    with pytest.raises(KeyError, match="No such transport: unix"):
        Connection(url).transport  # noqa: B018  # kombu knows no unix:// at all
    broker = urls.broker_url(url)
    assert broker == "redis+socket://:p%40ss%3Aw%2Frd%3F%23@/run/redis%20x.sock?virtual_host=2"
    assert Connection(broker).transport_cls == "redis"
    assert urls.broker_url("unix:///run/r.sock") == "redis+socket:///run/r.sock"


def test_a_unix_url_with_keys_kombu_cannot_pass_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match=r"REDIS_URL: .*\['foo'\] of a unix:// URL") as caught:
        urls.broker_url("unix:///run/r.sock?foo=3&socket_timeout=3&password=unix-secret-1")
    assert "unix-secret-1" not in str(caught.value)
    with pytest.raises(ValueError, match=r"keys \[\] \(and 1 more\) of a unix") as caught:
        urls.broker_url("unix:///run/r.sock?password:unix-secret-2")  # a mistyped one: not quoted
    assert "unix-secret-2" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6390/0?password=" + quote(RESERVED, safe=""),
        "unix:///run/r.sock?password=" + quote(RESERVED, safe=""),
        "sentinel://127.0.0.1:26379?password=" + quote(RESERVED, safe=""),
    ],
    ids=["redis", "unix", "sentinel"],
)
def test_celery_shows_the_broker_without_its_password(url: str) -> None:
    app = make_app(Settings(redis_url=url, intake_insecure_no_auth=True))
    conn = app.connection_for_write()
    assert conn.as_uri().count("**") == 1  # the banner's and connection errors' form
    for form in (RESERVED, quote(RESERVED, safe="")):
        assert form not in conn.as_uri()
        assert form not in repr(conn)
    redactor = Redactor(urls.passwords(url))
    assert quote(RESERVED, safe="") not in redactor.scrub(app.conf.broker_url)


@pytest.mark.parametrize(
    ("url", "broker"),
    [
        ("redis://h:1/0?socket_timeout=2.5&health_check_interval=10", "redis://h:1/0"),
        (
            "rediss://h:1/0?ssl_cert_reqs=none&retry_on_timeout=no&max_connections=40",
            "rediss://h:1/0?ssl_cert_reqs=none",
        ),
        (
            "unix:///r.sock?socket_keepalive=true&socket_connect_timeout=1&db=3",
            "redis+socket:///r.sock?virtual_host=3",
        ),
    ],
)
def test_redis_pys_connection_settings_reach_celery_as_transport_options(url: str, broker: str) -> None:
    """kombu took ``?socket_timeout=5`` for a keyword argument of its Connection: ``TypeError:
    unexpected keyword argument`` at the worker's start. Its Redis transport reads them as
    transport options, parsed as redis-py parses them."""
    assert urls.broker_url(url) == broker
    options = urls.broker_transport_options(url)
    assert options
    assert options == {
        key: value
        for key, value in redis.connection.parse_url(url).items()  # type: ignore[no-untyped-call]  # untyped in redis-py
        if key in urls._TRANSPORT
    }
    app = make_app(Settings(redis_url=url, intake_insecure_no_auth=True))
    assert app.conf.broker_transport_options.items() >= options.items()
    Connection(app.conf.broker_url, transport_options=app.conf.broker_transport_options)  # no TypeError


def test_a_connection_setting_redis_py_would_refuse_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="REDIS_URL: the value of socket_timeout is not a float"):
        urls.broker_transport_options("redis://h:1/0?socket_timeout=soon&password=pw")

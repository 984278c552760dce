"""Which Redis errors the recorder takes as a command refused for good (worker/delivery/recorder.py
``refused``: after EFFECTS_TRIES the outcomes are written without their side effects), read
from the replies as redis-py's own parser turns them into exceptions."""

from __future__ import annotations

import pytest
import redis.exceptions
from redis._parsers.base import BaseParser

from worker.delivery.recorder import refused


@pytest.mark.parametrize(
    "reply",
    [
        # redis-py strips ERR: before, these read as passing, and the write was retried forever
        "ERR invalid expire time in 'expire' command script: 4819, on @user_script:38.",
        "ERR wrong number of arguments for 'hset' command",
        "ERR Error running script (call to f_0123): @user_script:12: bad argument",
        "WRONGTYPE Operation against a key holding the wrong kind of value",
        "EXECABORT Transaction discarded because of previous errors.",
    ],
)
def test_a_command_redis_refuses_as_wrong_is_refused(reply: str) -> None:
    assert refused(BaseParser.parse_error(reply))  # type: ignore[no-untyped-call]  # untyped in redis-py


@pytest.mark.parametrize(
    "reply",
    [
        "OOM command not allowed when used memory > 'maxmemory'.",
        "READONLY You can't write against a read only replica.",
        "NOSCRIPT No matching script. Please use EVAL.",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
        "LOADING Redis is loading the dataset in memory",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "NOREPLICAS Not enough good replicas to write.",
    ],
)
def test_a_server_state_passes(reply: str) -> None:
    assert not refused(BaseParser.parse_error(reply))  # type: ignore[no-untyped-call]  # untyped in redis-py


def test_a_connection_error_passes() -> None:
    assert not refused(redis.exceptions.ConnectionError("Connection refused"))
    assert not refused(OSError("reset"))

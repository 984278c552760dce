"""The group commit's bounds without Redis (the ACCEPT call is a stub): a bounded buffer, a
deadline for every caller whatever the call does, which failures say "not stored" and which
"maybe stored", and one request that fails alone. The same against a real redis-server:
tests/integration/test_group_commit.py and test_load_shedding.py."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from worker.config import Settings
from worker.intake import committer as committer_module
from worker.intake import notices
from worker.intake.committer import (
    GroupCommitter,
    MaybeStored,
    NotStored,
    Overloaded,
    accept_items,
    never_ran,
)
from worker.messenger.validation import InputError, SendRequest, validate

PAGE = "100"


def settings(**extra: Any) -> Settings:
    return Settings(
        page_access_tokens={PAGE: "tok-page-100-abcdef"},
        intake_insecure_no_auth=True,
        redis_url="redis://127.0.0.1:1/0",
        _env_file=None,
        **extra,
    )


def request(i: int, s: Settings) -> SendRequest:
    return validate(
        orjson.dumps({"recipient": {"id": f"c-{i}"}, "message": {"text": "hi"}}), s, path_page_id=PAGE
    )


class Stub:
    """Stands in for accept.lua: holds each call until released (or forever), counts items."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[int] = []

    async def __call__(self, *, keys: list[str], args: list[Any], writes: list[list[Any]]) -> Any:
        n = accept_items(args)
        self.calls.append(n)
        await self.release.wait()
        return [b""] * n


def committer_with(s: Settings, stub: Any) -> GroupCommitter:
    committer = GroupCommitter(None, s)  # type: ignore[arg-type]  # the client is never reached
    committer._accept = stub  # type: ignore[method-assign]
    return committer


def test_beyond_max_pending_a_request_is_refused_at_once_and_nothing_is_enqueued() -> None:
    s = settings(intake_max_pending=3, batch_window_ms=0)

    async def scenario() -> None:
        stub = Stub()
        committer = committer_with(s, stub)
        held = [asyncio.create_task(committer.submit(request(i, s), "", f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        assert committer.pending == 3
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await committer.submit(request(9, s), "", "r9")
        assert time.monotonic() - started < 0.01
        assert refused.value.code == "overloaded"
        assert sum(stub.calls) == 3  # the refused request reached no commit
        stub.release.set()
        assert all(accepted for _, accepted in await asyncio.gather(*held))
        assert committer.pending == 0
        assert (await committer.submit(request(10, s), "", "r10"))[1]

    asyncio.run(scenario())


def test_every_caller_is_answered_by_its_deadline_when_the_call_never_returns() -> None:
    """A commit held past its requests' deadline: they are answered MaybeStored (the script was
    sent); the requests waiting behind it NotStored (never sent); none waits past its deadline."""
    s = settings(intake_deadline_seconds=0.3, batch_window_ms=0)

    async def scenario() -> None:
        stub = Stub()  # never released
        committer = committer_with(s, stub)
        loop = asyncio.get_running_loop()

        async def timed(i: int) -> tuple[BaseException | None, float]:
            started = loop.time()
            try:
                await committer.submit(request(i, s), "", f"r{i}")
            except (MaybeStored, NotStored) as exc:
                return exc, loop.time() - started
            return None, loop.time() - started

        first = asyncio.create_task(timed(0))
        await asyncio.sleep(0.01)  # in the stalled commit
        waiting = [asyncio.create_task(timed(i)) for i in range(1, 6)]  # behind it
        results = await asyncio.wait_for(asyncio.gather(first, *waiting), 2)
        assert isinstance(results[0][0], MaybeStored)
        assert results[0][0].code == "unavailable_maybe_stored"
        assert all(isinstance(exc, NotStored) and exc.code == "unavailable" for exc, _ in results[1:])
        assert all(elapsed <= 0.3 + 0.1 for _, elapsed in results), results
        assert stub.calls == [1]  # nothing was sent with too little time left
        assert committer.pending == 0

    asyncio.run(scenario())


def test_a_request_that_cannot_be_encoded_fails_alone() -> None:
    s = settings(batch_window_ms=0)
    payload: Any = 1
    for _ in range(300):
        payload = {"a": payload}
    bad = SendRequest(page_id=PAGE, psid="bad", body={"recipient": {"id": "bad"}, "message": payload})

    async def scenario() -> list[Any]:
        stub = Stub()
        stub.release.set()
        committer = committer_with(s, stub)
        tasks = [committer.submit(r, "", "r") for r in (request(0, s), bad, request(1, s))]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)
        assert stub.calls == [2]
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[1], InputError)
    assert (results[1].status, results[1].code) == (422, "too_deep")
    assert results[0][1]
    assert results[2][1]


def test_a_commit_that_breaks_after_the_call_answers_its_callers_and_the_committer_goes_on() -> None:
    s = settings(batch_window_ms=0)

    async def scenario() -> None:
        calls = 0

        async def wrong(*, keys: list[str], args: list[Any], writes: list[list[Any]]) -> Any:
            nonlocal calls
            calls += 1
            return None if calls == 1 else [b""] * accept_items(args)  # the first answer is no list

        committer = committer_with(s, wrong)
        with pytest.raises(MaybeStored):
            await asyncio.wait_for(committer.submit(request(0, s), "", "r0"), 2)
        assert (await asyncio.wait_for(committer.submit(request(1, s), "", "r1"), 2))[1]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("exc", "ran"),
    [
        (rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), False),
        (rexc.ReadOnlyError("You can't write against a read only replica."), False),
        (rexc.BusyLoadingError("Redis is loading the dataset in memory"), False),
        (rexc.ResponseError("BUSY Redis is busy running a script."), False),
        (rexc.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), False),
        (rexc.TimeoutError("Timeout connecting to server"), False),
        (rexc.ConnectionError("No connection available."), False),
        (ConnectionRefusedError(111, "Connection refused"), False),
        (rexc.TimeoutError("Timeout reading from 127.0.0.1:6379"), True),
        (rexc.ConnectionError("Connection closed by server."), True),
        (rexc.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), True),
        (TimeoutError(), True),  # the deadline: the call had started
        (asyncio.CancelledError(), True),
        (ValueError("a bug"), True),
    ],
)
def test_only_errors_that_prove_the_script_did_not_run_say_not_stored(exc: BaseException, ran: bool) -> None:
    assert never_ran(exc) is not ran


def test_redis_py_s_own_connection_refused_error_is_recognised() -> None:
    """Pins the message words never_ran relies on against the installed redis-py."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there

    async def scenario() -> BaseException:
        client = aioredis.Redis(port=port, socket_connect_timeout=1)
        try:
            await client.ping()
        except Exception as exc:  # noqa: BLE001  # whatever redis-py raises is the subject
            return exc
        finally:
            await client.aclose()
        raise AssertionError("nothing listens on the port")

    assert never_ran(asyncio.run(scenario()))


def test_a_throttled_warning_logs_at_once_then_at_most_once_per_interval_with_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines: list[tuple[str, dict[str, Any]]] = []

    class Recorder:
        def warning(self, event: str, **fields: Any) -> None:
            lines.append((event, fields))

    monkeypatch.setattr(notices, "log", Recorder())
    warn = notices.Throttled("intake.test", every=0.2)
    assert warn.note(request_id="a")
    assert not any(warn.note(request_id=str(i)) for i in range(5))
    time.sleep(0.25)
    assert warn.note(request_id="b")
    assert [(event, fields["count"], fields["request_id"]) for event, fields in lines] == [
        ("intake.test", 1, "a"),
        ("intake.test", 6, "b"),
    ]


def test_the_shedding_warning_is_throttled() -> None:
    assert committer_module.GroupCommitter(None, settings())._shed.every == 1.0  # type: ignore[arg-type]


def test_uvicorn_s_refusal_warnings_are_throttled_other_records_pass() -> None:
    import logging

    from worker.intake.app import UVICORN_REFUSAL

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger = logging.getLogger("test.uvicorn.error")
    logger.propagate = False
    logger.addHandler(Keep())
    logger.addFilter(notices.ThrottledRecords(UVICORN_REFUSAL, every=60.0))
    for _ in range(5):
        logger.warning(UVICORN_REFUSAL)  # what uvicorn logs per refused request
    logger.warning("Something else.")
    assert seen == [f"{UVICORN_REFUSAL} (1 since the last such line)", "Something else."]

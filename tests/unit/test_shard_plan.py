"""Changing REDIS_SHARDS (docs/scaling.md): which keys name a page, which pages a longer list
would move away from their state, and what a check after a change finds. The scan itself runs on
real redis-servers in tests/integration/test_shards.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shards import winner
from worker.config import Settings
from worker.store import Keys, residents, shards

URLS = ["redis://127.0.0.1:7000/0", "redis://127.0.0.1:7001/0", "redis://127.0.0.1:7002/0"]
KEYS = Keys("bmw", "messenger")


def settings(n: int, pins: dict[str, int] | None = None) -> Settings:
    return Settings(redis_shards=URLS[:n], shard_pages=pins or {})


def pages(home: int, after: int, count: int = 3) -> list[str]:
    """Pages that two shards route to ``home`` and three to ``after``."""
    found = (p for p in (f"p{i}" for i in range(10_000)) if winner(p, 2) == home and winner(p, 3) == after)
    return [next(found) for _ in range(count)]


@pytest.mark.parametrize(
    ("key", "found"),
    [
        (KEYS.window("100", "555"), ("100", "recipients")),
        ("bmw:win:100:555", ("100", "recipients")),  # before routes: left to expire
        (KEYS.window_closed("100", "555"), ("100", "recipients")),
        (KEYS.suppressed("100", "555"), ("100", "suppressions")),
        (KEYS.tag_suppressed("100", "555"), ("100", "suppressions")),
        (KEYS.external("100", "555"), ("100", "links")),
        (KEYS.park("100", "555"), ("100", "parked")),
        (KEYS.page_waits("100"), ("100", "waiting")),
        (KEYS.template_waits("100", "order_update|en_US"), ("100", "waiting")),
        (KEYS.pause("100"), ("100", "pause")),
        (KEYS.inbound_mid("100", "m_abc:1"), ("100", "webhooks")),
        (KEYS.bucket("100", "text"), ("100", "limiter")),
        (KEYS.recipient_bucket("100", "555"), ("100", "limiter")),
        (KEYS.templates("100"), None),  # a copy of Graph's catalogue: read again where it lands
        (KEYS.buckets, None),
        (KEYS.page_usage, None),
        (KEYS.paused, None),
        (KEYS.parked, None),
        (KEYS.templates_synced, None),
        (KEYS.delivery("ab" * 16), None),  # a record: its page is inside (the scan reads it)
        ("other:wu:100:555", None),  # not this service's prefix
        ("bmw:wu:", None),
    ],
)
def test_the_keys_that_name_a_page(key: str, found: tuple[str, str] | None) -> None:
    assert residents.page_of_key("bmw", key) == found


def test_a_plan_names_the_pages_with_state_that_a_longer_list_moves_and_pins_them() -> None:
    s = settings(2, {"pinned": 1})
    to_new_from_1, to_new_from_0, staying = pages(1, 2, 1), pages(0, 2, 1), pages(0, 0, 1)
    held = [
        {to_new_from_0[0]: {"pause"}, staying[0]: {"limiter"}, "pinned": {"links"}},
        {to_new_from_1[0]: {"recipients", "deliveries"}},
    ]
    moves = shards.plan(s, held, 3)
    assert [(m.page, m.home, m.to, m.state) for m in moves] == [
        (to_new_from_0[0], 0, 2, ("pause",)),
        (to_new_from_1[0], 1, 2, ("deliveries", "recipients")),
    ]
    pins = shards.pins(s, moves)
    assert pins == dict(sorted({"pinned": 1, to_new_from_0[0]: 0, to_new_from_1[0]: 1}.items()))
    after = settings(3, pins)
    for page in (*to_new_from_0, *to_new_from_1, *staying):  # with the pins, nothing with state moves
        assert shards.of_page(after, page) == shards.of_page(s, page)
    assert shards.of_page(after, "pinned") == 1
    assert shards.plan(s, held, 2) == []  # the same list: nothing moves
    unseen = pages(0, 2, 2)[1]  # the first is the pinned one's
    assert shards.of_page(after, unseen) == 2  # a page never seen still goes to the new shard


def test_a_plan_from_one_redis() -> None:
    one = Settings()
    moving, staying = pages(1, 1, 1)[0], pages(0, 0, 1)[0]
    moves = shards.plan(one, [{moving: {"links"}, staying: {"links"}}], 2)
    assert [(m.page, m.home, m.to) for m in moves] == [(moving, 0, 1)]
    assert shards.of_page(settings(2, shards.pins(one, moves)), moving) == 0


def test_a_check_sorts_stranded_state_from_draining_deliveries_and_split_pages() -> None:
    grown = settings(3)  # a third shard appended without pins
    moved_0, moved_1 = pages(0, 2, 3), pages(1, 2, 2)
    held = [
        {moved_0[0]: {"suppressions"}, moved_0[1]: {"deliveries"}, moved_0[2]: {"pause"}},
        {moved_1[0]: {"links"}, moved_1[1]: {"deliveries"}},
        {moved_0[2]: {"limiter"}},  # its traffic already ran on the new shard: split
    ]
    found = shards.check(grown, held)
    assert {(m.page, m.home) for m in found.stranded} == {(moved_0[0], 0), (moved_0[2], 0), (moved_1[0], 1)}
    assert {(m.page, m.home) for m in found.draining} == {(moved_0[1], 0), (moved_1[1], 1)}
    assert found.split == [moved_0[2]]
    assert found.pins == dict(sorted({moved_0[0]: 0, moved_1[0]: 1}.items()))
    fixed = shards.check(settings(3, found.pins), held)
    assert [m.page for m in fixed.stranded] == [moved_0[2]]  # the split page is the operator's call
    assert fixed.pins is None or moved_0[2] not in fixed.pins
    assert shards.check(settings(2), held[:2]).stranded == []  # before the change: all in place


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["shards", "plan"], "--shards must be at least the current count (1)"),
        (["shards", "check", "--shards", "3"], "--shards is plan's"),
    ],
)
def test_the_commands_refuse_what_they_cannot_plan(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.cli import main

    monkeypatch.chdir("/")  # no .env, no running stack's state file
    monkeypatch.delenv("REDIS_SHARDS", raising=False)
    assert main(argv) == 2  # before any Redis is asked
    assert said in capsys.readouterr().err


def test_an_unreachable_shard_is_one_line_naming_the_shards_not_redis_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With REDIS_SHARDS, REDIS_URL is unused: the error names the shard, never REDIS_URL's
    default, and no password."""
    from tests.conftest import free_port
    from worker.cli import main

    monkeypatch.chdir("/")
    dead = [free_port(), free_port()]
    monkeypatch.setenv("REDIS_SHARDS", ",".join(f"redis://:sekrit-pw@127.0.0.1:{p}/0" for p in dead))
    assert main(["shards", "check"]) == 1
    err = capsys.readouterr().err
    assert "shard 0 did not answer" in err
    assert "REDIS_SHARDS" in err
    assert "6379" not in err
    assert "sekrit" not in err


@pytest.mark.parametrize(
    ("key", "found"),
    [
        (KEYS.templates("100"), ("tpl", "100")),
        (KEYS.templates_synced, None),
        (KEYS.templates_lock, None),
        (KEYS.bucket("100", "text"), ("rl", "100")),
        (KEYS.recipient_bucket("100", "555"), ("rl:r", "100")),
        (KEYS.pause("100"), ("pause", "100")),
        (KEYS.external("100", "555"), ("ext", "100")),
    ],
)
def test_the_families_of_a_pages_keys(key: str, found: tuple[str, str] | None) -> None:
    assert residents.family_of_key("bmw", key) == found


def test_a_scan_pattern_matches_a_page_id_literally() -> None:
    from worker.store.pagemove import _glob

    assert _glob("100") == "100"
    assert _glob("1*0?[x]\\") == "1\\*0\\?\\[x\\]\\\\"


@pytest.mark.parametrize(
    ("argv", "shards_env", "said"),
    [
        (["shards", "move", "100"], "", "give PAGE and --to N"),
        (["shards", "move", "100", "--to", "2"], "2", "a shard of REDIS_SHARDS (0..1)"),
        (["shards", "move", "--to", "1"], "2", "give PAGE and --to N"),
        (["shards", "plan", "100", "--shards", "3"], "2", "PAGE, --to and --finish are move's"),
    ],
)
def test_move_refuses_what_it_cannot_do_before_asking_redis(
    argv: list[str],
    shards_env: str,
    said: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.cli import main

    monkeypatch.chdir("/")
    if shards_env:
        monkeypatch.setenv("REDIS_SHARDS", ",".join(URLS[: int(shards_env)]))
    else:
        monkeypatch.delenv("REDIS_SHARDS", raising=False)
    assert main(argv) == 2
    assert said in capsys.readouterr().err


def test_move_follows_the_pin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Before --finish the page must still be routed to its old shard; --finish needs the pin."""
    from worker.cli import main

    monkeypatch.chdir("/")
    monkeypatch.setenv("REDIS_SHARDS", ",".join(URLS[:2]))
    page = pages(1, 1, 1)[0]  # two shards route it to shard 1
    assert main(["shards", "move", page, "--to", "1"]) == 2
    assert "--finish" in capsys.readouterr().err
    assert main(["shards", "move", page, "--to", "0", "--finish"]) == 2
    assert "roll out its pin to shard 0 first" in capsys.readouterr().err


def test_pins_can_come_from_a_file(tmp_path: Path) -> None:
    """SHARD_PAGES=@path: the pins `shards plan` prints can outgrow an environment variable."""
    pins = {f"page-{i}": i % 3 for i in range(10_000)}
    path = tmp_path / "pins.json"
    path.write_text(json.dumps(pins), encoding="utf-8")
    s = Settings(redis_shards=URLS, shard_pages=f"@{path}")
    assert s.shard_pages == pins
    assert shards.of_page(s, "page-4") == 1
    with pytest.raises(ValueError, match="SHARD_PAGES: cannot read"):
        Settings(redis_shards=URLS, shard_pages=f"@{tmp_path / 'missing.json'}")
    path.write_text(json.dumps({"p": 3}), encoding="utf-8")
    with pytest.raises(ValueError, match="SHARD_PAGES: every index must name one of REDIS_SHARDS"):
        Settings(redis_shards=URLS, shard_pages=f"@{path}")


def test_pins_too_long_for_the_environment_are_printed_as_a_file_to_write() -> None:
    from worker.cli.shards import PINS_INLINE, _pins_line

    few = {"100": 0}
    assert _pins_line(few) == 'SHARD_PAGES={"100":0}'
    many = {f"{10**14 + i}": 1 for i in range(PINS_INLINE // 10)}
    line = _pins_line(many)
    assert line.startswith("SHARD_PAGES=@")
    assert len(line) < 200

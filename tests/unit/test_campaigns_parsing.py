"""Attribution headers, Messenger receipts and a page pause's length: parsing only (no Redis)."""

from __future__ import annotations

import pytest

from worker.intake.routes.campaigns import MAX_PAUSE_SECONDS, pause_seconds_ok
from worker.intake.routes.send import MAX_ATTRIBUTION, attribution
from worker.messenger.validation import InputError
from worker.messenger.webhook import MAX_RECEIPT_MIDS, event_to_dict, parse_events
from worker.sandbox.receipts import Receipts


def test_attribution_headers_in_order_empty_ones_absent() -> None:
    assert attribution({}) == ("",) * 5
    headers = {b"x-braze-canvas-id": "cv-1", b"x-braze-send-id": " s-9 ", b"x-braze-campaign-id": ""}
    assert attribution(headers) == ("", "cv-1", "", "", "s-9")


@pytest.mark.parametrize("value", ["a b", "x" * (MAX_ATTRIBUTION + 1), "caf\u00e9", "a\tb", ".", ".."])
def test_a_bad_attribution_value_is_a_422(value: str) -> None:
    with pytest.raises(InputError) as caught:
        attribution({b"x-braze-campaign-id": value})
    assert (caught.value.status, caught.value.code) == (422, "invalid_attribution")


def test_read_and_delivery_receipts_carry_their_watermark_and_mids() -> None:
    payload = {
        "object": "page",
        "entry": [
            {
                "id": "100",
                "time": 1_700_000_000_000,
                "messaging": [
                    {
                        "sender": {"id": "p1"},
                        "recipient": {"id": "100"},
                        "delivery": {"mids": ["m1", 5, ""], "watermark": 1_700_000_000_500},
                    },
                    {"sender": {"id": "p1"}, "recipient": {"id": "100"}, "read": {"watermark": "soon"}},
                    {"sender": {"id": "p2"}, "recipient": {"id": "100"}, "delivery": {"mids": ["m"] * 500}},
                ],
            }
        ],
    }
    delivery, read, many = (event_to_dict(e) for e in parse_events(payload))
    assert (delivery["kind"], delivery["mids"], delivery["watermark"]) == (
        "delivery",
        ["m1"],
        1_700_000_000.5,
    )
    assert (read["kind"], read["watermark"], read["opens_window"]) == ("read", None, False)
    assert len(many["mids"]) == MAX_RECEIPT_MIDS


def test_the_sandbox_receipt_body_is_messengers_shape() -> None:
    from worker.sandbox.receipts import _Receipt

    body = Receipts.body(
        [_Receipt(0, "delivery", "100", "p1", "m1"), _Receipt(0, "read", "100", "p1", "m1")], 1.5
    )
    events = parse_events(__import__("orjson").loads(body))
    assert [(e.kind, e.mids, e.watermark) for e in events] == [("delivery", ("m1",), 1.5), ("read", (), 1.5)]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (60, True),
        (0.5, True),
        (MAX_PAUSE_SECONDS, True),
        (MAX_PAUSE_SECONDS + 1, False),
        (1e16, False),  # once overflowed Redis's EXPIRE, leaving a pause half written
        (10**30, False),
        (0, False),
        (-5, False),
        (True, False),
        (float("nan"), False),
        (float("inf"), False),
        ("60", False),
        (None, False),
    ],
)
def test_a_pause_is_a_number_of_seconds_up_to_366_days(value: object, ok: bool) -> None:
    assert pause_seconds_ok(value) is ok


def test_the_pause_route_refuses_a_pause_too_long_before_asking_redis() -> None:
    from starlette.testclient import TestClient

    from worker.config import Settings
    from worker.intake import create_app

    admin = "tok-admin-abcdef-0123456789abcdefghij"
    settings = Settings(
        admin_tokens=[admin],
        intake_tokens=["tok-intake-abcdef-0123456789abcdefghij"],
        redis_url="redis://127.0.0.1:1/0",  # never reached: refused before any pause
        _env_file=None,
    )
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    with TestClient(create_app(settings)) as client:
        for raw in (
            b'{"seconds": 1e16}',
            b'{"seconds": 31622401}',
            b'{"seconds": true}',
            b'{"seconds": 1e400}',
        ):
            resp = client.post("/v1/pages/1234567890/pause", content=raw, headers=headers)
            assert resp.status_code in (400, 422), (raw, resp.text)
            assert resp.json()["error"]["code"] in ("invalid_body", "invalid_json"), raw
        resp = client.post("/v1/pages/1234567890/pause", content=b'{"seconds": 1e16}', headers=headers)
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, "invalid_body")
        assert "31622400" in resp.json()["error"]["message"]


@pytest.mark.parametrize("given", ["1e16", "31622401", "nan", "inf", "0", "-1", "soon"])
def test_the_cli_refuses_the_pauses_the_api_refuses(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["pages", "pause", "1234567890", "--seconds", given])
    assert exited.value.code == 2
    assert "--seconds" in capsys.readouterr().err


def test_the_cli_takes_a_pause_within_the_bound() -> None:
    from worker.cli import build_parser

    args = build_parser().parse_args(["pages", "pause", "1234567890", "--seconds", "31622400"])
    assert args.seconds == MAX_PAUSE_SECONDS
    assert build_parser().parse_args(["pages", "pause", "1234567890"]).seconds is None


@pytest.mark.parametrize(
    "argv",
    [
        ["dead-letters", "list", "--older-than", "nan"],
        ["dead-letters", "list", "--older-than", "inf"],
        ["dead-letters", "purge", "--older-than", "-5"],
        ["dead-letters", "list", "--limit", "0"],
        ["campaigns", "stop", ""],
        ["campaigns", "show", "c" * 129],
    ],
)
def test_the_cli_refuses_what_redis_or_the_service_would_refuse_with_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """One line and exit 2 (argparse), not a ResponseError or ValueError traceback later."""
    from worker.cli import build_parser

    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err

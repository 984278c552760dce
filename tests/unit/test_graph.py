"""worker.graph: the §3.3 error table, BUC headers, transport errors and GraphClient (MockTransport)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from worker.graph import (
    AmbiguousError,
    GraphClient,
    GraphError,
    PagePausedError,
    PageRestrictedError,
    PermanentError,
    RateLimitedError,
    RecipientUnreachableError,
    SendResult,
    TagAbuseError,
    TagRejectedError,
    TokenInvalidError,
    TransientError,
    UnconfirmedSendError,
    WindowClosedError,
    from_response,
    from_transport,
    parse_buc_usage,
    parse_buc_wait,
)

TOKEN = "EAAG-page-token-0123456789abcdef"
APP_SECRET = "app-secret-0123456789"
BASE = "https://graph.test/v25.0"


def graph_response(
    code: int,
    subcode: int | None = None,
    message: str = "(#0) error",
    *,
    status: int = 400,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = "AbCdEfGhIjK"
    error.update(extra)
    return httpx.Response(status, json={"error": error}, headers=headers)


# (code, subcode, message, expected class); one row of messenger-platform.md §3.3 each.
T = TransientError
ROWS: list[tuple[str, int, int | None, str, type[GraphError]]] = [
    ("1200", 1200, None, "Temporary send message failure. Please try again later.", T),
    ("2", 2, None, "An unexpected error has occurred. Please retry your request later.", T),
    ("1/99", 1, 99, "An unknown error occurred.", T),
    ("2018321", 2018321, None, "user in automated Q&A flow", T),
    ("100/2018008", 100, 2018008, "(#100) Failed to fetch the file from the url", T),
    ("100/2018294", 100, 2018294, "(#100) Video upload timed out", T),
    ("1/1357046", 1, 1357046, "Received invalid JSON reply.", UnconfirmedSendError),
    ("4", 4, None, "(#4) Application request limit reached", RateLimitedError),
    ("4/2018022", 4, 2018022, "Too many send requests to phone numbers", RateLimitedError),
    ("17", 17, None, "(#17) User request limit reached", RateLimitedError),
    ("32", 32, None, "(#32) Page request limit reached", RateLimitedError),
    ("613", 613, None, "(#613) Calls to this api have exceeded the rate limit.", RateLimitedError),
    ("613/1996", 613, 1996, "inconsistent request volume", RateLimitedError),
    ("613/2534040", 613, 2534040, "Calls to this api have exceeded the rate limit.", RateLimitedError),
    ("80001", 80001, None, "There have been too many calls to this Page account.", RateLimitedError),
    ("80006", 80006, None, "Messenger BUC rate limit", RateLimitedError),
    ("4/2018354", 4, 2018354, "Marketing Messages min delay between notifications", PermanentError),
    ("2/2018344", 2, 2018344, "Page admin must accept the privacy ToS", PermanentError),
    ("9/2018352", 9, 2018352, "User is performing too many actions", PermanentError),
    ("10", 10, None, "(#10) Application does not have permission for this action", PermanentError),
    ("10/1893015", 10, 1893015, "user stopped notification messages", PermanentError),
    ("10/2018336", 10, 2018336, "User Thread Impact", PermanentError),
    ("10/1404170", 10, 1404170, "Page temporarily restricted from opt-in requests", PermanentError),
    ("100", 100, None, "(#100) Invalid FBID", PermanentError),
    ("100/33", 100, 33, "Object does not exist", PermanentError),
    ("100/2018014", 100, 2018014, "Cannot send both message and state", PermanentError),
    ("100/2018047", 100, 2018047, "Upload attachment failure", PermanentError),
    ("100/2018074", 100, 2018074, "Possible invalid ID or you do not own the attachment.", PermanentError),
    ("100/2018109", 100, 2018109, "Attachment size exceeds allowable limit", PermanentError),
    ("100/2018164", 100, 2018164, "Incorrect App ID", PermanentError),
    ("100/2018320", 100, 2018320, "Invalid product id", PermanentError),
    ("100/2018328", 100, 2018328, "Product template needs v8+", PermanentError),
    ("100/2018032", 100, 2018032, "Invalid data", PermanentError),
    ("100/2018034", 100, 2018034, "Message cannot be empty", PermanentError),
    ("200", 200, None, "(#200) Cannot message users who are not admins", PermanentError),
    ("200/2018021", 200, 2018021, "phone-matching fee", PermanentError),
    ("200/2018027", 200, 2018027, "pages_messaging_phone_number not reviewed", PermanentError),
    ("200/2018028", 200, 2018028, "pages_messaging not reviewed", PermanentError),
    ("200/2534041", 200, 2534041, "IG owner disabled access", PermanentError),
    ("613/1893016", 613, 1893016, "multiple opt-in requests same topic", PermanentError),
    ("2022", 2022, None, "commerce messages temporarily disabled", PermanentError),
    ("2018300", 2018300, None, "another app is controlling this thread now", PermanentError),
    ("10303", 10303, None, "invalid account_linking_token", PermanentError),
    ("9000001", 9000001, None, "message deleted by user or business", PermanentError),
    ("10/2018278", 10, 2018278, "This message is sent outside of allowed window.", WindowClosedError),
    ("10/2534022", 10, 2534022, "This message is sent outside of allowed window.", WindowClosedError),
    ("10/2018065", 10, 2018065, "You need News Messaging permission", WindowClosedError),
    ("551", 551, None, "This person isn't receiving messages from you right now.", RecipientUnreachableError),
    ("551/1545041", 551, 1545041, "This person isn't available right now.", RecipientUnreachableError),
    ("200/1545041", 200, 1545041, "Message Not Sent: This person isn't available", RecipientUnreachableError),
    ("10/2018108", 10, 2018108, "They can't receive your messages right now.", RecipientUnreachableError),
    ("100/2018001", 100, 2018001, "No matching user found", RecipientUnreachableError),
    ("100-invalid-tag", 100, None, "(#100) Invalid tag.", TagRejectedError),
    (
        "100-messaging-type",
        100,
        None,
        "(#100) Messaging type should be MESSAGE_TAG for tagged messages.",
        TagRejectedError,
    ),
    ("613/2018338", 613, 2018338, "Warning! You are engaging in behavior that may be ...", TagAbuseError),
    ("190", 190, None, "Invalid OAuth access token.", TokenInvalidError),
    ("190/458", 190, 458, "Error validating access token: app not installed", TokenInvalidError),
    ("190/460", 190, 460, "Error validating access token: password changed", TokenInvalidError),
    ("190/463", 190, 463, "Error validating access token: Session has expired", TokenInvalidError),
    ("190/467", 190, 467, "Error validating access token: invalid", TokenInvalidError),
    ("190/492", 190, 492, "Error validating access token: invalid session", TokenInvalidError),
    ("368", 368, None, "Temporarily blocked for policies violations", PageRestrictedError),
    ("10/1893063", 10, 1893063, "You are temporarily restricted from sending messages.", PageRestrictedError),
]


@pytest.mark.parametrize(
    ("code", "subcode", "message", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_error_table_row(code: int, subcode: int | None, message: str, expected: type[GraphError]) -> None:
    error = from_response(graph_response(code, subcode, message))
    assert type(error) is expected
    assert error.info.code == code
    assert error.info.subcode == subcode
    assert error.info.fbtrace_id == "AbCdEfGhIjK"
    assert error.info.http_status == 400
    assert error.reason == expected.reason


def test_deprecated_tag_invalid_parameter_is_tag_rejected_only_with_a_tag() -> None:
    response = graph_response(100, None, "(#100) Invalid parameter")
    assert type(from_response(response, tag="ACCOUNT_UPDATE")) is TagRejectedError
    assert type(from_response(response)) is PermanentError


def test_hierarchy() -> None:
    assert issubclass(AmbiguousError, TransientError)
    assert issubclass(TokenInvalidError, PagePausedError)
    assert issubclass(PageRestrictedError, PagePausedError)
    assert not issubclass(RateLimitedError, TransientError)


def test_is_transient_flag_turns_an_unknown_code_transient() -> None:
    assert type(from_response(graph_response(3, None, "x", is_transient=True))) is TransientError
    assert type(from_response(graph_response(3, None, "x", is_transient=False))) is PermanentError
    # Bad requests never become retries, whatever the flag says.
    assert type(from_response(graph_response(100, 33, "x", is_transient=True))) is PermanentError


def test_rate_limited_carries_buc_wait() -> None:
    header = orjson.dumps({"1": [{"type": "messenger", "estimated_time_to_regain_access": 2}]}).decode()
    error = from_response(graph_response(80006, headers={"x-business-use-case-usage": header}))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 120.0
    # Only rate-limit errors carry a wait.
    other = from_response(graph_response(2, headers={"x-business-use-case-usage": header}))
    assert other.retry_after is None


def test_http_502_html_body_is_ambiguous() -> None:
    # a gateway answered: Graph behind it may have sent the message (§3.3 notes, §1.4)
    response = httpx.Response(502, text="<html><body>Bad Gateway</body></html>")
    error = from_response(response)
    assert type(error) is AmbiguousError
    assert error.info.code is None
    assert error.info.http_status == 502


def test_http_500_json_without_error_is_ambiguous() -> None:
    assert type(from_response(httpx.Response(500, json={"ok": False}))) is AmbiguousError


def test_http_500_with_graph_code_2_is_transient() -> None:
    response = graph_response(2, None, "(#2) Service temporarily unavailable", status=500, is_transient=True)
    assert type(from_response(response)) is TransientError


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(400, text="Bad Request"),
        httpx.Response(400, json={"error": "string"}),
        httpx.Response(403, content=b""),
    ],
    ids=["text", "error-not-object", "empty"],
)
def test_4xx_without_graph_error_is_permanent(response: httpx.Response) -> None:
    error = from_response(response)
    assert type(error) is PermanentError
    assert error.info.code is None


# ------------------------------------------------------------------------------------------------
# X-Business-Use-Case-Usage


def buc(value: object) -> httpx.Headers:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return httpx.Headers({"X-Business-Use-Case-Usage": text})


def test_parse_buc_wait_absent() -> None:
    assert parse_buc_wait(httpx.Headers()) is None
    assert parse_buc_usage(httpx.Headers()) is None


def test_parse_buc_wait_minutes_to_seconds() -> None:
    headers = buc({"123": [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 5}]})
    assert parse_buc_wait(headers) == 300.0


def test_parse_buc_wait_takes_the_max() -> None:
    headers = buc(
        {
            "1": [
                {"type": "messenger", "estimated_time_to_regain_access": 3},
                {"type": "pages", "estimated_time_to_regain_access": 12},
            ],
            "2": [{"type": "messenger", "estimated_time_to_regain_access": 7.5}],
        }
    )
    assert parse_buc_wait(headers) == 720.0


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "{",
        [1, 2],
        {"1": "x"},
        {"1": [1, "a"]},
        {"1": [{"type": "messenger", "call_count": 100}]},
        {"1": [{"estimated_time_to_regain_access": "5"}]},
        {"1": [{"estimated_time_to_regain_access": -3}]},
    ],
    ids=[
        "text",
        "truncated",
        "list",
        "str-entries",
        "non-dict-entries",
        "no-estimate",
        "str-estimate",
        "negative",
    ],
)
def test_parse_buc_wait_garbage(value: object) -> None:
    assert parse_buc_wait(buc(value)) is None


def test_parse_buc_wait_boolean_is_garbage() -> None:
    headers = buc({"1": [{"estimated_time_to_regain_access": True, "call_count": True}]})
    assert parse_buc_wait(headers) is None
    assert parse_buc_usage(headers) is None


def test_parse_buc_usage_is_the_max_percentage() -> None:
    headers = buc(
        {
            "1": [{"type": "messenger", "call_count": 28, "total_cputime": 25, "total_time": 61}],
            "2": [{"type": "pages", "call_count": 97, "total_cputime": 3, "total_time": 4}],
        }
    )
    assert parse_buc_usage(headers) == 97
    assert parse_buc_usage(buc({"1": [{"type": "messenger", "total_cputime": 12.7}]})) == 12
    assert parse_buc_usage(buc("garbage")) is None
    assert parse_buc_usage(buc({"1": [{"type": "messenger"}]})) is None


# ------------------------------------------------------------------------------------------------
# Transport errors

REQUEST = httpx.Request("POST", f"{BASE}/100/messages")


@pytest.mark.parametrize(
    "exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout], ids=lambda t: t.__name__
)
def test_transport_error_before_sending_is_transient(exc_type: type[httpx.TransportError]) -> None:
    error = from_transport(exc_type("boom", request=REQUEST))
    assert isinstance(error, TransientError)
    assert not isinstance(error, AmbiguousError)
    assert exc_type.__name__ in error.info.message


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ReadTimeout, httpx.WriteTimeout, httpx.RemoteProtocolError, httpx.ReadError],
    ids=lambda t: t.__name__,
)
def test_transport_error_after_sending_is_ambiguous(exc_type: type[httpx.TransportError]) -> None:
    error = from_transport(exc_type("boom", request=REQUEST))
    assert type(error) is AmbiguousError
    assert error.reason == "ambiguous"


# ------------------------------------------------------------------------------------------------
# GraphClient with a mock transport

Handler = Callable[[httpx.Request], httpx.Response]  # httpx.MockTransport accepts sync handlers


def run_send(
    handler: Handler,
    *,
    page_id: str = "100",
    body: dict[str, Any] | None = None,
    app_secret: str | None = None,
) -> SendResult:
    async def go() -> SendResult:
        client = GraphClient(BASE, app_secret=app_secret, transport=httpx.MockTransport(handler))
        try:
            return await client.send(
                page_id, TOKEN, body or {"recipient": {"id": "p1"}, "message": {"text": "hi"}}
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def run_send_error(handler: Handler, **kwargs: Any) -> GraphError:
    with pytest.raises(GraphError) as caught:
        run_send(handler, **kwargs)
    return caught.value


def test_send_success() -> None:
    seen: list[httpx.Request] = []
    body = {"recipient": {"id": "p1"}, "messaging_type": "UPDATE", "message": {"text": "héllo"}}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        usage = orjson.dumps({"100": [{"type": "messenger", "call_count": 42}]}).decode()
        return httpx.Response(
            200,
            json={"recipient_id": "p1", "message_id": "m_abc"},
            headers={"x-business-use-case-usage": usage},
        )

    result = run_send(handler, body=body)
    assert result.message_id == "m_abc"
    assert result.recipient_id == "p1"
    assert result.http_status == 200
    assert result.usage_pct == 42
    assert result.latency_ms >= 0
    (request,) = seen
    assert request.method == "POST"
    assert request.url.host == "graph.test"
    assert request.url.path == "/v25.0/100/messages"
    assert request.url.params["access_token"] == TOKEN
    assert "appsecret_proof" not in request.url.params
    assert request.headers["content-type"] == "application/json"
    assert orjson.loads(request.content) == body
    # the client's explicit timeouts travel with the request (the transport applies them)
    assert request.extensions["timeout"] == {"connect": 5.0, "read": 20.0, "write": 20.0, "pool": 20.0}


def test_send_with_app_secret_adds_appsecret_proof() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"recipient_id": "p1", "message_id": "m_1"})

    run_send(handler, app_secret=APP_SECRET)
    expected = hmac.new(APP_SECRET.encode(), TOKEN.encode(), hashlib.sha256).hexdigest()
    assert seen[0].url.params["appsecret_proof"] == expected
    assert seen[0].url.params["access_token"] == TOKEN


def test_pseudo_page_is_sent_to_me() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"recipient_id": "p1", "message_id": "m_1"})

    run_send(handler, page_id="t-0123456789abcdef")
    assert seen[0].url.path == "/v25.0/me/messages"


def test_success_without_json_body_is_not_a_send() -> None:
    # Graph's success answer names the message (§1.4): a bare "OK" is not it
    error = run_send_error(lambda _request: httpx.Response(200, text="OK"))
    assert type(error) is AmbiguousError
    assert error.info.http_status == 200


def test_send_error_is_classified_with_info() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return graph_response(10, 2018278, "This message is sent outside of allowed window.")

    error = run_send_error(handler)
    assert type(error) is WindowClosedError
    assert error.info.code == 10
    assert error.info.subcode == 2018278
    assert error.info.fbtrace_id == "AbCdEfGhIjK"
    assert error.info.http_status == 400
    assert TOKEN not in str(error)


def test_send_passes_the_body_tag_to_classification() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return graph_response(100, None, "(#100) Invalid parameter")

    tagged = {
        "recipient": {"id": "p1"},
        "messaging_type": "MESSAGE_TAG",
        "tag": "ACCOUNT_UPDATE",
        "message": {"text": "x"},
    }
    assert type(run_send_error(handler, body=tagged)) is TagRejectedError
    assert type(run_send_error(handler)) is PermanentError


def test_send_rate_limited_carries_retry_after() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        usage = orjson.dumps({"100": [{"type": "messenger", "estimated_time_to_regain_access": 3}]}).decode()
        return graph_response(80006, headers={"x-business-use-case-usage": usage})

    error = run_send_error(handler)
    assert type(error) is RateLimitedError
    assert error.retry_after == 180.0


@pytest.mark.parametrize(
    ("exc_type", "expected"),
    [(httpx.ReadTimeout, AmbiguousError), (httpx.ConnectError, TransientError)],
    ids=["read-timeout", "connect-error"],
)
def test_send_transport_failure(exc_type: type[httpx.TransportError], expected: type[GraphError]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type(f"failed {request.url}", request=request)  # the message carries the token URL

    error = run_send_error(handler, app_secret=APP_SECRET)
    assert type(error) is expected
    assert error.__cause__ is None
    assert error.__suppress_context__
    for text in (str(error), repr(error), error.info.message):
        assert TOKEN not in text
        assert "appsecret_proof" not in text


def test_aclose_is_idempotent_and_sending_works_after_it() -> None:
    async def go() -> None:
        client = GraphClient(BASE, transport=httpx.MockTransport(lambda _r: httpx.Response(200, json={})))
        assert (await client.send("100", TOKEN, {"recipient": {"id": "p1"}})).http_status == 200
        await client.aclose()
        await client.aclose()
        assert (await client.send("100", TOKEN, {"recipient": {"id": "p1"}})).http_status == 200
        await client.aclose()

    asyncio.run(go())


def test_client_repr_hides_the_app_secret() -> None:
    client = GraphClient(BASE, app_secret=APP_SECRET)
    assert APP_SECRET not in repr(client)
    assert APP_SECRET not in str(client)


def test_parsed_urls_are_cached_per_token_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL (with token and proof) is parsed once per (path, token); the cache cannot grow unbounded."""
    import worker.graph.client as graph_module

    monkeypatch.setattr(graph_module, "URL_CACHE_SIZE", 3)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params["access_token"])
        return httpx.Response(200, json={"message_id": "m"})

    async def go() -> int:
        client = GraphClient(BASE, app_secret=APP_SECRET, transport=httpx.MockTransport(handler))
        try:
            for token in ("t1", "t2", "t1", "t3", "t4", "t5"):
                await client.send("100", token, {"recipient": {"id": "p"}})
            return len(client._urls)
        finally:
            await client.aclose()

    cached = asyncio.run(go())
    assert seen == ["t1", "t2", "t1", "t3", "t4", "t5"]  # each call carries its own token
    assert cached <= 3

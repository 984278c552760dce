"""Graph-shaped answers: Meta's error messages, error bodies and the refusal that carries them.

Owns :class:`Answer` (what the send endpoint writes back), :func:`graph_error` (an error body as
Graph sends it: ``message``, ``type``, ``code``, ``error_subcode``, ``fbtrace_id``, ``is_transient``;
HTTP 500 for the transient server codes 1, 2 and 1200, else 400; ``X-Business-Use-Case-Usage`` on
the rate-limit codes) and :class:`Refusal`, the exception that carries an error answer out of the
checks. Meta's messages come from messenger-platform.md §2.3, §3.2 and §3.3.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NoReturn

import orjson

_SERVER_ERROR_CODES: Final = frozenset({1, 2, 1200})
_RATE_LIMIT_CODES: Final = frozenset({4, 17, 32, 613, 80001, 80006})
_TAG_ABUSE: Final = (613, 2018338)

# Meta's messages (messenger-platform.md §2.3, §3.2, §3.3), looked up by (code, subcode) then (code, None).
_MESSAGES: Final[Mapping[tuple[int, int | None], str]] = MappingProxyType(
    {
        (1, None): "An unknown error occurred.",
        (1, 1357046): "Received Invalid JSON reply.",
        (2, None): "An unexpected error has occurred. Please retry your request later.",
        (2, 2018344): "(#2) Service temporarily unavailable",
        (4, None): "(#4) Application request limit reached",
        (4, 2018022): "(#4) Too many send requests to phone numbers",
        (4, 2018354): "(#4) The minimum delay between Marketing Messages notifications has not passed",
        (9, 2018352): "(#9) User is performing too many actions",
        (10, None): "(#10) Application does not have permission for this action",
        (10, 2018278): "(#10) This message is sent outside of allowed window.",
        (10, 2534022): "(#10) This message is sent outside of allowed window.",
        (10, 2018065): "(#10) This message is sent outside of allowed window. "
        "You need News Messaging permission to be able to send messages outside the window.",
        (10, 2018108): "(#10) They can't receive your messages right now.",
        (10, 1893063): "(#10) You are temporarily restricted from sending messages.",
        (10, 1893015): "(#10) The user has stopped notification messages for this topic.",
        (17, None): "(#17) User request limit reached",
        (32, None): "(#32) Page request limit reached",
        (100, None): "(#100) Invalid parameter",
        (100, 2018001): "(#100) No matching user found",
        (100, 2018008): "(#100) Failed to fetch the file from the url",
        (100, 2018014): "(#100) Cannot send both message and state",
        (100, 2018034): "(#100) Message cannot be empty, must provide valid attachment or text",
        (100, 2018047): "(#100) Upload attachment failure.",
        (100, 2018074): "(#100) Possible invalid ID or you do not own the attachment.",
        (100, 2018109): "(#100) Attachment size exceeds allowable limit",
        (100, 2018294): "(#100) Video upload timed out or video is corrupted",
        (190, None): "Invalid OAuth access token.",
        (190, 460): "Error validating access token: The session has been invalidated because the user "
        "changed their password or Facebook has changed the session for security reasons.",
        (190, 463): "Error validating access token: Session has expired",
        (200, None): "(#200) Cannot message users who are not admins, developers or testers of the app "
        "until pages_messaging permission is reviewed and the app is live.",
        (200, 1545041): "(#200) Message Not Sent: This person isn't available right now.",
        (368, None): "(#368) Temporarily blocked for policies violations",
        (551, None): "(#551) This person isn't receiving messages from you right now.",
        (551, 1545041): "(#551) This person isn't available right now.",
        (613, None): "(#613) Calls to this api have exceeded the rate limit.",
        (613, 2018338): "(#613) Warning! You are engaging in behavior that may be considered bothersome or "
        "abusive by users. You must significantly decrease the rate at which you are sending messages "
        "using message tags to this person.",
        (1200, None): "(#1200) Temporary send message failure. Please try again later.",
        (80001, None): "(#80001) There have been too many calls to this Page account. Wait a bit and try "
        "again. For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/"
        "rate-limiting.",
        (80006, None): "(#80006) There have been too many messages sent to this user. "
        "Please wait a while and try again",
    }
)

_JSON: Final = b"application/json"


@dataclass(slots=True)
class Answer:
    """What the send endpoint writes back (``drop``: nothing, the connection is closed) and records."""

    status: int
    body: bytes
    content_type: bytes = _JSON
    code: int | None = None
    subcode: int | None = None
    message_id: str | None = None
    buc: bytes | None = None
    drop: bool = False


def graph_error(
    code: int,
    subcode: int | None = None,
    message: str | None = None,
    *,
    page_id: str | None = None,
    regain_minutes: int = 0,
    user_msg: str | None = None,
) -> Answer:
    """Graph's error body for ``code``/``subcode`` (Meta's message unless ``message`` is given)."""
    if message is None:
        message = _MESSAGES.get((code, subcode)) or _MESSAGES.get((code, None)) or f"(#{code}) Sandbox error"
    rate_limited = code in _RATE_LIMIT_CODES
    if code in _SERVER_ERROR_CODES:
        status, transient = 500, True
    else:
        status, transient = 400, rate_limited and (code, subcode) != _TAG_ABUSE
    error: dict[str, object] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if user_msg is not None:
        error["error_user_title"] = "Invalid message tag"
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = secrets.token_urlsafe(8)  # 8 random bytes -> 11 characters
    error["is_transient"] = transient
    buc = None
    if rate_limited:
        usage = {
            "type": "messenger",
            "call_count": 100,
            "total_cputime": 10,
            "total_time": 10,
            "estimated_time_to_regain_access": regain_minutes,
        }
        buc = orjson.dumps({page_id or "0": [usage]})
    return Answer(status, orjson.dumps({"error": error}), code=code, subcode=subcode, buc=buc)


def invalid(message: str, subcode: int | None = None) -> Answer:
    """A code 100 (invalid parameter) error."""
    return graph_error(100, subcode, message)


class Refusal(Exception):
    """Carries the answer for a refused call out of the checks (only on error paths)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


def refuse(message: str, subcode: int | None = None) -> NoReturn:
    """Refuse the call with a code 100 error."""
    raise Refusal(invalid(message, subcode))

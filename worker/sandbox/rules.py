"""Reserved PSIDs: fault injection by ``recipient.id`` (``err-``, ``flaky<N>-``, ``outside-``,
``throttle<M>-``, ``slow<MS>-``, ``http5xx-``, ``drop-``; the table is in the package docstring).

Owns parsing a PSID into its rule (a few string operations, no regular expressions: this runs on
every send whose PSID contains a ``-``) and applying it to a call that passed the token and
validation checks. Anything that does not parse is an ordinary PSID.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from worker.sandbox.errors import Answer, Refusal, graph_error
from worker.sandbox.state import SandboxState

_HTML_502: Final = b"<html><body>Bad Gateway</body></html>"
#: Sends the 24-hour window does not bind: a valid tag, a utility template.
_WINDOW_FREE: Final = frozenset({"MESSAGE_TAG", "UTILITY"})


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: str  # "err", "flaky", "outside", "throttle", "slow", "http5xx", "drop"
    code: int = 0
    subcode: int | None = None
    number: int = 0  # flaky: N failing calls; throttle: minutes; slow: milliseconds


def parse_digits(text: str) -> int | None:
    """``text`` as an int if it is only ASCII digits (no sign, no spaces), else None."""
    return int(text) if text.isascii() and text.isdigit() else None


def _error_spec(spec: str) -> tuple[int, int | None] | None:
    code_text, sep, sub_text = spec.partition("_")
    code = parse_digits(code_text)
    if code is None:
        return None
    if not sep:
        return code, None
    sub = parse_digits(sub_text)
    return None if sub is None else (code, sub)


_PLAIN_RULES: Final[Mapping[str, _Rule]] = MappingProxyType(
    {"outside": _Rule("outside"), "drop": _Rule("drop"), "http5xx": _Rule("http5xx")}
)
_NUMBERED_RULES: Final = ("flaky", "throttle", "slow")


def _rule_head(head: str) -> tuple[str, int] | None:
    """``err`` -> ("err", 0); ``flaky3`` -> ("flaky", 3); ``throttle0``; ``slow250``; else None."""
    if head == "err":
        return "err", 0
    for prefix in _NUMBERED_RULES:
        if head.startswith(prefix):
            number = parse_digits(head[len(prefix) :])
            return None if number is None else (prefix, number)
    return None


def _parse_rule(psid: str) -> _Rule | None:
    """The fault rule encoded in ``psid``, or None for an ordinary PSID (a few string operations)."""
    head, sep, rest = psid.partition("-")
    rule = _PLAIN_RULES.get(head) if sep else None
    parsed = _rule_head(head) if sep and rule is None else None
    if parsed is None:
        return rule
    kind, number = parsed
    if kind in ("err", "flaky"):
        spec_text, sep, _ = rest.partition("-")
        spec = _error_spec(spec_text) if sep else None
        return None if spec is None else _Rule(kind, spec[0], spec[1], number)
    return _Rule(kind, 80006 if kind == "throttle" else 0, None, number)


def apply_rule(state: SandboxState, psid: str, mtype: str | None, page_id: str) -> float:
    """Apply the reserved-PSID rule (raises :class:`Refusal`); returns the extra delay in ms."""
    rule = _parse_rule(psid)
    if rule is None:
        return 0.0
    kind = rule.kind
    if kind == "err":
        raise Refusal(graph_error(rule.code, rule.subcode, page_id=page_id))
    if kind == "flaky":
        seen = state.flaky.get(psid, 0) + 1
        state.flaky[psid] = seen
        if seen <= rule.number:
            raise Refusal(graph_error(rule.code, rule.subcode, page_id=page_id))
    elif kind == "outside":
        if mtype not in _WINDOW_FREE and psid not in state.opened:
            raise Refusal(graph_error(10, 2018278))
    elif kind == "throttle":  # throttled for M minutes from its first call, as Graph estimates
        now = time.monotonic()
        new = psid not in state.throttled
        left = state.throttled.setdefault(psid, now) + 60 * rule.number - now
        if new or left > 0:  # the first call always (M may be 0)
            raise Refusal(
                graph_error(80006, None, page_id=page_id, regain_minutes=math.ceil(max(left, 0) / 60))
            )
    elif kind == "slow":
        return float(rule.number)
    elif kind == "http5xx":
        raise Refusal(Answer(502, _HTML_502, b"text/html; charset=utf-8"))
    elif kind == "drop":
        raise Refusal(Answer(0, b"", drop=True))
    return 0.0

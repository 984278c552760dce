"""Just enough PromQL reading to list the metric names and selector labels an expression uses.

Not a parser: string literals, range brackets and grouping label lists are blanked out, then every
identifier that is not a function call, a keyword or part of a number/duration is a metric name.
Good for the expressions of our dashboard and alert rules, which the tests also send to a real
Prometheus (so a syntax error cannot hide here).
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
)
KEYWORDS_CI = frozenset({"inf", "nan"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_SELECTOR = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def _blank_strings(expr: str) -> str:
    return _STRING.sub('""', expr)


def selector_labels(expr: str) -> dict[str, set[str]]:
    """Metric name -> label names its selectors match on (``x{a="1", b=~"2"}`` -> {x: {a, b}})."""
    # label values may contain braces or commas: keep the quotes, drop their content
    text = _blank_strings(expr)
    out: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(text):
        name = match.group(1) or ""
        if name.lower() in KEYWORDS:
            name = ""
        out.setdefault(name, set()).update(_MATCHER.findall(match.group(2)))
    return out


def metric_names(expr: str) -> set[str]:
    """Every metric name an expression reads."""
    text = _blank_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        ident, call = match.group(1), match.group(2)
        if call or ident in KEYWORDS or ident.lower() in KEYWORDS_CI:
            continue
        names.add(ident)
    return names

"""Utility messages (utility templates): the route Meta sanctions outside the 24-hour window.

A utility template is a page's pre-approved template ("order or account status updates, and
appointment or event reminders"; messenger-platform.md §2.4-2.5) whose placeholders are filled
at send time. Two ways in:

* **direct** — Braze's body already is a utility send (``messaging_type: UTILITY`` and
  ``message.template``): validated, paced and recorded like any other send
  (:func:`template_of` reads it back);
* **as the route outside the window** — the request names a template with
  ``X-Utility-Template: <name>; lang=<code>`` and its parameters with ``X-Utility-Parameters``
  (a JSON array, in order, or a JSON object for named parameters): :func:`from_headers`. When
  Graph says the window is closed (or it is known to be), the worker sends
  :func:`utility_body` instead of Braze's body (``FALLBACK_ORDER``).

**The send body's shape is not confirmed by Meta's page** (§2.5: the guide's request example was
not readable). It is built and read in this module only — :func:`template_message` and
:func:`template_of` — so a correction touches nothing else. The shape used by several
independent senders::

    {"recipient": {"id": PSID}, "messaging_type": "UTILITY",
     "message": {"template": {"name": "<name>", "language": {"code": "en_US"},
                              "components": [{"type": "body", "parameters": [
                                  {"type": "text", "text": "..."}]}]}}}

Named parameters (added 2026-03-06) carry ``"parameter_name"`` next to ``"text"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from worker.messenger.errors import InputError

#: ``messaging_type`` of a utility send.
UTILITY_TYPE: Final = "UTILITY"
#: Meta's template names: lower-case letters, digits and underscores, at most 512 characters.
_NAME: Final = re.compile(r"[a-z0-9_]{1,512}")  # fullmatch: "$" would take a trailing "\n"
#: A locale code as Meta writes them: ``en``, ``en_US``, ``pt_BR``, ``zh_Hant_HK`` ...
_LANGUAGE: Final = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4}){0,2}")
MAX_PARAMETERS: Final = 100
MAX_PARAMETER_CHARS: Final = 1024
#: The longest an X-Utility-Parameters header may be (Braze fills it from profile data).
MAX_PARAMETERS_HEADER: Final = 8 * 1024
#: A Liquid tag left as written (``{{${first_name}}}``, ``{% if ... %}``): Braze did not render
#: it (a typo, a header pasted where nothing renders it); a user must never receive it.
_LIQUID: Final = re.compile(r"\{\{.*?\}\}+|\{%.*?%\}", re.DOTALL)

#: (positional values, named (name, value) pairs): at most one of them is not empty.
Parameters = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class UtilityTemplate:
    """A utility template and the values of its body placeholders.

    ``positional`` fills ``{{1}}``, ``{{2}}`` ... in order; ``named`` holds ``(name, value)``
    pairs (named parameters); at most one of them is not empty."""

    name: str
    language: str
    positional: tuple[str, ...] = ()
    named: tuple[tuple[str, str], ...] = ()

    @property
    def route(self) -> str:
        """The route name recorded as ``delivered_via``: ``utility:<name>``."""
        return f"utility:{self.name}"

    @property
    def parameter_count(self) -> int:
        return len(self.named) or len(self.positional)

    def as_json(self) -> dict[str, Any]:
        """What the delivery record stores (:func:`from_json` reads it back)."""
        params: Any = dict(self.named) if self.named else list(self.positional)
        return {"name": self.name, "language": self.language, "parameters": params}


def _fail(code: str, message: str) -> InputError:
    return InputError(422, code, message)


def _parameters(value: object, where: str) -> Parameters:
    """A JSON array of strings (positional) or object of strings (named); numbers become text."""

    def text(item: object, at: str) -> str:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _fail("invalid_utility_parameters", f"{where}: {at} must be a string or a number")
        out = item if isinstance(item, str) else orjson.dumps(item).decode()
        if not out.strip():
            raise _fail("invalid_utility_parameters", f"{where}: {at} is empty (Meta refuses empty values)")
        if len(out) > MAX_PARAMETER_CHARS:
            raise _fail("invalid_utility_parameters", f"{where}: {at} is longer than {MAX_PARAMETER_CHARS}")
        return out

    if isinstance(value, list | dict) and len(value) > MAX_PARAMETERS:
        raise _fail("invalid_utility_parameters", f"{where}: more than {MAX_PARAMETERS} parameters")
    if isinstance(value, list):
        return tuple(text(v, f"parameter {i + 1}") for i, v in enumerate(value)), ()
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not re.fullmatch(r"[a-z0-9_]{1,64}", key):
                raise _fail(
                    "invalid_utility_parameters", f"{where}: {str(key)[:64]!r} is not a parameter name"
                )
        return (), tuple((k, text(v, k)) for k, v in value.items())
    raise _fail("invalid_utility_parameters", f"{where} must be a JSON array or object")


def check_rendered(t: UtilityTemplate, where: str) -> None:
    """InputError 422 ``invalid_utility_parameters`` when a parameter holds a Liquid tag as
    written (``{{${first_name}}}``, ``{% if %}``): Braze did not render it, and the user would
    receive it. The intake's rule, not Graph's (which sends any text): not in :func:`template_of`."""
    values = [(f"parameter {i + 1}", v) for i, v in enumerate(t.positional)] + list(t.named)
    for at, value in values:
        liquid = _LIQUID.search(value)
        if liquid is not None:
            raise _fail(
                "invalid_utility_parameters",
                f"{where}: {at} holds a Liquid tag Braze did not render: {liquid.group()[:64]!r}",
            )


def check_name(name: str, language: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise _fail(
            "invalid_utility_template",
            f"{where}: {name[:64]!r} is not a template name (lower-case letters, digits, underscores)",
        )
    if not _LANGUAGE.fullmatch(language):
        raise _fail("invalid_utility_template", f"{where}: {language[:32]!r} is not a language code (en_US)")


def _header_language(options: str) -> str | None:
    """``lang=`` (or ``language=``) of X-Utility-Template's options, None without one; 422 for
    an option it does not know, one without a value, or a language given twice."""
    language: str | None = None
    for option in options.split(";"):
        key, _, value = (part.strip() for part in option.partition("="))
        if not key and not value:
            continue  # "name;" or "name; ; lang=..."
        if key.lower() not in ("lang", "language"):
            raise _fail(
                "invalid_utility_template", f"X-Utility-Template: unknown option {option.strip()[:32]!r}"
            )
        if not value:
            raise _fail(
                "invalid_utility_template", f"X-Utility-Template: {key}= needs a language code (en_US)"
            )
        if language is not None:
            raise _fail("invalid_utility_template", "X-Utility-Template: the language is given twice")
        language = value
    return language


def from_headers(
    template: str | None,
    parameters: str | None,
    *,
    default_language: str,
    defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> UtilityTemplate | None:
    """The template a request names for the route outside the window, or None.

    ``X-Utility-Template: order_update; lang=en_US`` (``lang`` defaults to the template's entry
    in ``defaults`` (UTILITY_TEMPLATES), else ``default_language``); ``X-Utility-Parameters``
    a JSON array or object; without it, the entry's ``parameters`` in ``defaults``. A value still
    holding a Liquid tag is refused (:func:`check_rendered`)."""
    if template is None or not template.strip():
        if parameters:
            raise _fail("invalid_utility_template", "X-Utility-Parameters needs X-Utility-Template")
        return None
    name, _, rest = template.partition(";")
    name = name.strip()
    default = (defaults or {}).get(name, {})
    language = _header_language(rest) or str(default.get("language") or default_language)
    check_name(name, language, "X-Utility-Template")
    if parameters is not None and parameters.strip():
        if len(parameters) > MAX_PARAMETERS_HEADER:
            raise _fail(
                "invalid_utility_parameters", f"X-Utility-Parameters is longer than {MAX_PARAMETERS_HEADER}"
            )
        try:
            raw: object = orjson.loads(parameters)
        except orjson.JSONDecodeError:
            raise _fail(
                "invalid_utility_parameters",
                "X-Utility-Parameters is not JSON: build it with Liquid's json_escape (README)",
            ) from None
        where = "X-Utility-Parameters"
        params = _parameters(raw, where)
    else:
        where = f"UTILITY_TEMPLATES[{name}].parameters"
        params = _parameters(default.get("parameters", []), where)
    t = UtilityTemplate(name, language, *params)
    check_rendered(t, where)
    return t


def from_json(value: Mapping[str, Any]) -> UtilityTemplate:
    """A stored :meth:`UtilityTemplate.as_json` back (trusted: it was validated at the intake)."""
    raw = value.get("parameters") or []
    name, language = str(value["name"]), str(value["language"])
    if isinstance(raw, dict):
        return UtilityTemplate(name, language, named=tuple((str(k), str(v)) for k, v in raw.items()))
    return UtilityTemplate(name, language, tuple(str(v) for v in raw))


# --- the send body's shape: this block only (see the module docstring) ------------------------
def template_message(t: UtilityTemplate) -> dict[str, Any]:
    """The ``message`` object of a utility send."""
    template: dict[str, Any] = {"name": t.name, "language": {"code": t.language}}
    values = [{"type": "text", "parameter_name": k, "text": v} for k, v in t.named] or [
        {"type": "text", "text": v} for v in t.positional
    ]
    if values:
        template["components"] = [{"type": "body", "parameters": values}]
    return {"template": template}


def utility_body(body: Mapping[str, Any], t: UtilityTemplate) -> dict[str, Any]:
    """Braze's send body turned into a utility send of ``t`` to the same recipient (its
    ``notification_type`` kept; its message, tag and reply_to dropped)."""
    out: dict[str, Any] = {"recipient": body["recipient"], "messaging_type": UTILITY_TYPE}
    if "notification_type" in body:
        out["notification_type"] = body["notification_type"]
    out["message"] = template_message(t)
    return out


def template_of(body: Mapping[str, Any]) -> UtilityTemplate | None:
    """The template of a direct utility body (None if ``body`` is not one); InputError 422 when
    it is one but its template is malformed."""
    if body.get("messaging_type") != UTILITY_TYPE:
        return None
    message = body.get("message")
    template = message.get("template") if isinstance(message, dict) else None
    if not isinstance(template, dict) or set(message) - {"template"}:  # type: ignore[arg-type]  # a dict here
        raise _fail("invalid_utility_template", "a UTILITY send carries message.template and nothing else")
    name = template.get("name")
    language = template.get("language")
    code = language.get("code") if isinstance(language, dict) else language
    if not isinstance(name, str) or not isinstance(code, str):
        raise _fail("invalid_utility_template", "message.template needs name and language.code")
    check_name(name, code, "message.template")
    values: list[Any] = []
    components = template.get("components") or []
    if not isinstance(components, list):
        raise _fail("invalid_utility_template", "message.template.components must be a list")
    for component in components:
        if not isinstance(component, dict) or not isinstance(component.get("parameters", []), list):
            raise _fail("invalid_utility_template", "message.template.components must be objects")
        if component.get("type") == "body":
            values += component.get("parameters", [])
    named = bool(values) and all(
        isinstance(v, dict) and isinstance(v.get("parameter_name"), str) for v in values
    )
    if not named and any(isinstance(v, dict) and "parameter_name" in v for v in values):
        raise _fail("invalid_utility_parameters", "named parameters: every one needs a parameter_name string")
    raw: object = (
        {v["parameter_name"]: v.get("text") for v in values}
        if named
        else [v.get("text") if isinstance(v, dict) else v for v in values]
    )
    return UtilityTemplate(name, code, *_parameters(raw, "message.template parameters"))

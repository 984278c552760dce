"""The sandbox's utility templates: each page's catalogue, ``GET /{version}/{page_id}/message_templates``,
the checks of a ``messaging_type: UTILITY`` send, and ``/__sandbox/templates``.

Every page starts with :data:`DEFAULT_TEMPLATES` (``order_update`` with 2 positional parameters,
``appointment_reminder`` with the named parameters ``name`` and ``time``, ``pending_template``,
``paused_template``, ``quick_reply_template`` with a QUICK_REPLY button; all en_US); the control
endpoints replace a page's catalogue, add or change one template, or reset pages to the defaults.

A UTILITY send body is read with the product's :func:`worker.messenger.utility.template_of`, the
one place that knows the body's shape (not confirmed by Meta: messenger-platform.md §2.5), and
checked in this order. **The error codes are the sandbox's convention, not confirmed Meta codes
for Messenger**: they are modelled on the WhatsApp Cloud API's template errors (WhatsApp and
Messenger share Meta's template system), plus the one Messenger refusal observed in the wild:

=====================================  ==========================================================
the template                           answer (HTTP 400)
=====================================  ==========================================================
malformed (template_of refuses it)     100 with template_of's message
not in the page's catalogue            132001 "(#132001) Template name does not exist in the
(name and language)                    translation"
PENDING, REJECTED (any status not      132001, the message saying it is not approved (and its
listed below)                          status): Graph cannot send a template that is not approved
PAUSED                                 132015 "(#132015) Template is paused"
DISABLED                               132016 "(#132016) Template is disabled"
has a QUICK_REPLY button               100 / 2018416 (observed: only POSTBACK, URL and
                                       PHONE_NUMBER buttons pass; §2.5)
parameters: another count, other       132000 "(#132000) Number of parameters does not match the
names, positional for named            expected number of params"
=====================================  ==========================================================

A UTILITY send is not bound by the 24-hour window (an ``outside-`` PSID gets it); everything else
about the send (token, recipient, reserved PSIDs, page faults, the record) is as for any send.
Only a UTILITY send reaches this module: the regular send path does one string comparison more.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response

from worker.messenger.errors import InputError
from worker.messenger.utility import template_of
from worker.sandbox.errors import Refusal, graph_error, refuse
from worker.sandbox.replies import BadRequest, bad, json_payload, json_response
from worker.sandbox.validation import _RECIPIENT_KEYS as RECIPIENT_KEYS
from worker.sandbox.validation import token_and_proof

UTILITY: Final = "UTILITY"
_PARAM_NAMES: Final = ("name", "time", "order", "date", "place", "code")
_DEFAULT_LIMIT: Final = 25
_MAX_LIMIT: Final = 1000


@dataclass(slots=True)
class SandboxTemplate:
    """One template of a page: positional parameters (``parameters``: their count) or named ones
    (``names``), button types, status as Graph spells it."""

    name: str
    language: str = "en_US"
    status: str = "APPROVED"
    parameters: int = 0
    names: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()
    category: str = "UTILITY"
    template_id: str = field(default="")

    def graph_json(self) -> dict[str, Any]:
        """As Graph's ``message_templates`` lists it."""
        if self.names:
            body = "Hello " + ", ".join(f"{{{{{n}}}}}" for n in self.names)
            example: dict[str, Any] = {
                "body_text_named_params": [{"param_name": n, "example": f"<{n}>"} for n in self.names]
            }
        else:
            body = "Update " + " ".join(f"{{{{{i + 1}}}}}" for i in range(self.parameters))
            example = {"body_text": [[f"<{i + 1}>" for i in range(self.parameters)]]}
        components: list[dict[str, Any]] = [{"type": "BODY", "text": body.strip()}]
        if self.names or self.parameters:
            components[0]["example"] = example
        if self.buttons:
            components.append(
                {"type": "BUTTONS", "buttons": [{"type": b, "text": b.lower()} for b in self.buttons]}
            )
        return {
            "id": self.template_id,
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "parameter_format": "NAMED" if self.names else "POSITIONAL",
            "components": components,
        }

    def control_json(self) -> dict[str, Any]:
        """As ``/__sandbox/templates`` shows and takes it."""
        return {
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "parameters": list(self.names) if self.names else self.parameters,
            "buttons": list(self.buttons),
            "category": self.category,
            "id": self.template_id,
        }


DEFAULT_TEMPLATES: Final = (
    SandboxTemplate("order_update", parameters=2),
    SandboxTemplate("appointment_reminder", names=("name", "time")),
    SandboxTemplate("pending_template", status="PENDING", parameters=1),
    SandboxTemplate("paused_template", status="PAUSED", parameters=1),
    SandboxTemplate("quick_reply_template", parameters=1, buttons=("QUICK_REPLY",)),
)

Catalogue = dict[tuple[str, str], SandboxTemplate]


class Templates:
    """Every page's catalogue (a page not yet seen has the defaults)."""

    def __init__(self) -> None:
        self.pages: dict[str, Catalogue] = {}
        self._ids = 0

    def _with_id(self, t: SandboxTemplate) -> SandboxTemplate:
        if not t.template_id:
            self._ids += 1
            t.template_id = str(900_000_000 + self._ids)
        return t

    def of(self, page_id: str) -> Catalogue:
        catalogue = self.pages.get(page_id)
        if catalogue is None:
            defaults = (self._with_id(SandboxTemplate(**_fields(t))) for t in DEFAULT_TEMPLATES)
            catalogue = self.pages[page_id] = {(t.name, t.language): t for t in defaults}
        return catalogue

    def put(self, page_id: str, template: SandboxTemplate) -> None:
        self.of(page_id)[(template.name, template.language)] = self._with_id(template)


def _fields(t: SandboxTemplate) -> dict[str, Any]:
    return {name: getattr(t, name) for name in SandboxTemplate.__dataclass_fields__}


# --- the send check ---------------------------------------------------------------------------
def check_utility_send(templates: Templates, body: Mapping[str, Any], page_id: str, tag: str | None) -> None:
    """Refuse (:class:`Refusal`) a UTILITY send as the module docstring's table says."""
    recipient = body.get("recipient")
    if not isinstance(recipient, dict) or not any(recipient.get(key) for key in RECIPIENT_KEYS):
        refuse("(#100) The parameter recipient is required")
    if tag is not None:
        refuse("(#100) Messaging type should be MESSAGE_TAG for tagged messages.")
    try:
        sent = template_of(body)
    except InputError as exc:
        refuse(f"(#100) {exc.message}")
    if sent is None:  # pragma: no cover - only UTILITY bodies come here
        refuse("(#100) Param messaging_type must be UTILITY")
    t = templates.of(page_id).get((sent.name, sent.language))
    if t is None:
        raise Refusal(graph_error(132001, None, "(#132001) Template name does not exist in the translation"))
    if t.status == "PAUSED":
        raise Refusal(graph_error(132015, None, "(#132015) Template is paused"))
    if t.status == "DISABLED":
        raise Refusal(graph_error(132016, None, "(#132016) Template is disabled"))
    if t.status != "APPROVED":
        message = f"(#132001) Template {sent.name} ({sent.language}) is not approved: status {t.status}"
        raise Refusal(graph_error(132001, None, message))
    if "QUICK_REPLY" in t.buttons:
        message = "(#100) Utility message templates cannot have QUICK_REPLY buttons"
        raise Refusal(graph_error(100, 2018416, message))
    given_names = {n for n, _ in sent.named}
    fits = (
        given_names == set(t.names) and not sent.positional
        if t.names
        else not sent.named and len(sent.positional) == t.parameters
    )
    if not fits:
        message = "(#132000) Number of parameters does not match the expected number of params"
        raise Refusal(graph_error(132000, None, message))


# --- GET /{version}/{page_id}/message_templates -----------------------------------------------
def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i:{index}".encode()).decode()


def _index(cursor: str | None) -> int | None:
    if not cursor:
        return 0
    try:
        kind, _, number = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return int(number) if kind == "i" and number.isdigit() else None


def _graph(answer_body: dict[str, Any], status: int, version: str) -> Response:
    return Response(
        orjson.dumps(answer_body),
        status_code=status,
        media_type="application/json",
        headers={"facebook-api-version": version},
    )


def list_answer(templates: Templates, request: Request, page_id: str) -> tuple[dict[str, Any], int]:
    """Graph's answer to a listing of ``page_id``'s templates (``limit``, ``after``)."""
    params = request.query_params
    limit_text = params.get("limit") or str(_DEFAULT_LIMIT)
    start = _index(params.get("after"))
    if not limit_text.isdigit() or int(limit_text) < 1 or start is None:
        error = orjson.loads(graph_error(100, None, "(#100) Invalid parameter").body)
        return error, 400
    limit = min(int(limit_text), _MAX_LIMIT)
    rows = sorted(templates.of(page_id).values(), key=lambda t: (t.name, t.language))
    chunk = rows[start : start + limit]
    out: dict[str, Any] = {"data": [t.graph_json() for t in chunk]}
    if chunk:
        paging: dict[str, Any] = {"cursors": {"before": _cursor(start), "after": _cursor(start + len(chunk))}}
        if start + len(chunk) < len(rows):
            query = {k: v for k, v in params.items() if k != "after"}
            query["after"] = _cursor(start + len(chunk))
            paging["next"] = f"{request.url.replace(query=urlencode(query))}"
        out["paging"] = paging
    return out, 200


class TemplateListing:
    """``GET /{version}/{page_id}/message_templates`` (a Starlette endpoint, not the hot path)."""

    def __init__(self, templates: Templates, page_for: Any) -> None:
        self.templates = templates
        self._page_for = page_for  # (token, path page) -> page id, or Refusal: the send's check

    async def endpoint(self, request: Request) -> Response:
        version = request.path_params.get("version", "")
        auth = request.headers.get("authorization")
        token, _proof = token_and_proof(request.scope, {}, auth.encode("latin-1") if auth else None)
        try:
            page_id = self._page_for(token, request.path_params.get("page_id", "me"))
        except Refusal as refusal:
            return _graph(orjson.loads(refusal.answer.body), refusal.answer.status, version)
        answer, status = list_answer(self.templates, request, page_id)
        return _graph(answer, status, version)


# --- /__sandbox/templates -----------------------------------------------------------------------
def _spec(payload: Mapping[str, Any], base: SandboxTemplate | None) -> SandboxTemplate:
    """A template from a control request (fields it omits: ``base``'s, else the defaults)."""
    name = payload.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("name is required")
    language = payload.get("language", base.language if base else "en_US")
    status = payload.get("status", base.status if base else "APPROVED")
    params = payload.get("parameters", (list(base.names) or base.parameters) if base else 0)
    buttons = payload.get("buttons", list(base.buttons) if base else [])
    if not isinstance(language, str) or not isinstance(status, str):
        raise BadRequest("language and status must be strings")
    if isinstance(params, bool) or not (
        (isinstance(params, int) and params >= 0)
        or (isinstance(params, list) and all(isinstance(n, str) for n in params))
    ):
        raise BadRequest("parameters must be a count or a list of names")
    if not isinstance(buttons, list) or not all(isinstance(b, str) for b in buttons):
        raise BadRequest("buttons must be a list of button types")
    return SandboxTemplate(
        name=name,
        language=language,
        status=status.upper(),
        parameters=len(params) if isinstance(params, list) else params,
        names=tuple(params) if isinstance(params, list) else (),
        buttons=tuple(b.upper() for b in buttons),
        template_id=base.template_id if base else "",
    )


def _post_payload(payload: dict[str, Any]) -> tuple[str, list[dict[str, Any]] | None, dict[str, Any]]:
    """(page, the templates that replace its catalogue or None, the payload)."""
    page_id = payload.get("page_id")
    if isinstance(page_id, bool) or not isinstance(page_id, str | int) or page_id == "":
        raise BadRequest("page_id is required")
    rows = payload.get("templates")
    if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows)):
        raise BadRequest("templates must be a list of objects")
    return str(page_id), rows, payload


class TemplateControl:
    """``GET``/``POST``/``DELETE /__sandbox/templates``.

    * ``GET ?page_id=P`` -> ``{"page_id", "templates": [...]}`` (without page_id: every page seen);
    * ``POST {"page_id", "templates": [...]}`` replaces the page's catalogue; ``POST {"page_id",
      "name", "language", "status", "parameters" (a count or a list of names), "buttons"}`` adds
      or changes one template (omitted fields keep their value);
    * ``DELETE ?page_id=P`` resets that page (without page_id: every page) to the defaults.
    """

    def __init__(self, templates: Templates) -> None:
        self.templates = templates

    def _page(self, page_id: str) -> dict[str, Any]:
        rows = sorted(self.templates.of(page_id).values(), key=lambda t: (t.name, t.language))
        return {"page_id": page_id, "templates": [t.control_json() for t in rows]}

    async def get(self, request: Request) -> Response:
        page_id = request.query_params.get("page_id")
        if page_id:
            return json_response(self._page(page_id))
        return json_response({"pages": [self._page(p) for p in sorted(self.templates.pages)]})

    async def post(self, request: Request) -> Response:
        try:
            page, rows, one = _post_payload(await json_payload(request))
            if rows is not None:
                specs = [_spec(r, None) for r in rows]
                self.templates.pages[page] = {}
                for spec in specs:
                    self.templates.put(page, spec)
            else:
                base = self.templates.of(page).get((str(one.get("name")), str(one.get("language", "en_US"))))
                self.templates.put(page, _spec(one, base))
        except BadRequest as exc:
            return bad(str(exc))
        return json_response(self._page(page))

    async def delete(self, request: Request) -> Response:
        page_id = request.query_params.get("page_id")
        if page_id:
            self.templates.pages.pop(page_id, None)
        else:
            self.templates.pages.clear()
        return json_response({"ok": True})

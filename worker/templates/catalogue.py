"""The utility-template catalogue: what each page's templates are, as Redis holds them.

A page's templates (``GET /{page-id}/message_templates``, read by :mod:`worker.templates.sync`;
status changes from the ``message_template_status_update`` webhook field,
:mod:`worker.templates.events`) live in one hash per page, ``Keys.templates(page)``: field
``"{name}|{language}"`` -> :meth:`TemplateInfo.to_json`. ``Keys.templates_synced`` (page -> time
of the last successful read) says whether a page's catalogue is *known*: only then is a template
missing from it refused (an unknown catalogue allows everything, so a deployment without the
``page_utility_messaging`` permission, or before its first sync, behaves as before).

What Graph returns for a template (the Page ``message_templates`` edge; the object is WhatsApp's
template object, with which Messenger shares Meta's template system)::

    {"id": "...", "name": "order_update", "language": "en_US", "status": "APPROVED",
     "category": "UTILITY", "parameter_format": "POSITIONAL",
     "components": [{"type": "BODY", "text": "Hi {{1}}, order {{2}} has shipped",
                     "example": {"body_text": [["Ann", "A-1"]]}},
                    {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track", ...}]}],
     "rejected_reason": "NONE", "last_updated_time": "..."}

Parameters are read from the BODY component only (the send body fills body parameters only,
:mod:`worker.messenger.utility`): named placeholders ``{{name}}`` (or the example's
``body_text_named_params[].param_name``), else the highest positional ``{{n}}`` (or the number of
example values). A template whose BODY could not be read has ``parameter_count`` None and its
parameters are not checked.

Statuses are kept as Graph and the webhook spell them (upper case); :func:`template_state` folds
them into what a sender must do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
import redis.exceptions

from worker.messenger.utility import UtilityTemplate
from worker.store import Keys, text

APPROVED: Final = "APPROVED"
#: Graph's statuses -> the sender's view (:func:`template_state`). ``IN_APPEAL`` is a rejected
#: template under review again: wait, as for PENDING. ``ARCHIVED``, ``DELETED``,
#: ``PENDING_DELETION`` and ``LIMIT_EXCEEDED`` cannot be sent until someone acts: permanent.
_STATES: Final[Mapping[str, str]] = {
    APPROVED: "approved",
    "PENDING": "pending",
    "IN_APPEAL": "pending",
    "PAUSED": "paused",
    "DISABLED": "disabled",
    "PENDING_DELETION": "disabled",
    "DELETED": "disabled",
    "ARCHIVED": "disabled",
    "LIMIT_EXCEEDED": "disabled",
    "REJECTED": "rejected",
}
#: Every status the catalogue stores (the webhook's other events are not statuses).
STATUSES: Final = frozenset(_STATES)
#: The states (:func:`template_state`) the intake refuses: they do not pass by waiting. Pending
#: and paused ones pass (the worker waits or moves on); so does a status we do not know (the
#: worker sends it and Graph decides).
REFUSED_STATES: Final = frozenset({"disabled", "rejected"})
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
_MAX_FIELD: Final = 1024
#: Tries of a sync's write while status events write the page's hash (the last does not watch).
_REPLACE_RETRIES: Final = 5


def field_name(name: str, language: str) -> str:
    """The hash field of a template: ``"{name}|{language}"``."""
    return f"{name}|{language}"


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """One template of a page's catalogue.

    ``parameter_count`` is the number of body parameters (None: unknown, not checked);
    ``parameter_names`` holds the names of a template with named parameters (empty: positional).
    ``buttons`` are the button types (``QUICK_REPLY``, ``URL``, ``PHONE_NUMBER``, ``POSTBACK``).
    ``updated_at`` is when this entry was last learned (epoch s: a sync, or a webhook event)."""

    name: str
    language: str
    status: str
    parameter_count: int | None = None
    parameter_names: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()
    reason: str | None = None
    template_id: str | None = None
    category: str | None = None
    updated_at: float = field(default=0.0, compare=False)

    @property
    def hash_field(self) -> str:
        return field_name(self.name, self.language)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "name": self.name,
                "language": self.language,
                "status": self.status,
                "parameter_count": self.parameter_count,
                "parameter_names": list(self.parameter_names),
                "buttons": list(self.buttons),
                "reason": self.reason,
                "id": self.template_id,
                "category": self.category,
                "updated_at": self.updated_at,
            }
        )

    def as_dict(self) -> dict[str, Any]:
        """For ``messenger-worker templates list --json``."""
        out: dict[str, Any] = orjson.loads(self.to_json())
        out["state"] = template_state(self)
        return out

    @classmethod
    def from_json(cls, raw: bytes | str) -> TemplateInfo:
        """A stored entry back (written by :meth:`to_json`)."""
        value = orjson.loads(raw)
        count = value.get("parameter_count")
        return cls(
            name=str(value["name"]),
            language=str(value["language"]),
            status=str(value["status"]),
            parameter_count=count if isinstance(count, int) else None,
            parameter_names=tuple(str(n) for n in value.get("parameter_names") or ()),
            buttons=tuple(str(b) for b in value.get("buttons") or ()),
            reason=value.get("reason"),
            template_id=value.get("id"),
            category=value.get("category"),
            updated_at=float(value.get("updated_at") or 0.0),
        )

    def with_status(self, status: str, reason: str | None, at: float) -> TemplateInfo:
        return replace(self, status=status, reason=reason, updated_at=at)


def _list(value: object) -> list[Any]:
    """``value`` if it is a list, else nothing (Graph's answer is read, never trusted)."""
    return value if isinstance(value, list) else []


def _short(value: object) -> str | None:
    return value[:_MAX_FIELD] if isinstance(value, str) and value else None


def _body_parameters(component: Mapping[str, Any]) -> tuple[int | None, tuple[str, ...]]:
    """(count, names) of a BODY component: its placeholders, else its example values."""
    names: list[str] = []
    highest = 0
    body_text = component.get("text")
    for token in _PLACEHOLDER.findall(body_text if isinstance(body_text, str) else ""):
        if token.isdigit():
            highest = max(highest, int(token))
        elif token not in names:
            names.append(token)
    if names:
        return len(names), tuple(names)
    if highest:
        return highest, ()
    example = component.get("example")
    if isinstance(example, dict):
        named = example.get("body_text_named_params")
        if isinstance(named, list) and named:
            found = tuple(
                p["param_name"] for p in named if isinstance(p, dict) and isinstance(p.get("param_name"), str)
            )
            if found:
                return len(found), found
        rows = example.get("body_text")
        if isinstance(rows, list) and rows and isinstance(rows[0], list):
            return len(rows[0]), ()
    return (0, ()) if isinstance(body_text, str) else (None, ())


def from_graph(item: Mapping[str, Any], at: float | None = None) -> TemplateInfo | None:
    """A template as Graph's ``message_templates`` lists it; None if it has no name or language."""
    name, language = _short(item.get("name")), item.get("language")
    if isinstance(language, dict):  # tolerate {"code": "en_US"}
        language = language.get("code")
    language = _short(language)
    if name is None or language is None:
        return None
    count: int | None = None
    names: tuple[str, ...] = ()
    buttons: list[str] = []
    for component in _list(item.get("components")):
        if not isinstance(component, dict):
            continue
        kind = str(component.get("type", "")).upper()
        if kind == "BODY":
            count, names = _body_parameters(component)
        elif kind == "BUTTONS":
            buttons += [
                str(b.get("type", "")).upper() for b in _list(component.get("buttons")) if isinstance(b, dict)
            ]
    reason = _short(item.get("rejected_reason"))
    return TemplateInfo(
        name=name,
        language=language,
        status=str(item.get("status") or "UNKNOWN").upper(),
        parameter_count=count,
        parameter_names=names,
        buttons=tuple(buttons),
        reason=None if reason == "NONE" else reason,
        template_id=_short(str(item["id"])) if item.get("id") is not None else None,
        category=_short(item.get("category")),
        updated_at=time.time() if at is None else at,
    )


def template_state(info: TemplateInfo | None) -> str:
    """What a sender makes of a template: ``approved`` (send), ``pending`` (wait for approval),
    ``paused`` (the route is unusable for now), ``disabled`` or ``rejected`` (permanent), or
    ``unknown`` (not in the catalogue, or a status we do not know)."""
    if info is None:
        return "unknown"
    return _STATES.get(info.status, "unknown")


# --- Redis ----------------------------------------------------------------------------------------
async def lookup(
    client: aioredis.Redis, keys: Keys, page_id: str, name: str, language: str
) -> TemplateInfo | None:
    """The page's template ``name`` in ``language``, or None."""
    raw = await client.hget(keys.templates(page_id), field_name(name, language))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    return TemplateInfo.from_json(raw) if raw is not None else None


async def catalogue_known(client: aioredis.Redis, keys: Keys, page_id: str) -> bool:
    """Whether the page's catalogue was read from Graph at least once."""
    return await client.zscore(keys.templates_synced, page_id) is not None


async def page_templates(client: aioredis.Redis, keys: Keys, page_id: str) -> list[TemplateInfo]:
    """Every template of the page, by name then language."""
    raw: dict[bytes, bytes] = await client.hgetall(keys.templates(page_id))  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    return sorted((TemplateInfo.from_json(v) for v in raw.values()), key=lambda t: (t.name, t.language))


async def synced_pages(client: aioredis.Redis, keys: Keys) -> dict[str, float]:
    """Page -> when its catalogue was last read from Graph."""
    rows = await client.zrange(keys.templates_synced, 0, -1, withscores=True)
    return {text(page): float(at) for page, at in rows}


def _merged(templates: list[TemplateInfo], current: Mapping[bytes, bytes], at: float) -> list[TemplateInfo]:
    """``templates`` (Graph's listing, read from ``at`` on), with what a status event learned
    after ``at`` (its entry's ``updated_at``): the event is the newer word on that template's
    status (the listing may have been read before the change); a template the listing lacks
    but an event since announced (created meanwhile) is kept."""
    newer = {
        f: info
        for f, info in ((f, TemplateInfo.from_json(v)) for f, v in current.items())
        if info.updated_at > at
    }
    out: list[TemplateInfo] = []
    for t in templates:
        event = newer.pop(t.hash_field.encode(), None)
        out.append(t if event is None else t.with_status(event.status, event.reason, event.updated_at))
    return out + list(newer.values())


async def replace_page(
    client: aioredis.Redis, keys: Keys, page_id: str, templates: list[TemplateInfo], at: float
) -> list[TemplateInfo]:
    """Replace the page's catalogue with ``templates`` (Graph's listing, read from ``at`` on) and
    mark it synced at ``at``, atomically (MULTI/EXEC: a reader sees the old catalogue or the new
    one, never a mix). A status event applied since ``at`` is not undone (:func:`_merged`): the
    page's hash is WATCHed, and read again if an event writes it meanwhile. Returns the
    templates written (the listing with those events' statuses)."""
    key = keys.templates(page_id)
    async with client.pipeline(transaction=True) as pipe:
        for _ in range(_REPLACE_RETRIES):
            try:
                await pipe.watch(key)
                current = await pipe.hgetall(key)  # type: ignore[misc]  # watching: executes at once
                merged = _merged(templates, current, at)
                _queue_replace(pipe, keys, page_id, merged, at)
                await pipe.execute()
            except redis.exceptions.WatchError:
                continue  # an event wrote the page meanwhile: read it again
            return merged
    # events kept writing the page: write what the last read allows, unwatched
    current = await client.hgetall(key)  # type: ignore[misc]  # redis-py: Awaitable[T] | T
    merged = _merged(templates, current, at)
    last = client.pipeline(transaction=True)
    _queue_replace(last, keys, page_id, merged, at)
    await last.execute()
    return merged


def _queue_replace(pipe: Any, keys: Keys, page_id: str, templates: list[TemplateInfo], at: float) -> None:
    """The MULTI/EXEC of :func:`replace_page`, queued on ``pipe``."""
    if pipe.watching:
        pipe.multi()
    pipe.delete(keys.templates(page_id))
    if templates:
        pipe.hset(keys.templates(page_id), mapping={t.hash_field: t.to_json() for t in templates})
    pipe.zadd(keys.templates_synced, {page_id: at})


# --- the intake's refusal -------------------------------------------------------------------------
def _label(t: UtilityTemplate, page_id: str | None) -> str:
    """The template, and the page whose catalogue speaks (a campaign may send as several)."""
    of_page = f" of page {page_id}" if page_id is not None else ""
    return f"utility template {t.name!r} ({t.language}){of_page}"


def _parameters_refusal(info: TemplateInfo, t: UtilityTemplate) -> str | None:
    """Why ``t``'s parameters do not fit ``info`` (None: they do, or they cannot be checked)."""
    if info.parameter_count is None:
        return None
    given_names = [n for n, _ in t.named]
    if info.parameter_names:
        if set(given_names) == set(info.parameter_names) and not t.positional:
            return None
        expected = ", ".join(info.parameter_names)
        given = ", ".join(given_names) if given_names else f"{len(t.positional)} positional"
        return f"expects the named parameters {expected}; given: {given or 'none'}"
    if given_names:
        return f"expects {info.parameter_count} positional parameters; given named: {', '.join(given_names)}"
    if len(t.positional) != info.parameter_count:
        return f"expects {info.parameter_count} parameters; given {len(t.positional)}"
    return None


def refusal(
    info: TemplateInfo | None, t: UtilityTemplate, known: bool, page_id: str | None = None
) -> tuple[str, str] | None:
    """(code, message) of the intake's 422 for sending ``t``, or None when it may be sent.

    An unknown catalogue (``known`` False) refuses nothing; a known one refuses a template it
    does not hold, one that can never be sent as it stands (:data:`REFUSED_STATES`: disabled,
    rejected), and parameters that do not match its body. A template pending approval or paused
    by Meta is *not* refused: both pass (approval takes seconds; a pause lifts after hours), and
    the worker waits for them or takes the next route (docs/reach.md). A 422 would lose the
    message for good (Braze does not retry a 4xx), for users inside the window too."""
    if info is None:
        if not known:
            return None
        return (
            "unknown_utility_template",
            f"{_label(t, page_id)} is not in the page's template catalogue (messenger-worker templates list)",
        )
    if template_state(info) in REFUSED_STATES:
        why = f": {info.reason}" if info.reason else ""
        return (
            "utility_template_not_approved",
            f"{_label(t, page_id)} is {info.status}, not APPROVED{why}",
        )
    mismatch = _parameters_refusal(info, t)
    if mismatch is not None:
        return "utility_template_parameters", f"{_label(t, page_id)} {mismatch}"
    return None

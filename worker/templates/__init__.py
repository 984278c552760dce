"""Utility templates: each page's catalogue in Redis, the intake's check, status webhook events.

``catalogue`` (:class:`TemplateInfo`, reading Graph's template objects, the Redis hash per page,
:func:`refusal` and :func:`template_state`), ``check`` (:func:`check_request` with its in-process
:class:`TemplateCache`, for the intake), ``events`` (``message_template_status_update`` webhook
events: parsing and applying them), ``sync`` (reading Graph's ``message_templates`` into the
catalogue, and the periodic :class:`~worker.templates.sync.TemplateRefresher`), ``waits``
(releasing the messages that waited on a template Meta paused, once it is approved again: an
event's or a sync's doing).

``sync`` imports the Graph layer and is not re-exported here: the intake imports this package
and must not load the Graph client (import-linter's "intake stays thin" contract).
"""

from worker.templates.catalogue import (
    APPROVED,
    STATUSES,
    TemplateInfo,
    catalogue_known,
    from_graph,
    lookup,
    page_templates,
    refusal,
    replace_page,
    synced_pages,
    template_state,
)
from worker.templates.check import TemplateCache, check_request
from worker.templates.events import TEMPLATE_STATUS, StatusEvent, apply_status_events, parse_status_events

__all__ = [
    "APPROVED",
    "STATUSES",
    "TEMPLATE_STATUS",
    "StatusEvent",
    "TemplateCache",
    "TemplateInfo",
    "apply_status_events",
    "catalogue_known",
    "check_request",
    "from_graph",
    "lookup",
    "page_templates",
    "parse_status_events",
    "refusal",
    "replace_page",
    "synced_pages",
    "template_state",
]

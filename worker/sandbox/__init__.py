"""A local double of the Messenger Send API (the "sandbox").

A real HTTP server (a Starlette app, served by uvicorn) that answers like Graph's Send API for what
this project needs: token checks, request validation in Graph's order, Graph-shaped error bodies,
``X-Business-Use-Case-Usage`` headers on throttling, and deterministic fault injection. It is used by
``messenger-worker up --sandbox``, by the integration tests and by the benchmarks, so the send path
is kept lean (raw ASGI, orjson, no regular expressions, no per-request logging).

Send endpoints
--------------
``POST /{version}/me/messages`` and ``POST /{version}/{page_id}/messages`` (``version`` is any string,
echoed in the ``facebook-api-version`` header of every answer).

* Token: ``access_token`` query parameter (or form / JSON body field, as in Meta's curl samples), else
  ``Authorization: Bearer <token>`` (``OAuth <token>`` is accepted too). ``appsecret_proof`` is
  accepted, ignored, and recorded as present or not. A token is valid if it is a key of
  ``SandboxConfig.tokens`` (-> that page id) or looks like ``sandbox-token-<page_id>``
  (see :func:`sandbox_token`); ``sandbox-token-expired-<anything>`` is an expired token (190/463).
  A missing token, an unknown token, or (with ``/{page_id}/messages``) a token of another page
  gives error 190.
* Body: ``application/json``, or ``application/x-www-form-urlencoded`` where ``recipient`` and
  ``message`` are JSON-encoded strings (single-quoted pseudo-JSON as in Meta's curl samples is
  accepted). Unparseable JSON gives 100 "Invalid JSON".
* Validation, in this order, all code 100 (HTTP 400): recipient (one of ``id``, ``phone_number``,
  ``user_ref``, ``notification_messages_token``, ``one_time_notif_token``, ``post_id``,
  ``comment_id``; the fault rules below read whichever is given; a ``phone_number`` whose digits
  end in ``0000`` matches nobody: 100/2018001, as Customer Matching answers);
  ``messaging_type`` present (not required for a ``sender_action``-only request, as on Graph) and in
  RESPONSE/UPDATE/MESSAGE_TAG/UTILITY (UTILITY: see "Utility templates"); ``tag`` only with MESSAGE_TAG; MESSAGE_TAG needs a tag; deprecated
  tags (:data:`DEPRECATED_TAGS`, error 100 since 2026-04-27) give "(#100) Invalid parameter"; other
  tags not in :data:`VALID_TAGS` give "(#100) Invalid tag."; not both ``message`` and
  ``sender_action`` (100/2018014); one of them; ``message`` is an object with ``text``,
  ``attachment`` or ``sticker_id`` (100/2018034); ``message.text`` shorter than 2000 characters; at
  most 13 ``quick_replies``, each ``text`` one with a title and a payload; only one of text,
  attachment and sticker_id; ``notification_type`` REGULAR/SILENT_PUSH/NO_PUSH; ``sender_action``
  in typing_on/typing_off/mark_seen/react/unreact (react needs ``payload.message_id`` and
  ``payload.reaction``, unreact the message id). The intake refuses the same bodies (422) first.
* Success: ``{"recipient_id": <psid>, "message_id": "m_..."}`` (no ``recipient_id`` for a
  ``user_ref`` or ``phone_number`` recipient, as on Graph); ``{"recipient_id": <psid>}`` for a
  sender action.
* Errors: ``{"error": {"message", "type": "OAuthException", "code", "error_subcode" (if any),
  "fbtrace_id", "is_transient"}}``. HTTP 500 for codes 1, 2 and 1200 (transient), HTTP 400 otherwise;
  rate-limit codes 4, 17, 32, 613, 80001, 80006 are transient (except 613/2018338) and carry
  ``X-Business-Use-Case-Usage``.

Order of checks: body parsing, token, page-wide faults (``/__sandbox/faults``), validation, reserved
PSIDs. ``latency_ms`` (plus any ``slow`` delay) is added before every answer, errors included.

Utility templates (``messaging_type: UTILITY``; :mod:`worker.sandbox.templates`)
--------------------------------------------------------------------------------
Every page has a catalogue, at first these en_US templates: ``order_update`` (APPROVED, 2
positional parameters), ``appointment_reminder`` (APPROVED, named ``name`` and ``time``),
``pending_template`` (PENDING), ``paused_template`` (PAUSED), ``quick_reply_template`` (APPROVED,
a QUICK_REPLY button). ``GET /{version}/{page_id}/message_templates`` lists it as Graph does
(``data``; ``paging.cursors`` and, beyond ``limit`` (default 25), ``paging.next`` with an
``after`` cursor), the token checked as for a send. A UTILITY send body is read with the
product's ``worker.messenger.utility.template_of`` (the one place that knows its shape: the
sandbox's one import of the product) and refused, HTTP 400, in this order: malformed 100;
unknown name/language 132001 "(#132001) Template name does not exist in the translation";
PAUSED 132015 "(#132015) Template is paused"; DISABLED 132016 "(#132016) Template is
disabled"; any other status but APPROVED (PENDING, REJECTED) 132001 saying it is not approved;
a QUICK_REPLY button 100/2018416; parameters of another count or other names 132000 "(#132000)
Number of parameters does not match the expected number of params". **These codes are the
sandbox's convention, not confirmed Meta codes for Messenger**: modelled on the WhatsApp Cloud
API's template errors (Meta's template system is shared) and the one observed Messenger refusal
(2018416, messenger-platform.md §2.5). A UTILITY send is not bound by the 24-hour window
(``outside-`` PSIDs get it); the rest (token, recipient, reserved PSIDs, faults, the record) is as
for any send.

Reserved PSIDs (fault injection by ``recipient.id``)
----------------------------------------------------
==================================  ================================================================
PSID                                behaviour
==================================  ================================================================
``err-<code>-<rest>``               always fails with Graph error ``<code>``, e.g. ``err-551-u1``
``err-<code>_<subcode>-<rest>``     always fails with ``<code>/<subcode>``, e.g. ``err-10_2018278-u2``,
                                    ``err-613_2018338-x``, ``err-190_460-a`` (Meta's message where
                                    known, else "(#<code>) Sandbox error")
``flaky<N>-<code>[_<sub>]-<rest>``  the first N calls for this exact PSID fail with that error, later
                                    calls succeed (``DELETE /__sandbox/calls`` resets the counters)
``outside-<rest>``                  outside the 24 h window (until ``POST /__sandbox/window
                                    {"psid": ...}`` opens it): RESPONSE/UPDATE sends (and sender
                                    actions) get 10/2018278; MESSAGE_TAG with a valid tag succeeds
``throttle<M>-<rest>``              80006 with ``X-Business-Use-Case-Usage`` whose
                                    ``estimated_time_to_regain_access`` is the minutes left of M
                                    (M may be 0), counted from this PSID's first call; later
                                    calls succeed
``slow<MS>-<rest>``                 succeeds after MS extra milliseconds (client read timeouts)
``http5xx-<rest>``                  HTTP 502, ``text/html`` body ``<html><body>Bad Gateway</body></html>``
``drop-<rest>``                     the connection is closed without any HTTP response (recorded with
                                    status 0). Under uvicorn the transport is closed; under another
                                    server, or when the app is wrapped in other ASGI middleware, it
                                    raises :class:`ConnectionDropped` instead (Starlette's
                                    TestClient re-raises it; uvicorn would then answer 500)
==================================  ================================================================

Anything that does not parse (``err-abc-x``, ``flaky-1-x``, ``slowly-x``) is an ordinary PSID. Rules
apply only to requests that pass token and validation checks, so ``outside-`` still fails a
deprecated tag with 100. Rate-limit errors from ``err-``/``flaky`` PSIDs report
``estimated_time_to_regain_access`` 0; use ``throttle<M>-`` or a page fault's ``regain_minutes`` for
other values.

Control endpoints (JSON, no auth)
---------------------------------
* ``GET /__sandbox/calls?page_id=&psid=&since=`` -> ``{"calls": [...]}``: every send call (success or
  error), oldest first, each ``{"seq", "at" (arrival, epoch seconds), "page_id", "psid",
  "messaging_type", "tag", "status" (HTTP status answered, 0 for a drop), "code", "subcode",
  "message_id", "appsecret_proof", "body" (parsed body or null)}``. ``since`` is a seq (exclusive);
  seqs keep increasing across clears. At most ``record_limit`` calls are kept.
* ``GET /__sandbox/stats`` -> ``{"calls", "sent" (200 with a message_id), "errors" (status != 200)}``.
* ``DELETE /__sandbox/calls``: clears the record, the stats, the ``flaky`` counters and the
  ``throttle`` clocks.
* ``GET /__sandbox/config``; ``POST /__sandbox/config {"latency_ms": float}`` changes the latency.
* ``POST /__sandbox/faults {"page_id", "code", "subcode", "count", "regain_minutes"}``: the next
  ``count`` sends for that page (all of them if ``count`` is null) fail with that error;
  ``GET /__sandbox/faults`` lists them; ``DELETE /__sandbox/faults[?page_id=]`` clears them.
* ``GET /__sandbox/templates?page_id=`` -> ``{"page_id", "templates": [{"name", "language",
  "status", "parameters" (a count, or the list of names), "buttons", "category", "id"}]}``;
  ``POST /__sandbox/templates {"page_id", "templates": [...]}`` replaces a page's catalogue,
  ``{"page_id", "name", "language", "status", "parameters", "buttons"}`` adds or changes one
  template (omitted fields keep their value); ``DELETE /__sandbox/templates[?page_id=]`` resets
  pages to the default catalogue.
* ``GET /healthz`` -> ``{"ok": true}``.

Receipts (``SandboxConfig.receipts_*``; ``messenger-worker sandbox --receipts-webhook URL
--receipts-secret S``, wired by ``up --sandbox``): signed ``message_deliveries`` and
``message_reads`` webhook events for a share of the accepted sends, after a delay
(:mod:`worker.sandbox.receipts`).

Modules
-------
``config`` (:class:`SandboxConfig`, the token convention), ``errors`` (Graph error bodies),
``validation`` (body and token parsing, the checks in Graph's order), ``rules`` (reserved PSIDs),
``state`` (the record, counters and faults), ``send`` (the raw ASGI send endpoint), ``templates``
(the pages' utility templates, their listing and the UTILITY send's checks), ``control``
(``/__sandbox/*`` and ``/healthz``), ``app`` (:func:`create_app`, :func:`serve`). The names in
``__all__`` here are the sandbox's interface; the modules' other names are implementation details.
"""

from worker.sandbox.app import create_app, serve
from worker.sandbox.config import SANDBOX_TOKEN_PREFIX, SandboxConfig, sandbox_token
from worker.sandbox.send import ConnectionDropped
from worker.sandbox.validation import DEPRECATED_TAGS, VALID_TAGS

__all__ = [
    "DEPRECATED_TAGS",
    "SANDBOX_TOKEN_PREFIX",
    "VALID_TAGS",
    "ConnectionDropped",
    "SandboxConfig",
    "create_app",
    "sandbox_token",
    "serve",
]

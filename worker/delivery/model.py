"""The engine's working objects: a claimed :class:`Delivery` and the :class:`Outcome` decided for it.

An outcome names a state-machine event; its target status comes from :func:`worker.states.apply`
(a claimed delivery is ``IN_FLIGHT``), so building an outcome that the table forbids fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.delivery import routes
from worker.graph import GraphError, SendResult
from worker.messenger.utility import UtilityTemplate, from_json
from worker.states import FINAL, Event, State, apply, parse
from worker.store import outcomes, records


@dataclass(slots=True, eq=False)
class Delivery:
    """A claimed delivery, decoded from its record (``fields`` as they were before the claim)."""

    id: str
    claim: str  # the claim's fence token (every write about this delivery carries it)
    page_id: str
    psid: str
    body: dict[str, Any]
    created_at: float = 0.0
    attempts: int = 0
    failures: int = 0
    #: Routes tried when the window is closed (worker/delivery/routes.py), and those tried so far.
    fallbacks: list[str] = field(default_factory=list)
    routes_tried: list[str] = field(default_factory=list)
    #: The status before this claim (IN_FLIGHT: a reclaim, its previous holder stopped renewing).
    previous: State = State.QUEUED
    request_id: str = ""
    #: The route in use when it was deferred or scheduled ("" = the body as accepted).
    active_route: str = ""
    #: The utility template of the ``utility:`` route (or of a direct utility body).
    utility: UtilityTemplate | None = None
    #: A pacing slot reserved when it was deferred (Redis clock, epoch s; 0 = none).
    slot_at: float = 0.0
    #: The Braze user (X-Braze-External-Id at the intake, or learned from a Messenger ref).
    external_id: str = ""
    #: Why its last round ended unsent ("" = none): a retry's error, a page pause ...
    last_reason: str = ""
    #: The X-Braze-* attribution given at the intake (records.ATTRIBUTION names, those set).
    attribution: dict[str, str] = field(default_factory=dict)
    #: The record's fields an outcome keeps (outcomes.FIELDS, those set) as claimed: what its
    #: final record is built from (worker/delivery/recorder.py, outcome_value). Nothing else
    #: writes them while it is held.
    kept: dict[str, str] = field(default_factory=dict)
    #: It was parked when claimed (``parked_at`` set: an expired park's last round).
    parked: bool = False
    # --- this round only (not stored) ---------------------------------------------------------
    #: slot_at was free when reserved (this batch's reservation, not a deferral).
    slot_free: bool = False
    #: Graph said the window is closed in this round.
    window_closed_seen: bool = False
    #: This round's send is the probe after a page pause.
    probe: bool = False

    @classmethod
    def from_record(cls, delivery_id: str, claim: str, rec: dict[str, str]) -> Delivery:
        return cls(
            id=delivery_id,
            claim=claim,
            page_id=rec.get("page_id", ""),
            psid=rec.get("psid", ""),
            body=orjson.loads(rec.get("body") or "{}"),
            created_at=records.number(rec, "created_at"),
            attempts=int(rec.get("attempts") or 0),
            failures=int(rec.get("failures") or 0),
            fallbacks=_routes(rec, "fallbacks", "fallback_tags"),
            routes_tried=_routes(rec, "routes_tried", "tags_tried"),
            previous=_previous(rec, claim),
            request_id=rec.get("request_id", ""),
            active_route=rec.get("active_route")
            or (routes.TAG + rec["active_tag"] if rec.get("active_tag") else ""),
            utility=from_json(orjson.loads(rec["utility"])) if rec.get("utility") else None,
            slot_at=records.number(rec, "slot_at"),
            external_id=rec.get("external_id", ""),
            last_reason=_reason(rec.get("error")),
            attribution={name: rec[name] for name in records.ATTRIBUTION if rec.get(name)},
            kept={name: rec[name] for name in outcomes.FIELDS if rec.get(name)},
            parked=bool(rec.get("parked_at")),
        )

    @property
    def campaign(self) -> str:
        """The campaign it counts towards: its campaign id, else its Canvas id ("" = none)."""
        return self.attribution.get("campaign_id") or self.attribution.get("canvas_id") or ""


def _previous(rec: dict[str, str], claim: str) -> State:
    """The status before this claim (a retried claim call finds its own claim in place)."""
    if rec.get("claim") == claim and rec.get("previous"):
        return parse(rec["previous"])
    return parse(rec.get("status") or State.QUEUED)


def _routes(rec: dict[str, str], name: str, legacy: str) -> list[str]:
    """A JSON list of routes; a record accepted before routes holds tag names under ``legacy``."""
    if name in rec:
        return list(orjson.loads(rec[name] or "[]"))
    return routes.from_legacy([tag for tag in orjson.loads(rec.get(legacy) or "[]") if tag])


def _reason(error: str | None) -> str:
    if not error:
        return ""
    reason = orjson.loads(error).get("reason")
    return reason if isinstance(reason, str) else ""


@dataclass(frozen=True, slots=True)
class PauseRequest:
    """Pause the delivery's page: Graph refused the page itself (throttling, token, restriction)."""

    seconds: float
    reason: str
    code: int | None


@dataclass(slots=True, eq=False)
class Outcome:
    """What happened to one claimed delivery in this round; the recorder writes it."""

    delivery: Delivery
    event: Event
    reason: str | None = None
    #: RETRY / WAIT: due this many seconds from now.
    delay: float = 0.0
    result: SendResult | None = None
    error: GraphError | None = None
    #: How it was sent (routes.delivered_via): window, tag:<TAG>, utility:<name>, a recipient kind.
    delivered_via: str | None = None
    suppress: bool = False
    suppress_tagged: bool = False
    pause: PauseRequest | None = None
    #: When the page's pause ends as pause.lua set it (epoch seconds; set by the recorder): later
    #: than asked when the pause was longer already, or grew with repeated rate limits.
    paused_until: float | None = None
    possible_duplicate: bool = False
    #: The target status (from the state machine).
    status: State = field(init=False)
    #: Set by the recorder: 1 written, 2 already written (a retried call), 0 refused by the fence.
    written: int = -1

    def __post_init__(self) -> None:
        self.status = apply(State.IN_FLIGHT, self.event)

    def cancel_instead(self, reason: str) -> None:
        """record.lua wrote it CANCELLED: its campaign was stopped (``campaign_stopped``) or an
        operator cancelled it (``operator``) while it was held, and this outcome was not final.
        The error the open outcome carried (a retry's) is not the cancel's: counted and logged
        without it."""
        self.event = Event.CANCEL
        self.status = apply(State.IN_FLIGHT, Event.CANCEL)
        self.reason = reason
        self.delay = 0.0
        self.error = None

    @property
    def paced(self) -> bool:
        """Deferred for pacing (a slot later, a probe's answer awaited, the recipient's pace)."""
        return self.reason == "paced"

    @property
    def final(self) -> bool:
        return self.status in FINAL

"""Configuration: the only module that reads the environment.

One typed, frozen :class:`Settings` object, built from the process environment and an optional
``.env`` file, validated at start-up. Tests build ``Settings(...)`` directly. Secrets are
``SecretStr`` so that they never print in a repr, a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.config.pages import PageTokens as PageTokens  # re-exported: its home before the split
from worker.config.pages import parse_page_tokens
from worker.config.urls import redis_identity as redis_identity
from worker.config.urls import redis_url as _redis_url

#: Tags Meta removed: error 100 since 2026-04-27 (messenger-platform.md §0), and the pre-2020 set.
DEPRECATED_TAGS: dict[str, str] = {
    "CONFIRMED_EVENT_UPDATE": "2026-04-27",
    "ACCOUNT_UPDATE": "2026-04-27",
    "POST_PURCHASE_UPDATE": "2026-04-27",
    **{
        tag: "2020-03-04"
        for tag in (
            "BUSINESS_PRODUCTIVITY",
            "COMMUNITY_ALERT",
            "CONFIRMED_EVENT_REMINDER",
            "PAIRING_UPDATE",
            "APPLICATION_UPDATE",
            "PAYMENT_UPDATE",
            "PERSONAL_FINANCE_UPDATE",
            "SHIPPING_UPDATE",
            "RESERVATION_UPDATE",
            "ISSUE_RESOLUTION",
            "APPOINTMENT_UPDATE",
            "GAME_EVENT",
            "TRANSPORTATION_UPDATE",
            "FEATURE_FUNCTIONALITY_UPDATE",
            "TICKET_UPDATE",
        )
    },
}
#: Tags still accepted by the Send API (HUMAN_AGENT needs App Review and human replies only).
CURRENT_TAGS = frozenset({"HUMAN_AGENT", "CUSTOMER_FEEDBACK", "NON_PROMOTIONAL_SUBSCRIPTION"})

#: The shortest bearer token (INTAKE_TOKENS, ADMIN_TOKENS) accepted.
MIN_TOKEN_LENGTH = 32
#: LINK_SECRET's shortest length: a ref of one's own lets anyone guess the key offline.
MIN_LINK_SECRET = 32
#: RECIPIENT_HASH_SALT's built-in value keeps Settings() usable in tests and read-only commands;
#: a service process refuses it (check_service): with a known salt, a PSID's hash in the logs is
#: reversed by hashing candidate PSIDs.
DEFAULT_RECIPIENT_HASH_SALT = "braze-messenger-worker"
MIN_SALT_LENGTH = 16

#: REDIS_SHARDS holds at most this many (a delivery id's first byte names its shard).
MAX_SHARDS = 64

_PLACEHOLDER = re.compile(r"^(changeme|change-me|xxx+|todo|<.*>|your[_-].*)$", re.IGNORECASE)


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class DeprecatedTagPolicy(StrEnum):
    STRIP = "strip"
    REJECT = "reject"


class WindowPolicy(StrEnum):
    FAIL = "fail"
    PARK = "park"


def token_id(token: str) -> str:
    """A bearer token's public name: a short hash, stored on the deliveries it sent (so that
    token may read them) and shown in logs. Not the token, and not enough to recover it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Environment names are the field names in upper case."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,  # a validation error must never print a token
        env_ignore_empty=True,  # APP_SECRET= in a compose file means "not set"
    )

    #: Not in the repr (nor REDIS_SHARDS): a Redis URL carries its password.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    #: Several independent Redis instances ("shards"; docs/scaling.md): comma-separated URLs.
    #: Each page lives in one (its deliveries, limiter, queue); REDIS_URL is then not used.
    redis_shards: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    #: Pages pinned to shards, {"<page_id>": <index>} (JSON, or @path of a JSON file); the others
    #: by rendezvous hashing.
    shard_pages: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    #: The shard a worker serves (0-based index into REDIS_SHARDS): its Redis and its pages.
    shard_index: int | None = Field(default=None, ge=0)
    #: With REDIS_URL=sentinel://host:26379;sentinel://host2:26379/0: the monitored master's name.
    redis_sentinel_master: str = "mymaster"
    graph_api_url: str = "https://graph.facebook.com"
    graph_api_version: str = "v25.0"
    #: Who may send (and read the deliveries they sent): comma-separated bearer tokens, or a JSON
    #: object {"<token>": ["<page_id>", ...]} limiting each token to the pages it may send as
    #: ("*" for all). At least MIN_TOKEN_LENGTH characters each.
    intake_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: The pages each intake token may send as, by token_id() (absent: every configured page).
    #: Filled from INTAKE_TOKENS' JSON form; keyed by fingerprint so no repr shows a token.
    intake_token_pages: dict[str, frozenset[str]] = Field(default_factory=dict)
    #: Who may administer (status, dead letters, replay, purge, every delivery): comma-separated.
    admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    page_access_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    #: The Send API URL's ?access_token= selects the configured page it belongs to (as Braze's
    #: template sends it); an access token we do not hold is refused. False: the URL must name
    #: the page (/{version}/{page_id}/messages or ?page_id=).
    allow_token_passthrough: bool = True
    #: Set by ``messenger-worker intake --insecure-no-auth`` (development only).
    intake_insecure_no_auth: bool = False
    app_secret: SecretStr | None = None

    max_attempts: int = Field(default=8, ge=1, le=100)
    message_ttl: float = Field(default=86_400.0, gt=0)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_cap_seconds: float = Field(default=600.0, gt=0)
    #: Longest wait honoured for a rate limit before the message is re-checked.
    rate_limit_cap_seconds: float = Field(default=3_600.0, gt=0)
    #: How long a page stays paused after a token (190) or restriction (368) error before a probe.
    token_pause_seconds: float = Field(default=900.0, gt=0)
    restricted_pause_seconds: float = Field(default=6 * 3_600.0, gt=0)

    idempotency_ttl: int = Field(default=86_400, gt=0)
    #: A final record (sent, failed, expired: a compact outcome of about 300 bytes, no body, no
    #: PSID, no token) is kept this long for the status API. Dead letters are not: see below.
    record_retention: int = Field(default=86_400, gt=0)
    #: Dead letters (whole records, replayable) older than this are purged by the scheduler;
    #: 0 keeps them until they are replayed or purged.
    dead_letter_retention: int = Field(default=0, ge=0)
    #: A campaign's counters, its open-delivery index and its stop are kept this long after its
    #: last activity (worker/campaigns.py); ``campaigns list`` shows those still kept.
    campaign_retention: int = Field(default=30 * 86_400, gt=0)
    #: A claim's lease. The holder renews it every third of this while it works on the delivery
    #: (waiting for a pacing slot, a free connection or Graph's answer); the sweeper takes only a
    #: delivery whose holder stopped renewing it (dead, or cut off from Redis) for this long.
    delivery_lease_seconds: float = Field(default=60.0, gt=0)
    #: The longest a Send API call may take in all (connect, send, answer); at most half the
    #: lease. A worker starts a call only while its lease has at least this long to run.
    graph_deadline_seconds: float = Field(default=25.0, gt=0)
    #: Outcomes are written to Redis in batches: at most this many ms after the first of a batch
    #: was decided, or at once when RECORD_FLUSH_MAX are waiting.
    record_flush_ms: float = Field(default=10.0, ge=0)
    record_flush_max: int = Field(default=200, ge=1, le=2_000)
    #: The intake answers 503 (Retry-After) to new messages while Redis uses this fraction of its
    #: maxmemory or more (checked at most once a second; no effect without maxmemory): the room
    #: left is for the workers, whose writes shrink records. 1 = off.
    redis_memory_headroom: float = Field(default=0.9, gt=0, le=1)
    #: A non-final delivery without progress for this long is re-enqueued by the sweeper.
    sweep_after_seconds: float = Field(default=600.0, gt=0)
    scheduler_interval_seconds: float = Field(default=0.1, gt=0)
    #: How long an idle scheduler waits between rounds: one that released, swept and sent
    #: nothing, with no wait due sooner (worker/delivery/scheduler.py). A wait this worker
    #: schedules wakes it; one scheduled by another worker or an operator waits this long at
    #: most. Never under SCHEDULER_INTERVAL_SECONDS nor over a quarter of a lease renewal.
    scheduler_idle_seconds: float = Field(default=1.0, gt=0)

    graph_connect_timeout: float = Field(default=5.0, gt=0)
    graph_read_timeout: float = Field(default=20.0, gt=0)
    #: Concurrent Graph calls per worker process (one event loop per process).
    worker_max_inflight: int = Field(default=100, ge=1, le=2_000)
    #: Claimed deliveries one worker process holds at a time (awaiting slots or Graph); a Celery
    #: task waits for room before claiming more (backpressure).
    engine_max_claimed: int = Field(default=2_000, ge=1)
    #: Messages per intake commit (one Lua call) and per scheduler/sweeper Celery task.
    batch_max: int = Field(default=50, ge=1, le=500)
    #: Messages one intake Celery task gathers while it waits in the queue: commits join the
    #: newest queued task up to this many (a backlog travels in big batches, an idle queue gets
    #: one task per commit).
    queue_batch_max: int = Field(default=100, ge=1, le=1_000)
    batch_window_ms: float = Field(default=10.0, ge=0)
    # -- intake load shedding (README "Intake HTTP API"); per intake process --
    #: Requests waiting for a group commit or riding on one; beyond it the send route answers
    #: 503 overloaded (Retry-After) at once and enqueues nothing.
    intake_max_pending: int = Field(default=2_000, ge=1)
    #: The longest the send route waits for Redis (memory check and commit); then it answers 503
    #: (unavailable: not stored, or unavailable_maybe_stored). Well under Braze's 90 s timeout.
    intake_deadline_seconds: float = Field(default=5.0, gt=0, le=60)
    #: The longest a caller not yet authenticated (the webhook before its signature is checked,
    #: the console's login form) takes to send its body; then 408 ``body_timeout``. A client
    #: trickling a body cannot hold a connection slot for long.
    intake_body_seconds: float = Field(default=10.0, gt=0, le=300)
    #: A request head's deadline from its first byte (then 408) and size (then 431): every
    #: route, before the app (worker/intake/protocol.py).
    intake_header_seconds: float = Field(default=10.0, gt=0, le=300)
    intake_max_header_bytes: int = Field(default=65_536, ge=8_192, le=1_048_576)
    #: uvicorn's limit_concurrency: connections or requests in progress beyond which uvicorn
    #: itself answers 503 (plain text, no Retry-After); 0 = no limit.
    intake_limit_concurrency: int = Field(default=4_000, ge=0)
    #: uvicorn's keep-alive: seconds an idle HTTP/1.1 connection stays open. Keep it longer than
    #: the load balancer's idle timeout, or the balancer reuses a connection the intake is closing
    #: (a 502 that Braze retries); idle connections count towards INTAKE_LIMIT_CONCURRENCY.
    intake_keepalive_seconds: int = Field(default=75, ge=1, le=3_600)
    queue_name: str = "messenger"
    key_prefix: str = "bmw"
    #: The cyclic collector's young-generation threshold once a process has started (after
    #: gc.freeze()); 0 keeps CPython's defaults. See worker/gc_tuning.py.
    gc_gen0_threshold: int = Field(default=50_000, ge=0)

    #: Send API calls per second per page: text-like (Meta: 300/s) and audio/video (Meta: 10/s).
    page_rate_limit: float = Field(default=250.0, gt=0)
    page_media_rate_limit: float = Field(default=8.0, gt=0)
    #: Per-recipient pace (calls/s to one PSID of one page); 0 = off.
    recipient_rate_limit: float = Field(default=0.0, ge=0)
    #: Per-page overrides: {"<page_id>": {"text": 100, "media": 5}} (JSON).
    page_rate_overrides: Annotated[dict[str, dict[str, float]], NoDecode] = Field(default_factory=dict)
    #: Largest burst a bucket allows (it is also capped at 1% of the rate).
    pace_burst: int = Field(default=10, ge=1)
    #: A slot further away than this is not awaited: the delivery is deferred to the schedule.
    pace_max_hold_seconds: float = Field(default=1.0, gt=0)
    #: Adaptive pacing: usage header percentage that halves the page's rate, and the recovery.
    usage_slowdown_threshold: int = Field(default=80, ge=1, le=100)
    pace_recovery_per_second: float = Field(default=0.01, gt=0)
    pace_min_factor: float = Field(default=0.1, gt=0, le=1)

    #: Tags tried outside the window when a request has no X-Fallback-Tags (a removed tag is
    #: skipped, logged, under DEPRECATED_TAG_POLICY=strip, refused at start under reject).
    fallback_tags: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: The order of the routes outside the window: "utility" (the request's X-Utility-Template)
    #: and "tags" (its fallback tags, in order).
    fallback_order: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["utility", "tags"])
    #: X-Utility-Template's language when it names none (and UTILITY_TEMPLATES gives none).
    utility_default_language: str = Field(default="en_US", pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4}){0,2}$")
    #: Defaults per utility template (JSON): {"<name>": {"language": "en_US", "parameters": [...]}}.
    utility_templates: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(default_factory=dict)
    deprecated_tag_policy: DeprecatedTagPolicy = DeprecatedTagPolicy.STRIP
    window_policy: WindowPolicy = WindowPolicy.FAIL
    suppression_ttl: int = Field(default=30 * 86_400, gt=0)
    tag_abuse_suppression_ttl: int = Field(default=86_400, gt=0)

    #: How long an operator console session lasts (its signed cookie's lifetime).
    console_session_seconds: int = Field(default=8 * 3600, ge=60, le=7 * 86_400)
    #: Worker processes serve /metrics on this port (0 = off).
    metrics_port: int = Field(default=9808, ge=0, le=65535)
    #: The intake serves /metrics on this port, a listener of its own that is not the public one
    #: (0 = off): its figures (queue depths, page ids, error rates) are not for the internet.
    intake_metrics_port: int = Field(default=9809, ge=0, le=65535)
    #: The address the /metrics (and a worker's /healthz, /readyz) listeners bind: every
    #: interface by default (scraped and probed from other pods); `up` binds 127.0.0.1.
    metrics_host: str = "0.0.0.0"  # noqa: S104  # scraped from outside the pod
    #: Distinct page_id label values per process before the rest are reported as "other".
    metrics_max_pages: int = Field(default=100, ge=1)

    #: Messenger webhook (the intake's /messenger/webhook): the verify token of the GET handshake.
    messenger_verify_token: SecretStr | None = None
    #: Key of the HMAC an m.me ref must carry to link a PSID to a Braze user
    #: (worker/messenger/refs.py); at least 32 characters. Unset: no ref links anything.
    link_secret: SecretStr | None = None
    #: A PSID linked to one Braze user, given a valid ref for another: keep (the first link
    #: stays, logged) or replace (the PSID moves to the new user, logged).
    link_conflict_policy: str = Field(default="keep", pattern="^(keep|replace)$")
    #: How long an inbound interaction is remembered per (page, PSID) (the 24 h window, HUMAN_AGENT's 7 days).
    window_memory_seconds: int = Field(default=8 * 86_400, gt=0)
    #: The longest a closed window is believed without asking Graph again: after it, the next
    #: send to the PSID is tried (a user may have written where no webhook told us).
    window_recheck_seconds: int = Field(default=3_600, ge=60, le=7 * 86_400)
    #: A utility template Meta paused (132015) and no other route left: the message waits this
    #: long before it is tried again (Meta unpauses after hours), dead at MESSAGE_TTL.
    template_pause_retry_seconds: int = Field(default=1_800, ge=60)
    #: How often one worker (a Redis lock) re-reads every page's utility templates from Graph
    #: (``/{page-id}/message_templates``) into the catalogue; 0 = never (``messenger-worker
    #: templates sync`` and the message_template_status_update webhook still update it).
    template_sync_seconds: float = Field(default=3_600.0, ge=0)
    #: Braze REST API (write-back): https://rest.<instance>.braze.com and a key with users.track.
    braze_rest_url: str | None = None
    braze_api_key: SecretStr | None = None
    braze_psid_attribute: str = "messenger_id"
    #: Unreachable users written back to Braze: flag (messenger_reachable=false), clear (blank the PSID), off.
    braze_feedback: str = Field(default="flag", pattern="^(flag|clear|off)$")
    #: Also send each final outcome as a Braze custom event ``messenger_delivery``.
    braze_outcome_events: bool = False
    #: Also send ``messenger_delivered`` / ``messenger_read`` custom events when Messenger's
    #: delivery and read receipts arrive (the Braze user id is then kept on a sent record for
    #: RECORD_RETENTION, until its read receipt).
    braze_receipt_events: bool = False
    braze_batch_size: int = Field(default=50, ge=1, le=75)

    log_format: LogFormat = LogFormat.JSON
    log_level: str = "INFO"
    #: Recipients (PSIDs) are logged as a salted hash unless this is true.
    log_raw_recipients: bool = False
    recipient_hash_salt: SecretStr = SecretStr(DEFAULT_RECIPIENT_HASH_SALT)  # refused by check_service

    @model_validator(mode="before")
    @classmethod
    def _scoped_intake_tokens(cls, data: Any) -> Any:
        """INTAKE_TOKENS as a JSON object: the tokens, and the pages each may send as."""
        if not isinstance(data, dict):
            return data
        raw = data.get("intake_tokens", data.get("INTAKE_TOKENS"))
        if not isinstance(raw, str) or not raw.strip().startswith("{"):
            return data
        try:
            scoped = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError("INTAKE_TOKENS is neither comma-separated tokens nor a JSON object") from None
        if not isinstance(scoped, dict) or not all(
            isinstance(pages, list | str) for pages in scoped.values()
        ):
            raise ValueError('INTAKE_TOKENS as JSON maps each token to a list of page ids (or "*")')
        pages = {
            token_id(token): frozenset(str(p) for p in allowed)
            for token, allowed in scoped.items()
            if allowed != "*" and "*" not in allowed
        }
        data = {k: v for k, v in data.items() if k not in ("intake_tokens", "INTAKE_TOKENS")}
        return {**data, "intake_tokens": list(scoped), "intake_token_pages": pages}

    @field_validator(
        "intake_tokens", "admin_tokens", "fallback_tags", "fallback_order", "redis_shards", mode="before"
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("fallback_tags")
    @classmethod
    def _tags_known(cls, value: list[str]) -> list[str]:
        tags = [tag.upper() for tag in value]
        for tag in tags:  # a removed tag: skipped or refused per DEPRECATED_TAG_POLICY (below)
            if tag not in CURRENT_TAGS and tag not in DEPRECATED_TAGS:
                raise ValueError(f"FALLBACK_TAGS: unknown tag {tag}")
        return tags

    @field_validator("fallback_order")
    @classmethod
    def _order_known(cls, value: list[str]) -> list[str]:
        steps = [step.lower() for step in value]
        if not set(steps) <= {"utility", "tags"} or len(set(steps)) != len(steps):
            raise ValueError('FALLBACK_ORDER lists "utility" and "tags", each at most once')
        return steps

    @field_validator("utility_templates", mode="before")
    @classmethod
    def _utility_json(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ValueError("UTILITY_TEMPLATES is a JSON object: template name -> defaults")  # noqa: TRY004  # pydantic turns only ValueError into a validation error
        for name, entry in value.items():
            if not re.fullmatch(r"[a-z0-9_]{1,512}", str(name)) or not isinstance(entry, dict):
                raise ValueError(f"UTILITY_TEMPLATES: {str(name)[:64]!r} needs a template name and an object")
            if set(entry) - {"language", "parameters"} or not isinstance(
                entry.get("parameters", []), list | dict
            ):
                raise ValueError(
                    f"UTILITY_TEMPLATES[{name}] holds language and parameters (a list or an object)"
                )
        return value

    @model_validator(mode="after")
    def _removed_fallback_tags(self) -> Settings:
        removed = [tag for tag in self.fallback_tags if tag in DEPRECATED_TAGS]
        if removed and self.deprecated_tag_policy == DeprecatedTagPolicy.REJECT:
            raise ValueError(
                f"FALLBACK_TAGS: {removed[0]} was removed by Meta on {DEPRECATED_TAGS[removed[0]]}"
            )
        return self

    @field_validator("page_access_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: object) -> object:
        return parse_page_tokens(value)

    @field_validator("page_rate_overrides", "shard_pages", mode="before")
    @classmethod
    def _overrides(cls, value: object) -> object:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("PAGE_RATE_OVERRIDES / SHARD_PAGES is not valid JSON") from None
        return value

    @field_validator("shard_pages", mode="before")
    @classmethod
    def _shard_pages_file(cls, value: object) -> object:
        """SHARD_PAGES as ``@/path/to/pins.json``: the pins read from that file (a list of pins
        from ``messenger-worker shards plan`` can outgrow what one environment variable holds,
        128 KiB on Linux). Read once, at start: a pin rollout restarts the processes anyway.
        Defined after ``_overrides``: pydantic runs "before" validators last-defined first."""
        if isinstance(value, str) and value.strip().startswith("@"):
            path = Path(value.strip()[1:])
            try:
                return path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"SHARD_PAGES: cannot read {path}: {exc.strerror}") from None
        return value

    @field_validator("page_rate_overrides")
    @classmethod
    def _overrides_valid(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for page, rates in value.items():
            if not set(rates) <= {"text", "media"} or any(r <= 0 for r in rates.values()):
                raise ValueError(f"PAGE_RATE_OVERRIDES[{page}]: use positive 'text' and 'media' rates")
        return value

    @field_validator("graph_api_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"v\d+\.\d+", value):
            raise ValueError("GRAPH_API_VERSION must look like v25.0")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        return _redis_url(value, "REDIS_URL")

    @model_validator(mode="after")
    def _shards(self) -> Settings:
        """REDIS_SHARDS: valid, distinct URLs; pins and SHARD_INDEX within them. A worker's
        SHARD_INDEX makes that shard its REDIS_URL (what everything in the process connects to)."""
        shards = self.redis_shards
        for url in shards:
            _redis_url(url, "REDIS_SHARDS")
        if len(set(shards)) != len(shards) or len(shards) > MAX_SHARDS:
            raise ValueError(f"REDIS_SHARDS: at most {MAX_SHARDS} URLs, each named once")
        seen: dict[tuple[str, str, int, int], int] = {}
        for index, url in enumerate(shards):
            for place in redis_identity(url):
                if place in seen:  # two shards on one Redis: one keyspace, one queue, no capacity
                    raise ValueError(
                        f"REDIS_SHARDS: shards {seen[place]} and {index} name the same Redis "
                        f"({place[0]} {place[1]}:{place[2]} db {place[3]})"
                    )
                seen[place] = index
        if any(page != page.strip() or not page for page in self.shard_pages):
            raise ValueError("SHARD_PAGES: a page id is empty or has spaces around it (it would never match)")
        if any(not 0 <= i < len(shards) for i in self.shard_pages.values()):
            raise ValueError("SHARD_PAGES: every index must name one of REDIS_SHARDS (from 0)")
        if self.shard_index is not None:
            if self.shard_index >= len(shards):
                raise ValueError("SHARD_INDEX must name one of REDIS_SHARDS (from 0)")
            object.__setattr__(self, "redis_url", shards[self.shard_index])  # frozen: set once, here
        return self

    @field_validator("link_secret")
    @classmethod
    def _link_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Anyone can get a valid ref of their own and try keys offline: the key must be long.
        if value is not None:
            raw = value.get_secret_value()
            if not raw or _PLACEHOLDER.match(raw):
                raise ValueError(
                    "LINK_SECRET: a configured secret is empty or a placeholder (e.g. 'changeme')"
                )
            if len(raw) < MIN_LINK_SECRET:
                raise ValueError(f"LINK_SECRET must be at least {MIN_LINK_SECRET} characters")
        return value

    @model_validator(mode="after")
    def _no_placeholders(self) -> Settings:
        named: list[tuple[str, SecretStr]] = [
            *(("INTAKE_TOKENS", t) for t in self.intake_tokens),
            *(("ADMIN_TOKENS", t) for t in self.admin_tokens),
            *(("PAGE_ACCESS_TOKENS", t) for t in self.page_access_tokens.values()),
        ]
        for name, optional in (
            ("APP_SECRET", self.app_secret),
            ("BRAZE_API_KEY", self.braze_api_key),
            ("MESSENGER_VERIFY_TOKEN", self.messenger_verify_token),
        ):
            if optional is not None:
                named.append((name, optional))
        for name, secret in named:
            raw = secret.get_secret_value()
            if not raw or _PLACEHOLDER.match(raw):  # the variable's name, never its value
                raise ValueError(f"{name}: a configured secret is empty or a placeholder (e.g. 'changeme')")
        return self

    @model_validator(mode="after")
    def _tokens_strong_and_separate(self) -> Settings:
        """Bearer tokens are long random strings, and one token has one role."""
        roles = {
            "INTAKE_TOKENS": [t.get_secret_value() for t in self.intake_tokens],
            "ADMIN_TOKENS": [t.get_secret_value() for t in self.admin_tokens],
        }
        for name, values in roles.items():
            if any(len(v) < MIN_TOKEN_LENGTH for v in values):
                raise ValueError(f"{name}: every token must be at least {MIN_TOKEN_LENGTH} characters")
        seen: dict[str, str] = {}
        for name, values in roles.items():
            for value in values:
                if seen.setdefault(value, name) != name:
                    raise ValueError(f"{name} and {seen[value]} share a token: give each role its own")
        return self

    @model_validator(mode="after")
    def _deadline_within_lease(self) -> Settings:
        if self.graph_deadline_seconds > self.delivery_lease_seconds / 2:
            raise ValueError(
                "GRAPH_DEADLINE_SECONDS must be at most half of DELIVERY_LEASE_SECONDS "
                f"({self.graph_deadline_seconds} > {self.delivery_lease_seconds} / 2)"
            )
        return self

    @property
    def lease_renew_seconds(self) -> float:
        """How often a worker renews the leases it holds (a third of the lease)."""
        return self.delivery_lease_seconds / 3

    @property
    def scheduler_idle_wait(self) -> float:
        """The wait between an idle scheduler's rounds: SCHEDULER_IDLE_SECONDS, but never under
        SCHEDULER_INTERVAL_SECONDS nor over a quarter of a lease renewal (the stall after which
        the sweeper holds back: worker/delivery/scheduler.py)."""
        cap = self.lease_renew_seconds / 4
        return max(self.scheduler_interval_seconds, min(self.scheduler_idle_seconds, cap))

    @cached_property
    def intake_token_values(self) -> tuple[bytes, ...]:
        return tuple(t.get_secret_value().encode() for t in self.intake_tokens)

    @cached_property
    def admin_token_values(self) -> tuple[bytes, ...]:
        return tuple(t.get_secret_value().encode() for t in self.admin_tokens)

    def page_token(self, page_id: str) -> str | None:
        token = self.page_access_tokens.get(page_id)
        return token.get_secret_value() if token is not None else None

    @property
    def braze_enabled(self) -> bool:
        return bool(self.braze_rest_url and self.braze_api_key)

    @property
    def graph_base(self) -> str:
        return f"{self.graph_api_url.rstrip('/')}/{self.graph_api_version}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment (and .env), with explicit overrides for tests and the CLI."""
    return Settings(**overrides)  # type: ignore[arg-type]  # pydantic-settings accepts field kwargs


def check_service(settings: Settings) -> None:
    """What a service process (the intake, a worker) requires on top of Settings' validation;
    raises ValueError. Settings built directly (tests) and the CLI's other commands skip it.

    RECIPIENT_HASH_SALT must be set, not a placeholder, at least MIN_SALT_LENGTH characters
    (unless LOG_RAW_RECIPIENTS, which logs PSIDs unhashed). ``messenger-worker up`` generates one.
    """
    salt = settings.recipient_hash_salt.get_secret_value()
    if not settings.log_raw_recipients and (
        salt == DEFAULT_RECIPIENT_HASH_SALT or _PLACEHOLDER.match(salt) or len(salt) < MIN_SALT_LENGTH
    ):
        raise ValueError(
            f"RECIPIENT_HASH_SALT is unset, the default or a placeholder, or shorter than "
            f"{MIN_SALT_LENGTH} characters: set it to a long random value and keep it stable, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )

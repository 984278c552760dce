"""Logging: the only module that configures structlog and the standard library's logging.

Every process calls :func:`configure_logging` once. Every record, ours or Celery's, uvicorn's,
httpx's or redis's, goes through one structlog ``ProcessorFormatter`` so each line on stdout has
one shape (JSON by default). Redaction is the last step of every line: known secret values (as
written, JSON-escaped or repr-escaped) and ``access_token=``/``Bearer`` fragments are masked in
the rendered line itself, so no field, key, exception text or repr can carry one out (one scan
per line instead of one per field: measured 33 -> 20 µs per line with 20 page tokens). The
secrets are one compiled alternation, not one substring search each: with 1,000 page tokens a
line cost 371 µs of searching, now 0.3 µs (a worker logs a line per delivery).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from worker.config import DEFAULT_RECIPIENT_HASH_SALT, Settings, pages, urls

_TOKEN_PATTERNS = (
    re.compile(r"(access_token=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"(appsecret_proof=)[^&\s\"']+", re.IGNORECASE),
    re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
)
_MASK = "***"
_MARKERS = re.compile(r"access_token=|appsecret_proof=|bearer\s", re.IGNORECASE)


class Redactor:
    """Masks secret values and token-bearing URL fragments in every string of an event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if not secret or len(secret) < 6:
                continue
            # as written, and as JSON and Python's repr escape it (a rendered line shows those)
            for form in (secret, orjson.dumps(secret).decode()[1:-1], repr(secret)[1:-1]):
                if form not in self._secrets:
                    self._secrets.append(form)
        self._secrets.sort(key=len, reverse=True)  # the longest first: a match masks all of it
        if self._secrets:
            self._pattern = re.compile("|".join(re.escape(secret) for secret in self._secrets))

    def scrub(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(_MASK, text)
        if _MARKERS.search(text) is not None:  # one search; the substitutions only when needed
            for pattern in _TOKEN_PATTERNS:
                text = pattern.sub(r"\1" + _MASK, text)
        return text

    def _walk(self, value: object) -> object:
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {self.scrub(str(k)): self._walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._walk(v) for v in value]
        return self.scrub(str(value))  # exceptions, URLs, anything the renderer would str()

    def __call__(self, _logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            event_dict[key] = self._walk(event_dict[key])
        return event_dict

    def rendered(self, _logger: WrappedLogger, _name: str, line: str | bytes) -> str | bytes:
        """Last processor: scrub the rendered line itself, whatever a value's repr produced."""
        return self.scrub(line) if isinstance(line, str) else line


#: The process-wide redactor; configure_logging feeds it the configured secrets.
REDACTOR = Redactor()


def redis_passwords(settings: Settings) -> list[str]:
    """The passwords in REDIS_URL and REDIS_SHARDS (each URL, each Sentinel node of one)."""
    return [secret for url in (settings.redis_url, *settings.redis_shards) for secret in urls.passwords(url)]


def page_token_secrets(tokens: Iterable[str], app_secret: str | None) -> list[str]:
    """Page tokens and the ``appsecret_proof`` each is sent with (HMAC-SHA256 of the token
    under APP_SECRET): Graph, or a proxy, may echo either back in an error."""
    out: list[str] = []
    for token in tokens:
        out.append(token)
        if app_secret:
            out.append(hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest())
    return out


#: APP_SECRET as configure_logging was given it: the proofs of page tokens a reload brings.
_APP_SECRET: list[str] = []


def _reloaded_page_tokens(tokens: Iterable[str]) -> None:
    REDACTOR.add(page_token_secrets(tokens, _APP_SECRET[0] if _APP_SECRET else None))


def settings_secrets(settings: Settings) -> list[str]:
    secrets = [t.get_secret_value() for t in settings.intake_tokens]
    secrets += [t.get_secret_value() for t in settings.admin_tokens]
    secrets += redis_passwords(settings)
    salt = settings.recipient_hash_salt.get_secret_value()
    if salt != DEFAULT_RECIPIENT_HASH_SALT:  # the default is the project's name, and no secret
        secrets.append(salt)
    app_secret = settings.app_secret.get_secret_value() if settings.app_secret is not None else None
    secrets += page_token_secrets(
        (t.get_secret_value() for t in settings.page_access_tokens.values()), app_secret
    )
    for optional in (settings.app_secret, settings.braze_api_key, settings.messenger_verify_token):
        if optional is not None:
            secrets.append(optional.get_secret_value())
    if settings.link_secret is not None:
        secrets.append(settings.link_secret.get_secret_value())
    return secrets


def recipient_ref(settings: Settings, psid: str) -> str:
    """What logs show for a recipient: a salted hash (stable, not reversible) unless configured raw."""
    if settings.log_raw_recipients:
        return psid
    salt = settings.recipient_hash_salt.get_secret_value().encode()
    return "h:" + hmac.new(salt, psid.encode(), hashlib.sha256).hexdigest()[:16]


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def _drop_color_message(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)  # uvicorn duplicates its message with ANSI colours
    return event_dict


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Configure structlog and stdlib logging for this process (idempotent)."""
    REDACTOR.add(settings_secrets(settings))
    _APP_SECRET[:] = [settings.app_secret.get_secret_value()] if settings.app_secret is not None else []
    pages.on_reload(_reloaded_page_tokens)  # tokens put in a PAGE_ACCESS_TOKENS file later, masked too
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_color_message,
    ]
    renderer: Processor
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    # Our own events skip the stdlib (LogRecord, findCaller, handler lock: ~3x the cost per line):
    # structlog renders them straight to the same stream with the same processors and redaction.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            # the line as written is what is scrubbed: every value, key, exception and repr in it
            REDACTOR.rendered,  # type: ignore[list-item]  # a str-to-str step after the renderer
        ],
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings.log_level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            REDACTOR.rendered,  # type: ignore[list-item]  # a str-to-str step after the renderer
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)  # Python warnings (e.g. Celery's as root) as JSON lines too
    for name in (
        "uvicorn",
        "uvicorn.error",
        "uvicorn.access",
        "celery",
        "httpx",
        "httpcore",
        "redis",
        "py.warnings",
    ):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        lg.disabled = False  # an earlier dictConfig (uvicorn's default) may have disabled it
        lg.setLevel(logging.NOTSET)  # uvicorn.Config(log_level=...) sets levels process-wide
    # Per-request/per-task noise: our own delivery.* events are the canonical lines. httpx would
    # also log every request URL (with its access_token query) at INFO.
    for name in ("httpx", "httpcore", "uvicorn.access", "celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)


def get_logger(name: str = "worker") -> Any:
    """A structlog logger whose lines carry ``logger=<name>`` (typed Any: structlog's lazy proxy)."""
    # structlog.get_logger(logger=...) would clash with wrap_logger's own "logger" parameter.
    from structlog._config import BoundLoggerLazyProxy

    return BoundLoggerLazyProxy(None, initial_values={"logger": name}, logger_factory_args=())


def bind(**values: object) -> None:
    structlog.contextvars.bind_contextvars(**values)


def clear() -> None:
    structlog.contextvars.clear_contextvars()


def event_fields(mapping: MutableMapping[str, object]) -> dict[str, object]:
    """Drop None values so log lines stay compact."""
    return {k: v for k, v in mapping.items() if v is not None}

"""PAGE_ACCESS_TOKENS as the running processes see it: reloaded when it names a file that changes."""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.config import Settings


def _read(text: str) -> str:
    """The file PAGE_ACCESS_TOKENS names, read. Never an OSError: its message would quote the
    value, and a value that is no path is most likely a token (a JSON object quoted twice, or
    one raw token: a long one is "File name too long")."""
    try:
        path = Path(text).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    raise ValueError("PAGE_ACCESS_TOKENS is neither a JSON object nor a readable file")


def parse_page_tokens(value: object) -> object:
    """PAGE_ACCESS_TOKENS as Settings takes it: a JSON object, or the path of a file holding
    one, to {page id: token}. The ValueError never quotes the value."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if not text.startswith("{"):
        text = _read(text)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("PAGE_ACCESS_TOKENS is not valid JSON") from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
    ):
        raise ValueError("PAGE_ACCESS_TOKENS must map page ids to token strings")
    return parsed


#: Told of every token set a reload brings (worker.logging's redactor: a token put in the file
#: after start-up is masked in logs too). Registered with :func:`on_reload`.
_LISTENERS: list[Callable[[Iterable[str]], None]] = []


def on_reload(listener: Callable[[Iterable[str]], None]) -> None:
    """Call ``listener`` with the tokens every time a PAGE_ACCESS_TOKENS file is read again."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


class PageTokens:
    """The page tokens, reloaded when PAGE_ACCESS_TOKENS names a file that changes: the workers send
    with them, the intake selects pages by them.

    Replacing a page's token in that file (e.g. a Kubernetes Secret mounted as a file) lifts a
    token-invalid pause without a restart: the pause remembers the fingerprint of the bad token.
    """

    def __init__(self, settings: Settings, source: str | None = None, check_every: float = 5.0) -> None:
        self._tokens = {page: token.get_secret_value() for page, token in settings.page_access_tokens.items()}
        raw = source if source is not None else os.environ.get("PAGE_ACCESS_TOKENS", "")
        self._path = Path(raw).expanduser() if raw and not raw.strip().startswith("{") else None
        self._mtime = self._stat()
        self._check_every = check_every
        self._checked = time.monotonic()

    def _stat(self) -> float:
        try:
            return self._path.stat().st_mtime if self._path is not None else 0.0
        except OSError:
            return 0.0

    def _maybe_reload(self) -> None:
        if self._path is None or time.monotonic() - self._checked < self._check_every:
            return
        self._checked = time.monotonic()
        mtime = self._stat()
        if mtime == self._mtime:
            return
        try:
            parsed = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return  # keep the tokens we have; a half-written file is retried at the next check
        if isinstance(parsed, dict) and all(isinstance(v, str) for v in parsed.values()):
            for listener in _LISTENERS:  # before any use of the new tokens
                listener(parsed.values())
            self._tokens = {str(k): v for k, v in parsed.items()}
            self._mtime = mtime

    def get(self, page_id: str) -> str | None:
        self._maybe_reload()
        return self._tokens.get(page_id)

    def page_of(self, token: str) -> str | None:
        """The configured page whose token ``token`` is, compared in constant time with every
        configured token (the answer's timing does not tell how much of a token matched)."""
        self._maybe_reload()
        given = token.encode()
        found: str | None = None
        for page, expected in self._tokens.items():
            if hmac.compare_digest(given, expected.encode()):
                found = page
        return found

    def page_ids(self) -> list[str]:
        """The configured pages, in order."""
        self._maybe_reload()
        return sorted(self._tokens)

    def only_page(self) -> str | None:
        """The page, when exactly one is configured."""
        self._maybe_reload()
        return next(iter(self._tokens)) if len(self._tokens) == 1 else None

    def __repr__(self) -> str:
        return f"PageTokens(pages={sorted(self._tokens)})"

"""The one exception the intake's input checks raise: an HTTP status and a stable machine code."""

from __future__ import annotations


class InputError(Exception):
    """A request we refuse. ``status`` is the HTTP status, ``code`` the stable machine code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

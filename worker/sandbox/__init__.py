"""The Send API double used by ``messenger-worker up --sandbox``."""

from worker.sandbox.app import (
    DEPRECATED_TAGS,
    SANDBOX_TOKEN_PREFIX,
    VALID_TAGS,
    ConnectionDropped,
    SandboxConfig,
    create_app,
    sandbox_token,
    serve,
)

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

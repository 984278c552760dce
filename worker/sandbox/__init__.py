"""The Send API double used by ``messenger-worker up --sandbox``."""

from worker.sandbox.app import *  # noqa: F403  # transitional
from worker.sandbox.app import create_app, serve

__all__ = ["create_app", "serve"]

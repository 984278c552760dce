"""braze-messenger-worker: Braze webhook campaigns delivered to Facebook Messenger.

The Celery app is importable as ``worker.celery:app`` (``celery -A worker worker`` finds it
through this module's ``celery`` attribute, loaded lazily so that the intake never imports Celery).
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `celery -A worker` looks up `worker.celery` (module) then `.app`; also `worker.app`.
    if name == "app":
        from worker.celery import app

        return app
    raise AttributeError(name)

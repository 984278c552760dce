"""The HTTP intake."""

from worker.intake.app import app_factory, create_app

__all__ = ["app_factory", "create_app"]

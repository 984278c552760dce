"""Braze: the REST client and the durable outbox of writes back to Braze."""

from worker.braze.client import *  # noqa: F403  # transitional

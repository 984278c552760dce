"""The Redis layer: keys, Lua scripts, the delivery record codec, the Celery message envelope,
connections and dead letters. Everything above it reaches Redis through these modules."""

from worker.store.keys import *  # noqa: F403  # transitional: the flat store module's names
from worker.store.keys import _s as _s

"""The HTTP intake: the Send API drop-in Braze posts to, the status and dead-letter API, the
Messenger webhook and the probes, as a small Starlette app built by :func:`create_app`.

* :mod:`.app`: the factory (routes, exception handlers, lifespan) and uvicorn's ``app_factory``;
* :mod:`.routes`: one module per concern (send, deliveries, admin, webhook, health);
* :mod:`.committer`: group commit of accepted messages, one Lua call per batch;
* :mod:`.guard`: admission by Redis memory headroom;
* :mod:`.auth`, :mod:`.http`, :mod:`.state`: bearer check, responses and errors, shared state;
* :mod:`.openapi`: the OpenAPI document served at ``/openapi.json``.
"""

from worker.intake.app import app_factory, create_app

__all__ = ["app_factory", "create_app"]

"""The intake's routes, one module per concern; each exports ``routes(settings) -> list[Route]``.

* :mod:`.send`: the Send API drop-in Braze posts to (``/me/messages`` and versioned paths);
* :mod:`.deliveries`: a delivery's status (``/v1/deliveries/{delivery_id}``);
* :mod:`.admin`: dead letters: list, replay, purge (``/v1/dead-letters``);
* :mod:`.campaigns`: campaigns (list, counters, stop, resume), cancelling a delivery, pausing and
  resuming a page (``/v1/campaigns``, ``/v1/deliveries/{id}/cancel``, ``/v1/pages/{id}/...``);
* :mod:`.webhook`: Messenger's webhook: the subscription handshake and signed events;
* :mod:`.health`: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``.

A handler reads what it needs from :func:`worker.intake.state.of`, refuses by raising
``InputError`` and lets Redis errors propagate: the app's exception handlers answer both
(:mod:`worker.intake.http`). The settings are an argument so that per-route decisions (the bearer
check, which counter) are taken once when the app is built, not per request.
"""

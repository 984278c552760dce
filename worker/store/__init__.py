"""The Redis layer: what is stored where, and the only code that changes it.

* :mod:`~worker.store.keys`: every key name (one registry);
* :mod:`~worker.store.scripts`: the Lua scripts (``store/lua/*.lua``), run by SHA;
* :mod:`~worker.store.records`: the delivery record's fields, codec and public view;
* :mod:`~worker.store.outcomes`: final records, one short value each in hour buckets, and the
  read of a record by id whether it is open or final;
* :mod:`~worker.store.envelope`: the Celery message written without Celery;
* :mod:`~worker.store.connections`: clients from ``REDIS_URL`` (TLS, Sentinel);
* :mod:`~worker.store.deadletters`: list, replay, purge and retention of dead letters;
* :mod:`~worker.store.ages`: the open deliveries' ages, counted per second (the backlog age);
* :mod:`~worker.store.ids`: delivery, batch and worker ids;
* :mod:`~worker.store.residents`: the pages a shard holds state for (changing the shard list).

A delivery's record is the source of truth for its fate; a Celery message only says "look at
these ids now". That is what makes "nothing lost" hold even where Celery-on-Redis is not
airtight (pitfalls.md: a kill -9 or a Redis restart can leave a message in no queue): every open
delivery has a deadline in ``pending``, and the sweeper re-enqueues what passes it.
"""

from worker.store.keys import Keys, text

__all__ = ["Keys", "text"]

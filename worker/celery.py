"""The Celery app: explicit broker semantics, queue names and worker signals.

The app is built by :func:`make_app`; the module's ``app`` is configured lazily, from the
environment, the first time Celery needs its configuration, so importing this module needs no
environment (tests build ``make_app(Settings(...))``).

Choices (README "At-least-once" explains the consequences):

* **json only, no result backend**: outcomes live in the delivery records, not in Celery results.
* **acks_late + reject_on_worker_lost**: a task message is acknowledged once its batch is claimed;
  from then on each delivery's claim covers it (a worker killed mid-batch leaves leases that are
  no longer renewed, and the sweeper re-enqueues those deliveries). Running a batch twice is
  safe: each delivery is claimed under a fence and a final one is never sent again.
* **a failed task is never acknowledged** (``task_acks_on_failure_or_timeout=False``): the tasks
  turn Redis errors into a requeue (:mod:`worker.tasks`).
* **Redis refusing a command is a connection problem, not the end** (``broker_channel_error_retry``):
  kombu files a Redis ``ResponseError`` (OOM at maxmemory, READONLY during a failover, LOADING)
  as a channel error, which Celery's consumer otherwise treats as unrecoverable and exits (with
  status 0: pitfalls.md). With the retry the consumer reconnects and carries on once Redis
  accepts writes again.
* **prefetch multiplier 1**: a worker holds no more batches than it has pool slots, so a killed
  worker strands little and a busy one does not hoard.
* **threads pool**: tasks hand their batch to the process's asyncio engine
  (:mod:`worker.delivery.engine`), which does the pacing and I/O; threads only claim. No Celery
  countdown/ETA is ever used: retries and waits live in our own schedule (``P:sched``), so
  nothing waits longer than the visibility timeout.
* ``worker_hijack_root_logger=False``: logging is configured once by :mod:`worker.logging`.
"""

from __future__ import annotations

import datetime
import os
import sys
from functools import lru_cache
from typing import Any

import orjson
from celery import Celery
from celery.signals import setup_logging, worker_ready, worker_shutdown

from worker.config import Settings, load_settings, urls
from worker.store.connections import celery_transport_options

#: Redis redelivers an unacknowledged message after this; our longest task is a batch bounded by
#: the Graph read timeout, far below it, and we never use ETA/countdown.
VISIBILITY_TIMEOUT = 3600


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    settings = load_settings()
    if settings.redis_shards and settings.shard_index is None:  # which broker? Never a guess
        raise SystemExit("REDIS_SHARDS is set: give each worker its shard (SHARD_INDEX, or worker --shard N)")
    try:  # a URL the broker cannot take: one line, not a traceback from inside Celery
        urls.broker_url(settings.redis_url, _url_setting(settings))
        urls.broker_transport_options(settings.redis_url, _url_setting(settings))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return settings


def _url_setting(settings: Settings) -> str:
    """The setting REDIS_URL came from, for an error line."""
    return "REDIS_URL" if settings.shard_index is None else f"REDIS_SHARDS[{settings.shard_index}]"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The app's configuration for ``settings``."""
    return {
        # kombu reads a URL's query differently from redis-py (a ?password= broke the start)
        "broker_url": urls.broker_url(settings.redis_url, _url_setting(settings)),
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            **celery_transport_options(settings),
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": False,
        "task_default_queue": settings.queue_name,
        "task_default_exchange": settings.queue_name,
        "task_default_routing_key": settings.queue_name,
        "worker_prefetch_multiplier": 1,
        "worker_pool": "threads",
        "worker_concurrency": 32,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_app(settings: Settings | None = None) -> Celery:
    """The Celery app; configured from ``settings``, or from the environment when Celery first
    needs its configuration."""
    celery_app = Celery("worker", include=["worker.tasks"])
    if settings is not None:
        celery_app.conf.update(celery_config(settings))
    else:  # read when Celery first needs its configuration (a lazy defaults initializer)
        celery_app.add_defaults(lambda: celery_config(get_settings()))
    return celery_app


app = make_app()


@setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    from worker.logging import configure_logging

    configure_logging(get_settings())
    _json_signal_messages()


def say_json(msg: str, f: Any = None) -> None:
    """Celery's ``safe_say`` (shutdown notices written from signal handlers), as one JSON line.

    Celery writes them with a bare ``os.write`` because locks are unsafe in a signal handler; this
    does the same (no logging machinery, no lock), so stdout stays one JSON object per line.
    """
    stream = f if f is not None else sys.__stdout__
    if stream is None or not hasattr(stream, "fileno"):
        return
    line = {
        "event": "celery.notice",
        "message": str(msg).strip(),
        "level": "info",
        "logger": "celery.apps.worker",
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
    }
    os.write(stream.fileno(), orjson.dumps(line) + b"\n")


def _json_signal_messages() -> None:
    import celery.apps.worker

    setattr(celery.apps.worker, "safe_say", say_json)  # noqa: B010  # not in celery-types' stubs


#: How often the consumer's event loop wakes up (see _wake_consumer).
CONSUMER_WAKE_SECONDS = 0.01


@worker_ready.connect
def _start_engine(sender: Any = None, **_kwargs: Any) -> None:
    from worker.delivery.engine import process_engine

    engine = process_engine(get_settings)
    _wake_consumer(sender)
    metrics_port = _serve_health(sender, engine)
    from worker import __version__
    from worker.gc_tuning import tune
    from worker.logging import get_logger

    settings = get_settings()
    tuned = tune(settings)  # the process is up: what it allocated so far stays
    log = get_logger("worker.celery")
    if settings.link_secret is None:  # secure by default, but say so: refs will link nobody
        log.warning(
            "inbound.linking_off",
            message="LINK_SECRET is not set: m.me refs open the window but link no PSID to a Braze user",
        )
    _advise_redis_config(settings, log)
    log.info(
        "worker.ready",
        hostname=getattr(sender, "hostname", None),
        concurrency=getattr(getattr(sender, "controller", None), "concurrency", None),
        queue=settings.queue_name,
        shard=settings.shard_index,
        version=__version__,
        metrics_port=metrics_port,
        gc_gen0_threshold=settings.gc_gen0_threshold if tuned else None,
    )


def _advise_redis_config(settings: Settings, log: Any) -> None:
    """Once per worker start: say so when Redis runs below RECOMMENDED_CONFIG (records then take
    about twice the memory: README "Redis memory"). Never fails the start."""
    from worker.store import connections

    try:
        client = connections.sync_client(settings, timeout=2)
        try:
            advice = connections.config_advice(client)
        finally:
            client.close()
    except Exception:  # noqa: BLE001  # advice only: a Redis that is down is reported elsewhere
        return
    for name, current in advice.items():
        log.warning(
            "redis.config_advice",
            setting=name,
            current=current,
            recommended=connections.RECOMMENDED_CONFIG[name],
            message="delivery records take about twice the memory: README 'Redis memory'",
        )


#: The health server of this process (one per worker process).
_HEALTH: dict[str, Any] = {}


def _serve_health(consumer: Any, engine: Any) -> int | None:
    """Each worker process serves /metrics, /healthz and /readyz on METRICS_PORT (0 = off), or the
    next free port after it (worker/health.py); returns the port."""
    from prometheus_client import REGISTRY, generate_latest

    from worker import __version__
    from worker.health import HealthServer
    from worker.metrics import BUILD_INFO, WORKER_SHARD

    settings = get_settings()
    BUILD_INFO.labels(__version__).set(1)
    if settings.shard_index is not None:
        WORKER_SHARD.labels(str(settings.shard_index)).set(1)
    port = settings.metrics_port
    if not port:
        return None
    server = HealthServer(
        worker_health(consumer, engine, settings),
        lambda: generate_latest(REGISTRY),
        host=settings.metrics_host,
    )
    _HEALTH["server"] = server
    return server.start(port)


def worker_health(consumer: Any, engine: Any, settings: Settings) -> Any:
    """The probes of a worker process: the Celery consumer, the engine's loop, the scheduler."""
    import asyncio
    import time

    from celery import bootsteps

    from worker.health import LOOP_TIMEOUT_S, READY_MAX_LAG_S, Health

    # a few of the idle scheduler's waits without a round (the round itself may take a while)
    stale_after = max(10.0, 100 * settings.scheduler_interval_seconds, 3 * settings.scheduler_idle_wait)
    terminated = getattr(bootsteps, "TERMINATE", 3)  # not in celery-types' stubs

    def loop_lag() -> float | None:
        started = time.monotonic()
        try:
            engine.submit(asyncio.sleep(0)).result(timeout=LOOP_TIMEOUT_S)
        except TimeoutError:
            return None
        return time.monotonic() - started

    def loop_alive() -> tuple[bool, dict[str, Any]]:
        lag = loop_lag()
        return lag is not None, {"lag_s": None if lag is None else round(lag, 4)}

    def loop_ready() -> tuple[bool, dict[str, Any]]:
        lag = loop_lag()
        return lag is not None and lag < READY_MAX_LAG_S, {"lag_s": lag, "max_s": READY_MAX_LAG_S}

    def consumer_alive() -> tuple[bool, dict[str, Any]]:
        state = getattr(getattr(consumer, "blueprint", None), "state", None)
        return state != terminated, {"state": state}

    def consumer_connected() -> tuple[bool, dict[str, Any]]:
        connection = getattr(consumer, "connection", None)
        connected = bool(connection is not None and connection.connected)
        return connected, {"connected": connected}

    def scheduler_recent() -> tuple[bool, dict[str, Any]]:
        scheduler = getattr(engine, "scheduler", None)
        if scheduler is None:
            return True, {"running": False}
        age = time.monotonic() - scheduler.last_ok
        return age < stale_after, {"last_ok_s_ago": round(age, 3), "stale_after_s": stale_after}

    return Health(
        live={"engine_loop": loop_alive, "celery_consumer": consumer_alive},
        ready={"broker": consumer_connected, "loop_lag": loop_ready, "scheduler": scheduler_recent},
    )


def _wake_consumer(consumer: Any) -> None:
    """Work around celery/celery#6941: with the threads pool, an ack made in a pool thread waits
    for the consumer's next network event (seconds on an idle Redis connection), and with
    prefetch 1 the next message is not fetched until then (measured here: one batch per thread
    every ~2 s). A no-op timer makes the event loop turn every 10 ms, so acks and fetches follow
    the task at once.
    """
    timer = getattr(consumer, "timer", None)
    if timer is not None:
        timer.call_repeatedly(CONSUMER_WAKE_SECONDS, _noop)


def _noop() -> None:
    return None


@worker_shutdown.connect
def _stop_engine(**_kwargs: Any) -> None:
    from worker.delivery.engine import stop_process_engine

    server = _HEALTH.pop("server", None)
    if server is not None:
        server.stop()
    stop_process_engine()

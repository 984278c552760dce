"""Deliver Braze webhook campaigns to Facebook Messenger: the intake, the workers, and their tools.

The command line of braze-messenger-worker. Commands: ``intake``, ``worker``, ``up``, ``sandbox``
(:mod:`worker.cli.services`, :mod:`worker.cli.up`) and ``send``, ``status``, ``pages``,
``dead-letters``, ``seal``, ``unpack-records``, ``link-ref`` (:mod:`worker.cli.ops`), ``templates`` (:mod:`worker.cli.templates`), ``lookup`` (:mod:`worker.cli.lookup`),
``campaigns``, ``deliveries``, ``pages``, ``queue`` (:mod:`worker.cli.campaigns`), ``shards``
(:mod:`worker.cli.shards`). The operator's commands run from the
directory of a running ``up`` take its Redis, intake and dev tokens from its state file (from
anywhere: ``--data-dir DIR``, before or after the command, names the ``up``'s directory; REDIS_URL,
when set, still wins); a connection failure is one line on stderr and exit code 1, never a
traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from worker import __version__
from worker.cli import state
from worker.cli.campaigns import add_parsers as add_campaign_parsers
from worker.cli.campaigns import cmd_campaigns, cmd_deliveries, cmd_pages, cmd_queue
from worker.cli.common import configured
from worker.cli.lookup import cmd_lookup
from worker.cli.ops import cmd_dead_letters, cmd_link_ref, cmd_seal, cmd_send, cmd_status, cmd_unpack_records
from worker.cli.services import cmd_intake, cmd_sandbox, cmd_worker
from worker.cli.shards import add_parser as add_shards_parser
from worker.cli.shards import cmd_shards
from worker.cli.templates import cmd_templates
from worker.cli.up import cmd_up

__all__ = [
    "build_parser",
    "cmd_campaigns",
    "cmd_dead_letters",
    "cmd_deliveries",
    "cmd_intake",
    "cmd_link_ref",
    "cmd_lookup",
    "cmd_pages",
    "cmd_queue",
    "cmd_sandbox",
    "cmd_seal",
    "cmd_send",
    "cmd_shards",
    "cmd_status",
    "cmd_templates",
    "cmd_unpack_records",
    "cmd_up",
    "cmd_worker",
    "main",
]

#: Commands that may take a running ``up``'s settings from its state file.
_OPERATOR_COMMANDS = {
    "send",
    "status",
    "pages",
    "dead-letters",
    "templates",
    "campaigns",
    "deliveries",
    "queue",
    "lookup",
    "shards",
    "seal",
    "unpack-records",
}
_DATA_DIR = ".data"
_DATA_DIR_HELP = (
    "the data directory of a running `messenger-worker up` (its --data-dir): the operator commands "
    "use its Redis (and intake, dev tokens), and fail when no up runs there; REDIS_URL, when set, "
    f"wins (default: {_DATA_DIR}, when an up runs there)"
)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """A meaningful default shown after an option's help; descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _seconds(text: str) -> float:
    """A number of seconds, finite and not negative (argparse's float takes 'nan' and 'inf')."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return value


def _parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, formatter_class=_Formatter
    )
    return parser


def _add_services(sub: Any) -> None:
    p = _parser(sub, "intake", "the HTTP intake Braze posts to (uvicorn)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080, help="port Braze (or the load balancer) calls")
    p.add_argument("--workers", type=int, default=1, help="uvicorn processes sharing the port")
    p.add_argument("--insecure-no-auth", action="store_true", help="accept requests without a bearer token")
    p.set_defaults(func=cmd_intake)

    p = _parser(sub, "worker", "a Celery worker with the project's defaults (threads pool)")
    p.add_argument(
        "--concurrency", type=int, default=32, help="batches in progress per process (threads only wait)"
    )
    p.add_argument("--hostname", default=None, help="Celery node name (default: celery@<host>)")
    p.add_argument(
        "--shard",
        type=int,
        default=None,
        help="with REDIS_SHARDS: the shard this worker serves (SHARD_INDEX)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="port of /metrics, /healthz and /readyz (default METRICS_PORT; taken: the next free one)",
    )
    p.set_defaults(func=cmd_worker)

    p = _parser(sub, "up", "the whole stack on this machine: Redis, worker, intake (and the sandbox)")
    p.add_argument("--sandbox", action="store_true", help="also run the Messenger sandbox and send to it")
    p.add_argument("--port", type=int, default=None, help="intake port (default: last run's, else 8080)")
    p.add_argument("--concurrency", type=int, default=32, help="the worker's --concurrency")
    p.add_argument(
        "--data-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help=f"embedded Redis data, lock and state file (default: {_DATA_DIR})",
    )
    p.set_defaults(func=cmd_up)

    p = _parser(sub, "sandbox", "the Messenger Send API sandbox (a local double of Graph)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind")
    p.add_argument("--port", type=int, default=8081, help="port to listen on")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    p.add_argument("--receipts-webhook", default=None, help="post delivery/read receipts to this webhook URL")
    p.add_argument(
        "--receipts-secret", default=None, help="app secret to sign them with (or SANDBOX_RECEIPTS_SECRET)"
    )
    p.add_argument("--receipts-share", type=float, default=0.8, help="share of sends that get receipts")
    p.add_argument("--receipts-delay-ms", type=float, default=1000.0, help="delay of each receipt")
    p.set_defaults(func=cmd_sandbox)


def _add_operations(sub: Any) -> None:
    p = _parser(sub, "send", "one test message through the whole pipeline; prints its final record")
    p.add_argument("--page", required=True, help="page id (the sandbox's: 1234567890)")
    p.add_argument("--psid", required=True, help="recipient PSID (sandbox fault PSIDs: README)")
    p.add_argument("--text", required=True, help="message text")
    p.add_argument("--intake", default=None, help="intake URL (default: a running up's, else :8080)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a final status")
    p.set_defaults(func=cmd_send)

    p = _parser(sub, "status", "queue depth, in flight, scheduled retries, dead letters, paused pages")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = _parser(sub, "dead-letters", "list, replay or purge dead letters (newest first)")
    p.add_argument("action", choices=["list", "replay", "purge"], help="what to do")
    p.add_argument("--page", default=None, help="only this page's")
    p.add_argument("--code", type=int, default=None, help="only those with this Graph error code")
    p.add_argument("--older-than", type=_seconds, default=None, help="only those dead for this many seconds")
    p.add_argument("--limit", type=_positive, default=1000, help="at most this many")
    p.add_argument(
        "--id", dest="ids", action="append", default=None, help="a dead letter's delivery id (repeatable)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="show what replay/purge would act on; change nothing"
    )
    p.add_argument("--yes", action="store_true", help="replay/purge without a filter without asking")
    p.set_defaults(func=cmd_dead_letters)

    p = _parser(
        sub,
        "seal",
        "give the buckets of every window that is over their expiry now (the workers do it a little at a time)",
    )
    p.add_argument(
        "--through-now",
        action="store_true",
        help="the current windows too: run it before rolling back to a version that sets an expiry per write",
    )
    p.set_defaults(func=cmd_seal)

    p = _parser(
        sub,
        "unpack-records",
        "write the records' packed intake part back as fields: before rolling back past the version that packs it",
    )
    p.set_defaults(func=cmd_unpack_records)

    p = _parser(sub, "link-ref", "a signed m.me ref, as the Braze template builds it (needs LINK_SECRET)")
    p.add_argument("--page", required=True, help="the page's numeric id")
    p.add_argument("--external-id", required=True, help="the Braze user's external id")
    p.add_argument("--expires", type=int, default=None, help="Unix time (Braze's link_expires)")
    p.add_argument("--ttl", type=int, default=30 * 86_400, help="seconds from now, without --expires")
    p.set_defaults(func=cmd_link_ref)

    p = _parser(sub, "lookup", "a delivery's whole story, or a recipient's state on a page (JSON)")
    p.add_argument("what", choices=["delivery", "recipient"], help="delivery ID, or recipient --page P PSID")
    p.add_argument("id", help="the delivery id, or the recipient (PSID, or phone:..., uref:...)")
    p.add_argument("--page", default=None, help="recipient: the page id")
    p.set_defaults(func=cmd_lookup)

    p = _parser(sub, "templates", "the pages' utility-template catalogue: sync from Graph, list")
    p.add_argument("templates_command", choices=["sync", "list"], help="sync: read from Graph; list: show")
    p.add_argument("--page", default=None, help="one page id (default: every configured page)")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.set_defaults(func=cmd_templates)

    add_campaign_parsers(sub, _parser)
    add_shards_parser(sub, _parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messenger-worker",
        description="Deliver Braze webhook campaigns to Facebook Messenger.\n\n"
        "First run: messenger-worker up --sandbox   (README: Quick start)",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir", dest="global_data_dir", metavar="DIR", default=None, help=_DATA_DIR_HELP
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_services(sub)
    _add_operations(sub)
    for name in _OPERATOR_COMMANDS:
        _add_data_dir(sub.choices[name])
    return parser


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    """``--data-dir`` on an operator command and on each of its subcommands (``campaigns list
    --data-dir D`` as well as ``campaigns --data-dir D list``); set only when given, so the
    global one is not overwritten by a default."""
    for action in parser._actions:  # argparse keeps a parser's subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_data_dir(child)
    parser.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR", help=_DATA_DIR_HELP)


def _redacted(url: str) -> str:
    """A Redis URL without its passwords, for an error line."""
    from worker.config import urls

    return urls.redacted(url)


def _connection_error(exc: BaseException) -> str | None:
    """One line for an unreachable Redis or intake; None for any other error."""
    import httpx
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        if os.environ.get("REDIS_SHARDS"):  # REDIS_URL is unused then: naming it would mislead
            return f"cannot reach Redis: {exc}. Is every shard of REDIS_SHARDS up?"
        url = _redacted(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
        return (
            f"cannot reach Redis at {url}: {exc}. Is the stack up (messenger-worker up), or REDIS_URL right?"
        )
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return f"Redis refused the credentials in REDIS_URL: {exc}"
    if isinstance(exc, httpx.TransportError):
        return f"cannot reach the intake: {type(exc).__name__}: {exc}. Is it running, and --intake right?"
    return None


def _use_stack(command: str, data_dir: Path, named: bool) -> str | None:
    """Take the settings of the ``up`` running in ``data_dir`` (those not configured otherwise);
    when ``data_dir`` was named, an error line if its Redis is not there to take (unless REDIS_URL
    or REDIS_SHARDS is configured: it wins, with a note)."""
    own = configured("REDIS_URL") or configured("REDIS_SHARDS")
    current = state.running_state(data_dir)
    state.apply_to_environment(current, configured)
    if not named:
        if not own and not current and command not in ("shards", "send"):
            # not silently another stack's: an up elsewhere may hold the default port
            print(
                f"messenger-worker {command}: note: no up runs in ./{_DATA_DIR} and REDIS_URL is not "
                "set: using redis://127.0.0.1:6379/0 (--data-dir DIR names an up's)",
                file=sys.stderr,
            )
        return None
    why = state.not_reachable(data_dir, current)
    if not own:
        return why
    if why is not None or current["env"]["REDIS_URL"] != os.environ.get("REDIS_URL"):
        print(
            f"messenger-worker {command}: note: REDIS_URL or REDIS_SHARDS is set (environment or "
            f"./.env): it is used, not the Redis of the up in {data_dir}",
            file=sys.stderr,
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    named = getattr(args, "data_dir", None) or args.global_data_dir
    args.data_dir = named or _DATA_DIR
    if args.command in _OPERATOR_COMMANDS:
        why = _use_stack(args.command, Path(args.data_dir), named is not None)
        if why is not None:
            print(f"messenger-worker {args.command}: {why}", file=sys.stderr)
            return 1
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # the reader went away (`status | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at the exit's flush
        return 1
    except Exception as exc:
        line = _connection_error(exc)
        if line is None:
            raise
        print(f"messenger-worker {args.command}: {line}", file=sys.stderr)
        return 1
    return result

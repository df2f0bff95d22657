"""The ``tradepulse`` command: run, replay and report."""

from __future__ import annotations

import argparse
import errno
import json
import math
import random
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from actors.store import DatabaseError
from importers import TradeLogError
from supervisor.admin import (
    AdminError,
    fetch_status,
    format_dead_letters,
    format_status,
    list_dead_letters,
    retry_dead_letters,
    service_running,
)
from supervisor.chaos import soak
from supervisor.config import Config, ConfigError, load_config
from supervisor.logs import setup_logging
from supervisor.replay import ReplayError, replay
from supervisor.report import print_report
from supervisor.service import Service
from supervisor.supervisor import ActorStartError, RestartIntensityExceeded

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("config.toml")


class CommandError(Exception):
    """A failure to report to the user as one line, without a traceback."""


def _load(args: argparse.Namespace) -> Config:
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    config = load_config(path)
    setup_logging(args.log_level, config)
    args.loaded_config = config
    return config


def explain_start_error(error: ActorStartError, config: Config) -> str:
    """Turn an actor's start failure into advice for the user."""
    cause = error.error
    while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
        cause = cause.exceptions[0]
    if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
        return (
            f"port {config.feed.port} on {config.feed.host} is already in use; stop the other "
            "process or set feed.port in config.toml (or TRADEPULSE_FEED_PORT)"
        )
    if isinstance(cause, DatabaseError):
        return str(cause)
    return str(error)


async def run_until_signal(service: Service) -> None:
    """Run ``service``; SIGINT or SIGTERM stops it cleanly, a second one at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    if service.stopped.is_set():
                        return
                    if not service._stop_requested.is_set():
                        log.info("service: %s received; stopping", signal.Signals(signum).name)
                        service.stop()
                    else:
                        log.warning("service: second signal; stopping without waiting")
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await service.run()
            nursery.cancel_scope.cancel()


def command_run(args: argparse.Namespace) -> int:
    config = _load(args)
    service = Service(config)
    trio.run(run_until_signal, service)
    return 0


def command_replay(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.speed is not None and not (0 < args.speed < math.inf):
        raise CommandError(f"--speed must be a finite number greater than 0, got {args.speed}")
    if args.strategy is not None and not args.strategy.strip():
        raise CommandError("--strategy must not be blank")
    # A replayed log is history: one notification per old trade would flood
    # the chat and the log. This applies to a service started by the replay.
    config.notifier.notify_resolved = False
    summary = trio.run(
        replay,
        config,
        args.file,
        args.format,
        args.strategy,
        args.speed,
        not args.no_progress and sys.stderr.isatty(),
    )
    print(summary.describe())
    if summary.in_process:
        print()
        print_report(config, as_json=False)
    return 0 if summary.rejected == 0 else 1


def _trade_count(text: str | None) -> int | None:
    """Return the count given to ``report --trades``, or None without one.

    Raises ``CommandError`` unless the count is a whole number above 0.
    """
    if text is None:
        return None
    try:
        count: int | None = int(text)
    except ValueError:
        count = None
    if count is None or count < 1:
        raise CommandError(f"--trades must be a whole number greater than 0, got {text!r}")
    return count


def command_report(args: argparse.Namespace) -> int:
    trades = _trade_count(args.trades)
    config = _load(args)
    print_report(config, as_json=args.json, trades=trades)
    return 0


def command_status(args: argparse.Namespace) -> int:
    config = _load(args)
    document = trio.run(fetch_status, config)
    if args.json:
        print(json.dumps(document, indent=2))
    else:
        print(format_status(document))
    return 0


def command_deadletters(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.retry is None and not args.retry_all:
        print(format_dead_letters(list_dead_letters(config, include_retried=args.all)))
        return 0
    if trio.run(service_running, config):
        raise CommandError(
            "stop the service before retrying dead letters, so that its metrics "
            "rebuild from the database when it starts again"
        )
    ids = None if args.retry_all else args.retry
    stored, failures = trio.run(retry_dead_letters, config, ids)
    print(f"stored {stored} dead letters again")
    for failure in failures:
        print(f"tradepulse: retry failed for {failure}", file=sys.stderr)
    return 0 if not failures else 1


def command_chaos(args: argparse.Namespace) -> int:
    _load(args)
    if args.seconds <= 0:
        raise CommandError(f"--seconds must be greater than 0, got {args.seconds}")
    if args.producers < 1:
        raise CommandError(f"--producers must be at least 1, got {args.producers}")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    tally = trio.run(soak, args.seconds, seed, args.producers)
    print(tally.describe())
    return 0 if tally.lost == 0 and tally.duplicated == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradepulse", description="Performance tracker that runs beside a trading bot."
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="configuration file (default: ./config.toml when present, else built-in defaults)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the service until SIGINT or SIGTERM")
    run.set_defaults(handler=command_run)

    replay_parser = commands.add_parser(
        "replay",
        help="stream a trade log into the running service, or into one started in-process",
    )
    replay_parser.add_argument("file", type=Path, help="trade log: freqtrade JSON, Kalshi or Polymarket CSV")
    replay_parser.add_argument(
        "--format", choices=["freqtrade", "kalshi", "polymarket"], help="log format (default: detected)"
    )
    replay_parser.add_argument(
        "--strategy", help="strategy name for logs that carry none (default: 'default')"
    )
    replay_parser.add_argument(
        "--speed",
        type=float,
        help="replay at this multiple of real time, e.g. 3600 plays an hour per second "
        "(default: as fast as the service accepts)",
    )
    replay_parser.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")
    replay_parser.set_defaults(handler=command_replay)

    report = commands.add_parser("report", help="print the metrics computed from the database")
    report.add_argument("--json", action="store_true", help="print the metrics document as JSON")
    report.add_argument(
        "--trades",
        metavar="N",
        help="also list the latest N trades by end time with each one's PnL, capital at risk, "
        "return on it and holding time (under \"trades\" with --json)",
    )
    report.set_defaults(handler=command_report)
    status = commands.add_parser("status", help="print the actor states of the running service")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.set_defaults(handler=command_status)

    letters = commands.add_parser(
        "deadletters", help="list messages that failed repeatedly, or store them again"
    )
    letters.add_argument("--all", action="store_true", help="also list letters already retried")
    letters.add_argument(
        "--retry", type=int, nargs="+", metavar="ID", help="store these letters again (service stopped)"
    )
    letters.add_argument("--retry-all", action="store_true", help="store every unretried letter again")
    letters.set_defaults(handler=command_deadletters)

    chaos = commands.add_parser(
        "chaos",
        help="soak test: run a service on a temporary folder, kill its actors while "
        "producers send trades, and print what was lost or duplicated",
    )
    chaos.add_argument("--seconds", type=float, default=30.0, help="duration in seconds (default: 30)")
    chaos.add_argument("--seed", type=int, help="seed of the kill schedule (default: random, printed)")
    chaos.add_argument("--producers", type=int, default=3, help="concurrent producers (default: 3)")
    chaos.set_defaults(handler=command_chaos)
    return parser


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("tradepulse: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (report | head); that is not an error.
        sys.stderr.close()
        return 0
    except BaseExceptionGroup as raised:
        if raised.subgroup(KeyboardInterrupt) is not None:
            print("tradepulse: interrupted", file=sys.stderr)
            return 130
        return _report_error(args, raised)
    except Exception as raised:
        return _report_error(args, raised)


def _report_error(args: argparse.Namespace, raised: BaseException) -> int:
    """Print a known error as one line and return the exit code; re-raise others."""
    # trio wraps errors from nurseries in exception groups; a single known
    # error inside one is still a one-line message for the user.
    error = _unwrap(raised)
    if isinstance(error, ConfigError | CommandError):
        print(f"tradepulse: error: {error}", file=sys.stderr)
        return 2
    if isinstance(error, RestartIntensityExceeded):
        print(f"tradepulse: error: {error}", file=sys.stderr)
        return 3
    if isinstance(error, DatabaseError | TradeLogError | ReplayError | AdminError):
        print(f"tradepulse: error: {error}", file=sys.stderr)
        return 1
    if isinstance(error, ActorStartError):
        print(f"tradepulse: error: {explain_start_error(error, args.loaded_config)}", file=sys.stderr)
        return 1
    raise raised

if __name__ == "__main__":
    sys.exit(main())

"""``crm-pulse`` command line: dev stack, worker, simulator, config check, roster import,
replay, audit statements."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.settings import Settings


def _cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from app.devstack import run_dev

    return run_dev(settings, simulator=not args.no_simulator, rate=args.rate)


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from app.worker import run_worker

    return run_worker(settings)


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from app.simulator import run_simulator

    return run_simulator(
        settings,
        rate=args.rate,
        count=args.count,
        backfill=args.backfill,
        seed=args.seed,
        write_roster=not args.no_roster,
        history_days=args.history_days,
    )


def _cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    from app.config import ConfigError, load_config

    path = args.file or settings.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); fix them and run check-config again",
              file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.kpis)} KPIs, {len(config.roles)} roles, "
          f"periods: {', '.join(config.periods)})")
    return 0


def _cmd_roster_import(args: argparse.Namespace, settings: Settings) -> int:
    from app.roster import RosterError, import_csv

    try:
        sent = import_csv(Path(args.file), settings)
    except RosterError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"roster: {sent} profile(s) written to {settings.topics.roster}")
    return 0


def _cmd_notify(args: argparse.Namespace, settings: Settings) -> int:
    from app.notifier import run_notifier

    return run_notifier(settings, from_beginning=args.from_beginning)


def _cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.files import write_schema_files

    for path in write_schema_files(Path(args.out) if args.out else None):
        print(path)
    return 0


def _cmd_bench(args: argparse.Namespace, settings: Settings) -> int:
    from app.bench import BenchOptions, run_bench

    return run_bench(settings, BenchOptions(
        kafka=args.kafka, events=args.events, users=args.users, teams=args.teams,
        partitions=args.partitions, workers=args.workers, rate=args.rate,
        latency_seconds=args.latency_seconds,
        array_size=args.array_size, seed=args.seed, json=args.json,
    ))


def _cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from app.replay import run_replay

    return run_replay(settings, args.since, app_id=args.app_id, redis_url=args.redis)


def _cmd_statement(args: argparse.Namespace, settings: Settings) -> int:
    from app.statement_client import print_statement

    return print_statement(settings, args.user_id, args.period, args.at, args.format, args.url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crm-pulse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="embedded broker + Redis + worker + simulator, one command")
    dev.add_argument("--no-simulator", action="store_true", help="do not start the simulator")
    dev.add_argument("--rate", type=float, default=5.0, help="simulated events per second")
    dev.set_defaults(handler=_cmd_dev)

    worker = sub.add_parser("worker", help="run a stream worker with its web server")
    worker.set_defaults(handler=_cmd_worker)

    sim = sub.add_parser("simulate", help="produce a realistic office day to any broker")
    sim.add_argument("--rate", type=float, default=5.0, help="events per second (live mode)")
    sim.add_argument("--count", type=int, default=None, help="stop after this many events")
    sim.add_argument("--backfill", action="store_true",
                     help="first write today's events from working-day start until now")
    sim.add_argument("--history-days", type=int, default=0, metavar="N",
                     help="first write the N days before today, stamped as of their time "
                     "(streaks, bests and last week's ranks; needs catch_up >= N days)")
    sim.add_argument("--seed", type=int, default=7, help="random seed (same seed, same office)")
    sim.add_argument("--no-roster", action="store_true", help="do not write the roster first")
    sim.set_defaults(handler=_cmd_simulate)

    check = sub.add_parser("check-config", help="validate a KPI model YAML file")
    check.add_argument("file", nargs="?", help="defaults to CRM_PULSE_CONFIG")
    check.set_defaults(handler=_cmd_check_config)

    roster = sub.add_parser("roster", help="roster tools")
    roster_sub = roster.add_subparsers(dest="roster_command", required=True)
    imp = roster_sub.add_parser("import", help="load a roster CSV into crm.roster")
    imp.add_argument("file", help="CSV with a header row (see docs/roster.md)")
    imp.set_defaults(handler=_cmd_roster_import)

    notify = sub.add_parser("notify", help="example notifier: print each award once (stdout)")
    notify.add_argument("--stdout", action="store_true", default=True,
                        help="post to stdout (the only channel of this example)")
    notify.add_argument("--from-beginning", action="store_true",
                        help="also post awards published before the notifier started")
    notify.set_defaults(handler=_cmd_notify)

    schemas = sub.add_parser("schemas", help="write the JSON Schema files of every topic")
    schemas.add_argument("--out", help="folder (default: the schemas package)")
    schemas.set_defaults(handler=_cmd_schemas)

    bench = sub.add_parser("bench", help="measure throughput, latency, memory and exactness")
    bench.add_argument("--kafka", help="use this broker (kafka://host:port) instead of an "
                       "embedded one; topics get a unique prefix")
    bench.add_argument("--events", type=int, default=200_000, help="events to produce")
    bench.add_argument("--users", type=int, default=1_000, help="distinct users")
    bench.add_argument("--teams", type=int, default=50, help="teams the users are spread over")
    bench.add_argument("--partitions", type=int, default=4, help="partitions of the topics")
    bench.add_argument("--workers", type=int, default=1,
                       help="worker processes in one consumer group (at most --partitions)")
    bench.add_argument("--rate", type=float, default=2_000.0,
                       help="events per second of the latency phase")
    bench.add_argument("--latency-seconds", type=float, default=20.0,
                       help="duration of the latency phase (0: skip it)")
    bench.add_argument("--array-size", type=int, default=50,
                       help="events per record in the JSON-array run")
    bench.add_argument("--seed", type=int, default=8, help="random seed of the events")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=_cmd_bench)

    replay_help = ("rebuild the KPI state and Redis from the retained crm.activities into a "
                   "new generation (docs/replay.md)")
    replay = sub.add_parser("replay", help=replay_help, description=replay_help)
    replay.add_argument("--from", dest="since", required=True, metavar="ISO_DATE",
                        help="replay records the broker received at or after this date or "
                        "date-time (no offset: the KPI model's timezone)")
    replay.add_argument("--app-id", help="app id of the new generation (default: the current "
                        "one with a -r<UTC time> suffix)")
    replay.add_argument("--redis", metavar="URL", help="Redis database for the new "
                        "generation's serving copy, holding no serving keys (default: the "
                        "first empty database on the server of CRM_PULSE_REDIS)")
    replay.set_defaults(handler=_cmd_replay)

    statement_help = ("a person's audit statement: every event and correction behind their "
                      "KPI values in a period (docs/ledger.md), from a running worker")
    statement = sub.add_parser("statement", help=statement_help, description=statement_help)
    statement.add_argument("user_id", help="CRM Pulse user id")
    statement.add_argument("--period", default="month", help="period kind (default: month)")
    statement.add_argument("--at", help="ISO 8601 date-time with an offset inside the period "
                           "(default: now)")
    statement.add_argument("--format", choices=("csv", "json"), default="csv")
    statement.add_argument("--url", help="the worker's web address (default: "
                           "http://CRM_PULSE_WEB_HOST:CRM_PULSE_WEB_PORT)")
    statement.set_defaults(handler=_cmd_statement)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.handler(args, settings) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``crm-pulse dev``: broker, Redis, worker and simulator on this machine, one command.

Everything is real (tansu, redis-server, the worker process) and in memory: each run starts
empty, so the worker also gets a fresh data directory. Ctrl-C stops the children in reverse
order, by PID.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import yaml

from app.config import ConfigError
from app.embedded import (
    EmbeddedError,
    ManagedProcess,
    describe_exit,
    free_port,
    port_free,
    settings_with,
    start_broker,
    start_redis,
    start_simulator,
    start_worker,
    wait_ready,
)
from app.kafka import ensure_topics
from app.settings import Settings

logger = logging.getLogger(__name__)

BROKER_PORT = 9092
REDIS_PORT = 6379
READY_TIMEOUT_S = 90.0
DEMO_HISTORY_DAYS = 9  # a 5-day streak across a weekend, and all of last week for its ranks


class _Stop(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, like KeyboardInterrupt: never swallowed)."""


class _Signals:
    """SIGINT/SIGTERM handling: raise :class:`_Stop`, defer it, or ignore it while stopping."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.stopping = False
        self._deferring = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            _say("still stopping, please wait ...")
            return
        self.received = signal.Signals(signum).name
        if not self._deferring:
            raise _Stop(self.received)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal until the block ends, so a started child is always recorded."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received:
            raise _Stop(self.received)


def _say(line: str = "") -> None:
    print(line, flush=True)


def _pick_port(name: str, preferred: int) -> int:
    """``preferred`` if nothing listens there, else a free port (and say so)."""
    if port_free(preferred):
        return preferred
    port = free_port()
    _say(f"{name}: port {preferred} is in use, using {port} instead")
    return port


def _banner(settings: Settings, broker: str, redis_url: str, logs: dict[str, Path]) -> None:
    web = settings.web_url
    lines = [
        "",
        "=" * 72,
        "CRM Pulse dev stack is running",
        "",
        f"  wall page   {web}/wall",
        f"  teams       {web}/api/teams",
        f"  user KPIs   {web}/api/kpis/users/sim-north-01?period=day   (any user id)",
        f"  team KPIs   {web}/api/kpis/teams/team-north?period=week   (any team id)",
        f"  health      {web}/readyz",
        f"  broker      {broker}   (tansu, in memory; topic prefix {settings.topic_prefix!r})",
        f"  redis       {redis_url}",
        "",
        "  logs:",
        *(f"    {name:<10}{path}" for name, path in logs.items()),
        "",
        "Press Ctrl-C to stop everything.",
        "=" * 72,
    ]
    _say("\n".join(lines))


def _watch(children: dict[str, ManagedProcess]) -> int:
    """Block until a child dies unexpectedly (returns 1); a signal raises :class:`_Stop`."""
    while True:
        for name, child in list(children.items()):
            code = child.returncode
            if code is None:
                continue
            if name == "simulator" and code == 0:
                _say("simulator finished; the worker keeps running")
                del children[name]
                continue
            _say(f"\n{name} (pid {child.pid}) exited unexpectedly ({describe_exit(code)}); "
                 f"last lines of {child.log_path}:\n{child.tail()}\n")
            _say(f"Fix the problem shown above (full log: {child.log_path}) and run "
                 f"`crm-pulse dev` again.")
            return 1
        time.sleep(0.5)


def _stop_all(started: list[tuple[str, ManagedProcess]]) -> None:
    """Stop children newest first (simulator, worker, redis, broker), each by PID."""
    for name, process in reversed(started):
        if process.alive():
            _say(f"stopping {name} (pid {process.pid})")
        try:
            process.stop(timeout=15 if name == "worker" else 10)
        except Exception:
            logger.exception("could not stop %s (pid %s)", name, process.pid)


def _demo_config(settings: Settings, workdir: Path) -> Path:
    """The configured KPI model with ``catch_up`` covering the simulator's history, so the
    worker reviews those closed days (streaks, personal bests, last week's ranks), and with
    audit statements on."""
    model = yaml.safe_load(settings.config.read_text(encoding="utf-8"))
    model["catch_up"] = f"{DEMO_HISTORY_DAYS + 1}d"
    model.setdefault("ledger", {})["statements"] = True  # the demo shows audit statements
    path = workdir / "pulse.yaml"
    path.write_text(f"# crm-pulse dev: {settings.config} with catch_up for the simulator's "
                    f"history and audit statements\n" + yaml.safe_dump(model, sort_keys=False),
                    encoding="utf-8")
    return path


def run_dev(settings: Settings, simulator: bool, rate: float) -> int:
    """Run the whole stack in the foreground until Ctrl-C; returns the exit code."""
    if settings.log_level.lower() != "debug":
        logging.getLogger("kafka").setLevel(logging.WARNING)  # client chatter hides our lines
    try:
        settings.pulse  # noqa: B018  (a bad KPI model fails here, before any process starts)
    except ConfigError as exc:
        _say("\n".join(exc.problems))
        _say(f"Fix {settings.config} (check it with `crm-pulse check-config`) and run again.")
        return 1
    workdir = (settings.data_dir / "dev").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    worker_data = workdir / "worker"
    shutil.rmtree(worker_data, ignore_errors=True)  # the broker starts empty: so does the state
    logs = {name: workdir / f"{name}.log" for name in ("broker", "redis", "worker", "simulator")}
    if not simulator:
        del logs["simulator"]
    started: list[tuple[str, ManagedProcess]] = []
    with _Signals() as signals:
        try:
            broker_port = _pick_port("broker", BROKER_PORT)
            redis_port = _pick_port("redis", REDIS_PORT)
            web_port = _pick_port("web", settings.web_port)

            _say(f"starting broker (tansu) on 127.0.0.1:{broker_port} ...")
            with signals.deferred():
                broker = start_broker(workdir, broker_port)
                started.append(("broker", broker.process))
            _say(f"starting redis-server on 127.0.0.1:{redis_port} ...")
            with signals.deferred():
                redis = start_redis(workdir, redis_port)
                started.append(("redis", redis.process))

            dev = settings_with(settings, kafka=broker.url, redis=redis.url,
                                web_port=web_port, data_dir=worker_data,
                                webhooks_unsigned=True, config=_demo_config(settings, workdir))
            ensure_topics(dev)
            _say(f"topics ready: {', '.join(dev.topics.all())}")

            _say(f"starting worker (log: {logs['worker']}) ...")
            with signals.deferred():
                worker = start_worker(dev, logs["worker"])
                started.append(("worker", worker))
            wait_ready(dev, READY_TIMEOUT_S, process=worker,
                       progress=lambda s: _say(f"waiting for worker ... ({s:.0f}s)"))

            if simulator:
                with signals.deferred():
                    sim = start_simulator(dev, logs["simulator"], rate=rate, backfill=True,
                                          history_days=DEMO_HISTORY_DAYS)
                    started.append(("simulator", sim))
                _say(f"simulator started: the {DEMO_HISTORY_DAYS} days before today, today's "
                     f"events so far, then {rate:g} events/s")

            _banner(dev, broker.bootstrap, redis.url, logs)
            return _watch(dict(started))
        except _Stop as stop:
            _say(f"\n{stop} received, shutting down")
            return 0
        except EmbeddedError as exc:
            _say(f"\ncrm-pulse dev could not start: {exc}")
            return 1
        except TimeoutError as exc:
            _say(f"\ncrm-pulse dev: {exc}")
            _say(f"Look at the logs in {workdir}; if the machine is just slow, run it again.")
            return 1
        except Exception as exc:
            logger.debug("dev stack failed", exc_info=True)
            _say(f"\ncrm-pulse dev failed: {type(exc).__name__}: {exc}")
            _say(f"Logs are in {workdir}; run with CRM_PULSE_LOG_LEVEL=debug for details.")
            return 1
        finally:
            signals.stopping = True
            _stop_all(started)
            if started:
                _say("stopped")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_dev(Settings(), simulator=True, rate=5.0))

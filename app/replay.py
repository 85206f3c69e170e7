"""``crm-pulse replay --from``: rebuild the KPI state and the Redis serving layer from the
retained ``crm.activities`` records into a new state generation (docs/replay.md).

1. Per partition, the first offset whose broker timestamp is at or after ``--from`` and the
   high watermark (the target) are found by fetching (:mod:`app.replay_offsets`).
2. A new generation is prepared (:mod:`app.replay_generation`): a new app id whose group
   gets those start offsets (the group-rule feed and the roster: their ends), today's
   roster copied into its roster changelog, and a Redis database without serving keys.
3. A normal ``crm-pulse worker`` runs on it until its committed offsets reach the target,
   and the serving layer has flushed to Redis; then it is stopped (by PID).
4. The command prints what the operator does next: restart the workers on the new app id
   and Redis database. The current generation is never written to.
"""

from __future__ import annotations

import logging
import sys
import time
import urllib.request
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError

from agents.period_close import CLOSABLE
from agents.periods import Calendar, Period, zone
from app.bench.broker import committed_offsets
from app.bench.children import Children
from app.config import ConfigError, PulseConfig
from app.embedded import (
    EmbeddedError,
    ManagedProcess,
    describe_exit,
    free_port,
    settings_with,
    start_worker,
    wait_ready,
    wait_until,
)
from app.kafka import bootstrap_servers, ensure_topics, log_end_offsets
from app.replay_generation import (
    GenerationError,
    check_unused,
    next_app_id,
    redacted,
    seed_roster,
    serving_redis,
)
from app.replay_offsets import Span, commit_offsets, replay_spans
from app.replay_progress import ReplayProgress
from app.settings import Settings

POLL_S = 0.5
SERVING_SETTLE_S = 1.0  # Redis writes staged and none pending for this long: flushed
SERVING_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 300.0  # table recovery of the new generation: its roster only


class ReplayError(Exception):
    """The replay cannot go on; the message says what to do next."""


def parse_since(text: str, timezone: str, now: datetime) -> datetime:
    """``--from``: an ISO date or date-time; without an offset, in the KPI model's timezone."""
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"--from {text!r} is not an ISO date; use e.g. 2026-12-01 or "
                          "2026-12-01T08:00+01:00") from None
    if since.tzinfo is None:
        since = since.replace(tzinfo=ZoneInfo(timezone))
    if since > now:
        raise ReplayError(f"--from {since.isoformat()} is in the future (now "
                          f"{now.isoformat(timespec='seconds')}); give a past date")
    return since


def partial_periods(config: PulseConfig, since: datetime, now: datetime) -> list[Period]:
    """Periods still shown or reviewed (closed within ``catch_up``) that started before
    ``since``, in the KPI model's timezone: the rebuild holds only part of their events."""
    calendar = Calendar(config.calendar_periods, config.week_start)
    tz = zone(config.timezone)
    reviewed_from = now - config.grace - config.catch_up
    periods = [calendar.period(kind, reviewed_from if kind in CLOSABLE else now, tz)
               for kind in config.periods if kind != "hour"]
    return [period for period in periods if period.start < since]


def _warn_partial(config: PulseConfig, since: datetime, now: datetime) -> None:
    partial = partial_periods(config, since, now)
    if partial:
        earliest = min(period.start for period in partial)
        print(f"note: these periods started before --from, so the rebuild holds only their "
              f"events from --from on ({config.timezone}): "
              f"{', '.join(f'{p.kind} from {p.start.date()}' for p in partial)}; for a "
              f"complete rebuild use --from {earliest.date()} or earlier", flush=True)


def check_retention(spans: list[Span], since: datetime) -> None:
    """Refuse ``--from`` before the oldest retained record where older ones were deleted."""
    cut = [s for s in spans if s.first > 0 and s.first_timestamp is not None
           and s.first_timestamp > since.timestamp()]
    if not cut:
        return
    oldest = datetime.fromtimestamp(max(s.first_timestamp or 0 for s in cut), UTC)
    lost = ", ".join(f"partition {s.partition}: {s.first:,} records" for s in cut)
    raise ReplayError(
        f"--from {since.isoformat()} is older than the retained history: retention deleted "
        f"the records before it ({lost}), so events after --from are missing; use --from "
        f"{oldest.isoformat(timespec='seconds')} or later")


def _plan(settings: Settings, since: datetime) -> list[Span]:
    topic = settings.topics.activities
    bootstrap = bootstrap_servers(settings.kafka)
    try:
        spans = replay_spans(bootstrap, topic, since)
    except (KafkaError, TimeoutError) as exc:
        raise ReplayError(f"cannot reach the broker at {settings.kafka} ({exc}); start it, or "
                          "set CRM_PULSE_KAFKA") from exc
    if not spans:
        raise ReplayError(f"{topic} does not exist at {settings.kafka}; check "
                          "CRM_PULSE_KAFKA and CRM_PULSE_TOPIC_PREFIX")
    check_retention(spans, since)
    return spans


def _prepare(settings: Settings, new: Settings, spans: list[Span]) -> None:
    """Topics, the roster copy and the new group's offsets (before its worker starts)."""
    check_unused(new)
    ensure_topics(new)
    topics, bootstrap = new.topics, bootstrap_servers(new.kafka)
    offsets = {TopicPartition(topics.activities, s.partition): s.start for s in spans}
    for internal in (topics.groups, topics.records):  # only the new generation's messages
        offsets |= {TopicPartition(internal, p): end
                    for p, end in log_end_offsets(bootstrap, internal).items()}
    offsets |= seed_roster(settings, new)
    commit_offsets(bootstrap, new.app_id, offsets)


def _processed(admin: KafkaAdminClient, settings: Settings, spans: list[Span]) -> int:
    committed = committed_offsets(admin, settings.app_id, settings.topics.activities)
    return sum(min(max(committed.get(s.partition, 0), s.start), s.end) - s.start
               for s in spans)


def _follow(worker: ManagedProcess, new: Settings, spans: list[Span],
            progress: ReplayProgress) -> None:
    """Until the new group's committed offsets reach the target (fail if the worker exits)."""
    total = sum(s.total for s in spans)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(new.kafka),
                             client_id="crm-pulse-replay")
    try:
        while True:
            if not worker.alive():
                raise ReplayError(
                    f"the replay worker exited ({describe_exit(worker.returncode)}); its log "
                    f"{worker.log_path}:\n{worker.tail()}\nfix the cause, delete the topics "
                    f"{new.app_id}-*, and run the replay again")
            progress.update(_processed(admin, new, spans))
            if progress.done >= total:
                return
            time.sleep(POLL_S)
    finally:
        admin.close()


def _serving_idle(new: Settings) -> bool:
    """Whether the worker's serving layer reaches Redis and has nothing waiting."""
    with urllib.request.urlopen(f"{new.web_url}/metrics", timeout=5) as response:  # noqa: S310
        lines = response.read().decode().splitlines()
    values = dict(line.split(" ", 1) for line in lines
                  if line.startswith(("crm_pulse_serving_pending ", "crm_pulse_redis_up ")))
    return (float(values.get("crm_pulse_serving_pending", "nan")) == 0
            and float(values.get("crm_pulse_redis_up", "nan")) == 1)


def _wait_serving(worker: ManagedProcess, new: Settings) -> bool:
    """Wait until the serving layer has been idle for :data:`SERVING_SETTLE_S` (a flush in
    progress shows nothing pending)."""
    idle_since: float | None = None

    def settled() -> bool:
        nonlocal idle_since
        if not _serving_idle(new):
            idle_since = None
            return False
        idle_since = idle_since or time.monotonic()
        return time.monotonic() - idle_since >= SERVING_SETTLE_S

    try:
        wait_until(settled, SERVING_TIMEOUT_S, "the serving layer's Redis writes",
                   process=worker, interval=0.25)
    except TimeoutError:
        return False
    return True


def _next_steps(settings: Settings, new: Settings, flushed: bool) -> str:
    old = settings.app_id
    lines = [
        "next:",
        f"  1. stop every worker running with CRM_PULSE_APP_ID={old}",
        f"  2. start them with CRM_PULSE_APP_ID={new.app_id} "
        f"CRM_PULSE_REDIS={redacted(new.redis)} (add the Redis password if it has one);",
        "     they go on from where the replay stopped, records sent since then included",
        f"  3. when the walls look right, delete the old generation: topics "
        f"{old}-kpi-changelog, {old}-groups-changelog, {old}-ledger-changelog, "
        f"{old}-roster-changelog, consumer "
        f"group {old}, and the serving keys in {redacted(settings.redis)} (they expire too)",
    ]
    if settings.pseudonym_key is None:
        lines.append("  pseudonyms on walls derive from the app id while CRM_PULSE_PSEUDONYM_KEY "
                     "is unset: set it on both generations to keep them")
    if not flushed:
        lines.append("  the serving copy was still being written when the replay stopped; the "
                     "workers of step 2 rewrite their partitions to Redis when they start")
    lines.append(f"to discard the rebuild instead: delete the topics {new.app_id}-* and the "
                 f"consumer group {new.app_id}, and flush {redacted(new.redis)}")
    return "\n".join(lines)


def _replay(settings: Settings, since_text: str, app_id: str | None,
            redis_url: str | None) -> int:
    now = datetime.now(UTC)
    since = parse_since(since_text, settings.pulse.timezone, now)
    spans = _plan(settings, since)
    new = settings_with(
        settings, app_id=app_id or next_app_id(settings.app_id, now),
        redis=serving_redis(settings, redis_url), web_host="127.0.0.1", web_port=free_port())
    total, skipped = sum(s.total for s in spans), sum(s.skipped for s in spans)
    print(f"replay of {settings.topics.activities} from {since.isoformat()}: {total:,} records "
          f"on {len(spans)} partitions ({skipped:,} retained records before --from are "
          f"skipped) into app id {new.app_id}, serving copy in {redacted(new.redis)}",
          flush=True)
    _warn_partial(settings.pulse, since, now)
    log = new.data_dir / new.app_id / "replay-worker.log"
    started = time.monotonic()
    try:
        _prepare(settings, new, spans)
        print(f"replay worker log: {log}", flush=True)
        with Children() as children:
            worker = children.start(lambda: start_worker(new, log))
            wait_ready(new, READY_TIMEOUT_S, process=worker)
            with ReplayProgress(total) as progress:
                _follow(worker, new, spans, progress)
            flushed = _wait_serving(worker, new)
            children.stop(worker)
    except KeyboardInterrupt:
        print(f"replay: interrupted; app id {new.app_id} is incomplete and unused: delete its "
              f"topics {new.app_id}-* and consumer group, and run the replay again",
              file=sys.stderr, flush=True)
        return 130
    elapsed = time.monotonic() - started
    print(f"replay done: {total:,} records in {elapsed:,.1f} s, worker start included "
          f"({progress.rate:,.0f} records/s once it was ready); "
          f"app id {new.app_id} is at the offsets of {now.isoformat(timespec='seconds')}",
          flush=True)
    print(_next_steps(settings, new, flushed), flush=True)
    return 0


def run_replay(settings: Settings, since_text: str, app_id: str | None = None,
               redis_url: str | None = None) -> int:
    """The command; exit code 0 when caught up, 1 on an error, 130 when interrupted."""
    # Connection chatter, and kafka-python logs socket races on close as errors; real
    # failures reach this command as exceptions.
    for name in ("kafka", "aiokafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return _replay(settings, since_text, app_id, redis_url)
    except (ReplayError, GenerationError, ConfigError, EmbeddedError, TimeoutError) as exc:
        print(f"replay: {exc}", file=sys.stderr, flush=True)
        return 1
    except KafkaError as exc:
        print(f"replay: the broker at {settings.kafka} failed ({exc!r}); check it and run the "
              "replay again", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("replay: interrupted before anything was written", file=sys.stderr, flush=True)
        return 130

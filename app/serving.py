"""The Redis serving layer: leaderboards, the achievements feed and team snapshots.

Kafka and the Faust tables stay the state of record; Redis holds a read-optimised copy for
the wall, the leaderboard API and readers that need every worker's figures. Writes are
staged after each batch (:meth:`ServingLayer.stage`), coalesced per key, and flushed in
pipelines by :meth:`ServingLayer.run`, off the processing path: while Redis is down the
worker goes on, the newest value per key waits, ``healthy`` is false (``/readyz`` says
degraded), and when Redis is back the worker's partitions are written again in full
(:meth:`ServingLayer.resync`), so Redis can always be rebuilt from the tables. With nothing
to write, a heartbeat every ``HEARTBEAT_S`` notices an outage all the same, and every
round trip compares Redis's ``run_id``: a server restarted (empty) between two writes is
rewritten too, with the worker's last ``FEED_MAX`` awards for the feed.

Keys (``<prefix>`` = topic prefix + ``cp:``), see docs/metrics.md:

- ``<prefix>lb:<kpi>:<period key>:<scope>``: sorted set, member = user id, score = value;
  scope ``team:<id>``, ``office:<id>`` or ``all``;
- ``<prefix>team:<id>:<period key>``: hash, partition -> that partition's team bucket;
- ``<prefix>feed``: capped stream of achievement records, one per ``achievement_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agents.achievements import REVOKED, Award
from agents.kpis import KpiFolder
from agents.periods import Calendar
from app.settings import Settings

logger = logging.getLogger(__name__)

BOARD_PERIODS = ("day", "week", "month")
KEEP = {"day": timedelta(days=3), "week": timedelta(days=21), "month": timedelta(days=100)}
FEED_MAX = 500
FEED_ID_TTL_S = 7 * 86_400
MAX_PENDING = 200_000
RETRY_S = (0.5, 1, 2, 5)
HEARTBEAT_S = 1.0
# One XADD per achievement_id: a replayed award (same id) is not shown twice.
_FEED_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'achievement', ARGV[1])
end
return 1
"""


class ServingUnavailable(Exception):
    """Redis did not answer a read."""


@dataclass
class _Staged:
    scores: dict[tuple[str, str], float] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], bytes] = field(default_factory=dict)
    expiries: dict[str, int] = field(default_factory=dict)
    feed: list[tuple[str, bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.scores) + len(self.snapshots) + len(self.feed)

    def merge_older(self, older: _Staged) -> None:
        """Put back what a failed flush held, under anything staged since (newer wins)."""
        self.scores = {**older.scores, **self.scores}
        self.snapshots = {**older.snapshots, **self.snapshots}
        self.expiries = {**older.expiries, **self.expiries}
        self.feed = older.feed + self.feed


class ServingLayer:
    def __init__(self, settings: Settings,
                 profile: Callable[[str], dict[str, Any] | None]) -> None:
        config = settings.pulse
        self.redis = aioredis.from_url(settings.redis, socket_timeout=3,
                                       socket_connect_timeout=3)
        self.prefix = f"{settings.topic_prefix}cp:"
        self.profile = profile
        self.kpis = KpiFolder(config)
        self.calendar = Calendar(config.calendar_periods, config.week_start)
        self.kinds = {kind[0]: kind for kind in BOARD_PERIODS if kind in config.periods}
        self.healthy = True
        self.needs_resync = True
        self._staged = _Staged()
        self._wake = asyncio.Event()
        self._recent_awards: deque[tuple[str, bytes]] = deque(maxlen=FEED_MAX)
        self._server_id: str | None = None

    @property
    def pending(self) -> int:
        return len(self._staged)

    # -- keys ----------------------------------------------------------------------------

    def board_key(self, kpi: str, period_key: str, scope: str) -> str:
        return f"{self.prefix}lb:{kpi}:{period_key}:{scope}"

    def team_snapshot_key(self, team_id: str, period_key: str) -> str:
        return f"{self.prefix}team:{team_id}:{period_key}"

    @property
    def feed_key(self) -> str:
        return f"{self.prefix}feed"

    # -- writing -------------------------------------------------------------------------

    def stage(self, writes: dict[str, dict[str, Any]], awards: Iterable[Award] = (),
              now: float | None = None,
              changed: dict[str, frozenset[str] | None] | None = None) -> None:
        """Queue the serving copies of a batch's table writes and awards.

        ``changed`` (optional) maps a written user bucket to the KPIs the batch may have
        changed (``None``: all of them, e.g. a new bucket); only those scores are staged
        (and ratios of them): the others are in Redis already (after an outage or a
        rebalance :meth:`resync` writes everything again). Without it, or for a key it
        does not name, every KPI is staged.
        """
        staged = self._staged
        for key, value in writes.items():
            kind, period_key, rest = key.split("|", 2)
            period = self.kinds.get(period_key[:1])
            if period is None or period_key[1:2] != ":":
                continue
            expiry = int(KEEP[period].total_seconds())
            if kind == "u":
                self._stage_scores(rest, period_key, value, expiry,
                                   changed.get(key) if changed is not None else None)
            elif kind == "t":
                partition, team_id = rest.split("|", 1)
                snapshot = self.team_snapshot_key(team_id, period_key)
                staged.snapshots[snapshot, partition] = orjson.dumps(
                    {"n": value["n"], "s": value["s"]})
                staged.expiries[snapshot] = expiry
        emitted_at = now if now is not None else datetime.now(UTC).timestamp()
        for award in awards:
            if award.kind == REVOKED:  # the wall shows recognition, not its withdrawal
                continue
            entry = (award.achievement_id, award.record(emitted_at)[1])
            staged.feed.append(entry)
            self._recent_awards.append(entry)
        if len(staged) > MAX_PENDING:  # Redis has been away long: rewrite all when back
            logger.warning("serving: %d writes waiting for Redis; dropped, will resync",
                           len(staged))
            self._staged, self.needs_resync = _Staged(), True
        self._wake.set()

    def _stage_scores(self, user_id: str, period_key: str, bucket: dict[str, Any],
                      expiry: int, only: frozenset[str] | None = None) -> None:
        member = self.profile(user_id) or {}
        scopes = ["all"] + [f"{scope}:{member[f'{scope}_id']}" for scope in ("team", "office")
                            if member.get(f"{scope}_id")]
        staged = self._staged
        values = self.kpis.read([bucket])
        if only is not None:
            ratios = self.kpis.ratios
            values = {kpi: value for kpi, value in values.items() if kpi in only or (
                kpi in ratios and not only.isdisjoint(ratios[kpi]))}
        for kpi, value in values.items():
            for scope in scopes:
                board = self.board_key(kpi, period_key, scope)
                staged.scores[board, user_id] = value
                staged.expiries[board] = expiry

    def resync(self, items: Iterable[tuple[str, dict[str, Any]]], today: date) -> int:
        """Stage every recent user and team bucket of ``items`` (the owned partitions) and
        this worker's recent awards (the feed adds each ``achievement_id`` once)."""
        recent = {}
        for key, value in items:
            kind, period_key = key.split("|", 2)[:2]
            period = self.kinds.get(period_key[:1])
            if kind not in ("u", "t") or period is None or period_key[1:2] != ":":
                continue
            if (today - Calendar.key_start(period_key)) <= KEEP[period]:
                recent[key] = value
        self._staged.feed.extend(self._recent_awards)
        self.stage(recent)
        return len(recent)

    async def run(self) -> None:
        """Flush staged writes for ever; on failure keep them and retry."""
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):  # no news: a heartbeat round trip
                await asyncio.wait_for(self._wake.wait(), HEARTBEAT_S)
            self._wake.clear()
            staged, self._staged = self._staged, _Staged()
            try:
                await self._flush(staged)
            except (RedisError, OSError) as exc:
                if self.healthy:
                    logger.warning("serving: Redis unavailable (%s); processing goes on, "
                                   "writes wait", type(exc).__name__)
                self.healthy = False
                self._staged.merge_older(staged)
                self._wake.set()
                await asyncio.sleep(RETRY_S[min(failures, len(RETRY_S) - 1)])  # backoff
                failures += 1
                continue
            if not self.healthy:
                logger.info("serving: Redis is back; rewriting the owned partitions")
                self.needs_resync = True
            self.healthy, failures = True, 0

    async def _flush(self, staged: _Staged) -> None:
        pipe = self.redis.pipeline(transaction=False)
        boards: dict[str, dict[str, float]] = {}
        for (board, member), score in staged.scores.items():
            boards.setdefault(board, {})[member] = score
        for board, scores in boards.items():  # one ZADD per board, not per member
            pipe.zadd(board, scores)
        for (snapshot, partition), data in staged.snapshots.items():
            pipe.hset(snapshot, partition, data)
        for key, seconds in staged.expiries.items():
            pipe.expire(key, seconds)
        for achievement_id, record in staged.feed:
            pipe.eval(_FEED_ONCE, 2, f"{self.prefix}feed:id:{achievement_id}", self.feed_key,
                      record, FEED_MAX, FEED_ID_TTL_S)
        pipe.info("server")
        server_id = (await pipe.execute())[-1]["run_id"]
        if self._server_id not in (None, server_id):
            logger.info("serving: Redis was restarted; rewriting the owned partitions")
            self.needs_resync = True
        self._server_id = server_id

    # -- reading -------------------------------------------------------------------------

    async def board(self, kpi: str, period_key: str, scope: str,
                    count: int) -> list[tuple[str, float]]:
        try:
            rows = await self.redis.zrevrange(self.board_key(kpi, period_key, scope), 0,
                                              count - 1, withscores=True)
        except (RedisError, OSError) as exc:
            raise ServingUnavailable(str(exc)) from None
        return [(member.decode(), score) for member, score in rows]

    async def feed(self, count: int) -> list[dict[str, Any]]:
        try:
            entries = await self.redis.xrevrange(self.feed_key, count=count)
        except (RedisError, OSError) as exc:
            raise ServingUnavailable(str(exc)) from None
        awards = [orjson.loads(fields[b"achievement"]) for _, fields in entries]
        # After a rebuild the stream holds each worker's awards in turn: newest first.
        return sorted(awards, key=lambda award: award["emitted_at"], reverse=True)

    async def team_buckets(self, team_id: str,
                           period_keys: Iterable[str]) -> list[dict[str, Any]]:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for period_key in period_keys:
                pipe.hvals(self.team_snapshot_key(team_id, period_key))
            answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServingUnavailable(str(exc)) from None
        return [orjson.loads(raw) for values in answers for raw in values]

"""Prometheus metrics of one worker (docs/metrics.md lists them all).

Counters are counted where things happen (:meth:`PulseMetrics.batch`, ...). Gauges of state
(KPI values and targets, active users, lag, table sizes) are computed at scrape time by
:class:`StateCollector` from the partitions this worker owns, so that a sum over workers
counts everything once. Label values come from the configuration (KPIs, types, flags,
sources), never from free event text, which keeps the series count bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from agents.achievements import Award
from agents.ingest import BatchResult, partition_of, team_key, user_key
from agents.kpis import KpiFolder
from agents.period_close import Alert
from agents.periods import Calendar, zone
from app.directory import Directory, pseudonym
from app.kpi_targets import team_targets

if TYPE_CHECKING:
    from app.faust_app import Pulse

SOURCES = ("dynamics365", "salesforce", "hubspot", "pipedrive", "generic")
ACTIVE_PERIODS = ("hour", "day", "week", "month")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)
OTHER = "other"
disable_created_metrics()  # no *_created series: they double the output for nothing here


class PulseMetrics:
    """The worker's registry and the counters the pipeline and the edge update."""

    def __init__(self, pulse: Pulse) -> None:
        config = pulse.settings.pulse
        self.registry = CollectorRegistry()
        self._types = set(KpiFolder(config).types)
        self._flags = {flag for rule in config.achievements for flag in getattr(rule, "flags", ())}
        counter = self._counter
        self.events = counter("crm_pulse_events", "Events applied to the KPIs.",
                              ("type", "source"))
        self.duplicates = counter("crm_pulse_duplicates", "Repeated deliveries of an event_id.")
        self.corrections = counter("crm_pulse_corrections", "Record-ledger corrections applied "
                                   "to the KPIs.", ("reason",))
        self.dead_letters = counter("crm_pulse_dead_letters", "Records and elements sent to "
                                    "the DLQ.", ("reason",))
        self.features = counter("crm_pulse_features_used", "Events that used a CRM function.",
                                ("feature",))
        self.achievements = counter("crm_pulse_achievements", "Achievements emitted.",
                                    ("rule", "kind"))
        self.alerts = counter("crm_pulse_alerts", "Private alerts emitted (counts only).",
                              ("kind",))
        self.webhooks = counter("crm_pulse_webhook_requests", "Webhook deliveries.",
                                ("vendor", "status"))
        self.latency = Histogram("crm_pulse_event_latency_seconds", "Event time to applied.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("crm_pulse_batch_seconds", "One ingest batch.",
                                       registry=self.registry)
        self.registry.register(StateCollector(pulse))

    def _counter(self, name: str, documentation: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, documentation, tuple(labels), registry=self.registry)

    def batch(self, result: BatchResult, seconds: float, now: float) -> None:
        for (event_type, source), count in result.counted.items():
            self.events.labels(event_type if event_type in self._types else OTHER,
                               source if source in SOURCES else OTHER).inc(count)
        for feature, count in result.features.items():
            self.features.labels(feature if feature in self._flags else OTHER).inc(count)
        for reason, count in result.rejected.items():
            self.dead_letters.labels(reason).inc(count)
        if result.duplicates:
            self.duplicates.inc(result.duplicates)
        for reason, count in result.corrected.items():
            self.corrections.labels(reason).inc(count)
        for occurred in result.occurred:
            self.latency.observe(max(0.0, now - occurred))
        self.awarded(result.awards)
        self.batch_seconds.observe(seconds)

    def awarded(self, awards: Iterable[Award]) -> None:
        for award in awards:
            self.achievements.labels(award.rule, award.kind).inc()

    def alerted(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            self.alerts.labels(alert.kind).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector:
    """Gauges read from the tables at scrape time, for the partitions this worker owns."""

    def __init__(self, pulse: Pulse) -> None:
        self.pulse = pulse
        self.config = pulse.settings.pulse
        self.kpis = KpiFolder(self.config)
        self.calendar = Calendar(self.config.calendar_periods, self.config.week_start)

    def describe(self) -> list[Metric]:
        return []  # computed at scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        pulse, config = self.pulse, self.config
        topic = pulse.activities.get_topic_name()
        owned = {tp.partition for tp in pulse.app.assignor.assigned_actives()
                 if tp.topic == topic}
        directory = Directory.build(config, list(pulse.roster_table.values()))
        now = datetime.now(UTC)
        yield from self._groups(directory, owned, now)
        yield from self._people(directory, owned, now)
        yield self._lag(topic, owned)
        sizes = GaugeMetricFamily("crm_pulse_table_keys", "Keys held by this worker.",
                                  labels=("table",))
        for name, table in (("kpi", pulse.kpi_table), ("groups", pulse.group_table),
                            ("ledger", pulse.ledger_table), ("roster", pulse.roster_table)):
            sizes.add_metric((name,), len(table.data))
        yield sizes
        serving = getattr(pulse, "serving", None)
        if serving is not None:
            yield GaugeMetricFamily("crm_pulse_redis_up", "The last serving write reached Redis.",
                                    value=1.0 if serving.healthy else 0.0)
            yield GaugeMetricFamily("crm_pulse_serving_pending", "Serving keys waiting for "
                                    "Redis.", value=serving.pending)

    def _groups(self, directory: Directory, owned: set[int],
                now: datetime) -> Iterator[Metric]:
        values = GaugeMetricFamily("crm_pulse_kpi_value", "Current period value from the owned "
                                   "partitions (sum over workers).",
                                   labels=("scope", "id", "kpi", "period"))
        targets = GaugeMetricFamily("crm_pulse_kpi_target", "The group's target for the "
                                    "current period (max over workers).",
                                    labels=("scope", "id", "kpi", "period"))
        team_buckets: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
        for team_id in directory.teams:
            team = self.config.teams.get(team_id)
            tz = zone((team.timezone if team else None) or self.config.team_timezone)
            for kind in self.config.periods:
                keys = self.calendar.period(kind, now, tz).bucket_keys
                team_buckets[team_id, kind] = [self.pulse.kpi_value(team_key(k, p, team_id))
                                               for k in keys for p in owned]
        groups = [("team", team_id, [team_id], directory.members[team_id])
                  for team_id in directory.teams]
        groups += [("office", office_id, teams, directory.office_members(office_id))
                   for office_id, teams in directory.offices().items()]
        for scope, group_id, teams, members in groups:
            for kind in self.config.periods:
                buckets = [b for team_id in teams for b in team_buckets[team_id, kind]]
                for kpi, value in self.kpis.read(buckets).items():
                    values.add_metric((scope, group_id, kpi, kind), value)
                goal = (team_targets(self.config, group_id, members, kind) if scope == "team"
                        else _summed(team_targets(self.config, t, directory.members[t], kind)
                                     for t in teams))
                for kpi, target in goal.items():
                    targets.add_metric((scope, group_id, kpi, kind), target)
        yield values
        yield targets

    def _people(self, directory: Directory, owned: set[int],
                now: datetime) -> Iterator[Metric]:
        active = GaugeMetricFamily("crm_pulse_active_users", "Owned users with an event in the "
                                   "current period (sum over workers).",
                                   labels=("scope", "id", "period"))
        per_user = GaugeMetricFamily("crm_pulse_user_kpi_value", "Per-user KPI values "
                                     "(metrics.per_user).", labels=("user", "kpi", "period"))
        counts: dict[tuple[str, str, str], int] = {}
        kinds = [k for k in ACTIVE_PERIODS if k in self.config.periods]
        settings = self.pulse.settings
        for team_id in directory.teams:
            office_id = directory.office_of.get(team_id)
            for member in directory.members[team_id]:
                user_id = member["user_id"]
                if partition_of(user_id.encode(), settings.partitions) not in owned:
                    continue
                tz = zone(member.get("timezone") or self.config.timezone)
                for kind in kinds:
                    buckets = [self.pulse.kpi_value(user_key(k, user_id))
                               for k in self.calendar.period(kind, now, tz).bucket_keys]
                    if any(buckets):
                        for scope, group_id in (("team", team_id), ("office", office_id),
                                                ("all", "all")):
                            if group_id:
                                key = (scope, group_id, kind)
                                counts[key] = counts.get(key, 0) + 1
                    if self.config.metrics.per_user:
                        shown = (pseudonym(settings.pseudonym_secret, user_id)
                                 if self.config.metrics.pseudonymous else user_id)
                        for kpi, value in self.kpis.read(buckets).items():
                            per_user.add_metric((shown, kpi, kind), value)
        for (scope, group_id, kind), count in counts.items():
            active.add_metric((scope, group_id, kind), count)
        yield active
        if self.config.metrics.per_user:
            yield per_user

    def _lag(self, topic: str, owned: set[int]) -> Metric:
        lag = GaugeMetricFamily("crm_pulse_consumer_lag", "crm.activities records not yet "
                                "processed, per owned partition.", labels=("partition",))
        consumer = self.pulse.app.consumer
        for tp in self.pulse.app.assignor.assigned_actives():
            if tp.topic != topic:
                continue
            highwater = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)  # faust has no public accessor
            if highwater is not None:
                lag.add_metric((str(tp.partition),), max(0, highwater - (committed or 0)))
        return lag


def _summed(targets: Iterable[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for target in targets:
        for kpi, value in target.items():
            total[kpi] = total.get(kpi, 0) + value
    return total

"""Build the Faust app: topics, tables, agents and web views for one :class:`Settings`.

There is no module-level app: tests and the CLI call :func:`create_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust

from app.metrics import PulseMetrics
from app.serving import ServingLayer
from app.settings import Settings
from app.tables import DiskTable, PartitionedGlobalTable, PartitionedTable, lazy_reader
from app.transport import new_transport


class RawSchema(faust.Schema):
    """Keys and values as the bytes the broker holds, like ``key_serializer="raw"`` and
    ``value_serializer="raw"`` give, without the trip through the serializer registry
    (codec lookup, ``want_bytes``, model autodetection) that Faust's conductor makes for
    every record: a sixth of a worker's time on single-event records. The decode function
    is the public extension point ``Schema.compile``; ``tests/app/test_transport.py``
    checks that it yields the events Faust's own raw decoding yields.
    """

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: Any, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None, default_propagate: bool = False) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class PulseApp(faust.App):
    """``faust.App`` using :mod:`app.transport` (correct changelog highwaters on tansu)."""

    def _new_transport(self) -> Any:
        return new_transport(self)


@dataclass
class Pulse:
    """Everything one worker process holds; handed to agents and web views."""

    settings: Settings
    app: faust.App
    activities: Any
    dlq: Any
    achievements: Any
    alerts: Any
    roster_topic: Any
    groups: Any
    records: Any
    kpi_table: PartitionedTable
    group_table: PartitionedTable
    ledger_table: PartitionedTable
    roster_table: Any
    metrics: PulseMetrics = field(init=False)
    serving: ServingLayer = field(init=False)
    kpi_value: Callable[[str], dict[str, Any] | None] = field(init=False)
    """One KPI table value, decoded (the table keeps JSON bytes: app/tables.py)."""


def _large_table(app: faust.App, settings: Settings, name: str) -> PartitionedTable:
    """The KPI or ledger table: values kept as JSON bytes (app/tables.py), in memory or on
    disk as ``settings.state_store`` says."""
    options = {"partitions": settings.partitions, "key_type": str, "value_type": bytes}
    if settings.state_store == "memory":
        return app.Table(name, **options)
    table = DiskTable(app, name=name, beacon=app.tables.beacon,
                      options={"cache_bytes": settings.state_cache_mb * 1024**2}, **options)
    return app.tables.add(table)


def create_app(settings: Settings) -> Pulse:
    """A configured Faust app with the CRM Pulse agents, tables and web views."""
    app = PulseApp(
        settings.app_id,
        broker=settings.kafka,
        store="memory://",
        datadir=str(settings.data_dir / settings.app_id),
        Table=PartitionedTable,
        GlobalTable=PartitionedGlobalTable,
        web_tables_enabled=False,  # /table/<name>/<key> would expose per-person data
        processing_guarantee="at_least_once",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        consumer_auto_offset_reset="earliest",
        web_bind=settings.web_host,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 6,
        broker_commit_interval=1.0,
        broker_max_poll_records=settings.batch_max,
        # The ingest takes its batches straight from this buffer (agents/pipeline.py), so one
        # batch's worth is enough; records, not events: arrays make it large in bytes.
        stream_buffer_maxsize=max(4096, settings.batch_max),
        consumer_max_fetch_size=4 * 1024**2,  # per partition and fetch (default 1 MiB)
        producer_linger_ms=2,
        # Changelog writes go out as whole batches (app/tables.py, create_batch): 256 KiB
        # holds about a thousand table values, well under Kafka's default 1 MB message limit.
        producer_max_batch_size=256 * 1024,
        table_cleanup_interval=3600,
    )
    topics = settings.topics
    raw = {"schema": RawSchema()}
    pulse = Pulse(
        settings=settings,
        app=app,
        activities=app.topic(topics.activities, partitions=settings.partitions, **raw),
        dlq=app.topic(topics.dlq, partitions=settings.partitions, **raw),
        achievements=app.topic(topics.achievements, partitions=settings.partitions, **raw),
        alerts=app.topic(topics.alerts, partitions=settings.partitions, **raw),
        roster_topic=app.topic(topics.roster, partitions=settings.partitions, **raw),
        groups=app.topic(topics.groups, partitions=settings.partitions, **raw),
        records=app.topic(topics.records, partitions=settings.partitions, **raw),
        kpi_table=_large_table(app, settings, "kpi"),
        group_table=app.Table("groups", partitions=settings.partitions, key_type=str),
        ledger_table=_large_table(app, settings, "ledger"),
        roster_table=app.GlobalTable(
            "roster",
            partitions=settings.partitions,
            key_type=str,
            synchronize_all_active_partitions=True,
        ),
    )
    from agents.pipeline import register_agents
    from app.web import register_views

    pulse.metrics = PulseMetrics(pulse)
    pulse.serving = ServingLayer(settings, lazy_reader(pulse.roster_table))
    pulse.kpi_value = lazy_reader(pulse.kpi_table)
    register_agents(pulse)
    register_views(pulse)
    return pulse

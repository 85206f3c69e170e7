"""The transport and table workarounds (log ends on tansu, fetch wait, batched writes)
and the Faust and aiokafka internals they rely on."""

from __future__ import annotations

import asyncio
import inspect
import tracemalloc

import aiokafka
import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.stores.memory import Store as MemoryStore
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app.faust_app import create_app
from app.kafka import bootstrap_servers, ensure_topics
from app.settings import Settings
from app.tables import (
    MemoryValues,
    compact,
    decoded_items,
    delete_values,
    holds_bytes,
    reader,
    stored_values,
    write_values,
)
from app.transport import FETCH_MAX_WAIT_MS, fetched_highwaters, seek_to_committed_or_start


def test_pinned_faust_still_has_the_overridden_hooks() -> None:
    assert faust.__version__ == "0.15.3", "re-check app/transport.py and app/tables.py"
    assert aiokafka.__version__ == "0.14.0", "re-check app/transport.py and app/tables.py"
    hook = faust_aiokafka.AIOKafkaConsumerThread._highwaters
    assert list(inspect.signature(hook).parameters) == ["self", "partitions"]
    seek = faust_aiokafka.AIOKafkaConsumerThread.seek_to_committed
    assert list(inspect.signature(seek).parameters) == ["self"]
    assert "if offset and offset > 0" in inspect.getsource(AIOKafkaConsumer.seek_to_committed)
    create = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    assert list(inspect.signature(create).parameters) == ["self", "transport"]
    # The fetch wait is set on the constructed consumer; start() must still pass it on.
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(
        AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=1500" in inspect.getsource(create)
    assert 0 < FETCH_MAX_WAIT_MS < 1500


def test_changelog_records_are_the_ones_faust_writes() -> None:
    """app/tables.py writes orjson bytes; Faust's own path and its recovery agree (for a
    table of dicts; the KPI and ledger tables keep bytes, see the next test)."""
    pulse = create_app(Settings(kafka="kafka://127.0.0.1:1"))
    table = pulse.group_table
    topic = table.changelog_topic
    key = "u|d:2026-11-23|bob"
    value = {"p": 2, "o": 5, "n": {"calls": 1, "won": 2.5}, "s": {"features_used": ["x"]}}
    assert topic.prepare_key(key, None, None)[0] == orjson.dumps(key)
    assert topic.prepare_value(value, None, None)[0] == orjson.dumps(value)
    registry = pulse.app.serializers
    assert registry.loads_key(topic.key_type, orjson.dumps(key),
                              serializer=topic.key_serializer) == key
    assert registry.loads_value(topic.value_type, orjson.dumps(value),
                                serializer=topic.value_serializer) == value
    # The memory store is a dict the reader and writer use directly.
    assert isinstance(table.data, MemoryStore)
    values = stored_values(table)
    assert isinstance(values, MemoryValues) and values.data is table.data.data
    values.set_many({key: value})
    assert reader(table)(key) is value and table.get(key) is value
    assert reader(table)("missing") is None
    assert callable(pulse.app.producer._ensure_producer)
    assert callable(AIOKafkaProducer.create_batch) and callable(AIOKafkaProducer.send_batch)


def test_large_tables_keep_their_values_as_the_json_their_changelog_carries() -> None:
    """``value_type=bytes`` tables (KPI, ledger): the store holds the changelog's JSON bytes
    (as Faust's recovery restores them), readers get dicts."""
    pulse = create_app(Settings(kafka="kafka://127.0.0.1:1", state_store="memory"))
    table = pulse.ledger_table
    assert holds_bytes(table) and holds_bytes(pulse.kpi_table)
    assert not holds_bytes(pulse.group_table)
    topic = table.changelog_topic
    value = {"p": 1, "o": 3, "owners": ["ann"], "t": 1.5}
    raw = orjson.dumps(value)
    assert pulse.app.serializers.loads_value(topic.value_type, raw,
                                             serializer=topic.value_serializer) == raw
    values = stored_values(table)
    assert isinstance(values, MemoryValues)
    values.set_many({"l|opportunity|o-1": raw})
    assert reader(table)("l|opportunity|o-1") == value and reader(table)("missing") is None
    values.set_many({"l|opportunity|o-2": orjson.dumps({"p": 0})})
    assert dict(decoded_items(table, lambda key: key.endswith("1"))) == {
        "l|opportunity|o-1": value}


def test_stored_ledger_values_take_their_own_size_not_orjsons_buffer() -> None:
    raw = orjson.dumps({"p": 1, "o": 3, "owners": ["ann"], "lines": {"e-1": {"c": 1}}})
    tracemalloc.start()
    try:
        kept = [compact(orjson.dumps(orjson.loads(raw))) for _ in range(1000)]
        per_value = tracemalloc.get_traced_memory()[0] / len(kept)
    finally:
        tracemalloc.stop()
    assert kept[0] == raw and per_value < 4 * len(raw)


class _Producer:
    """The one method of Faust's aiokafka ``Producer`` that app/tables.py uses."""

    def __init__(self, client: AIOKafkaProducer) -> None:
        self.client = client

    def _ensure_producer(self) -> AIOKafkaProducer:
        return self.client


@pytest.mark.integration
def test_batched_changelog_writes_land_on_their_partitions(make_settings) -> None:
    settings = make_settings(partitions=2)
    ensure_topics(settings)
    pulse = create_app(settings)
    table = pulse.group_table
    name = table.changelog_topic.get_topic_name()
    bootstrap = bootstrap_servers(settings.kafka)
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 2, 1)])
    finally:
        admin.close()
    big = "x" * 2000  # several producer batches per partition
    writes = {f"u|d:2026-11-23|user{i}": {"p": i % 2, "o": i, "n": {"calls": i}, "s": {},
                                          "pad": big} for i in range(400)}

    async def scenario() -> dict[int, list[tuple[object, object]]]:
        client = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=64 * 1024)
        await client.start()
        try:
            await asyncio.gather(*await write_values(table, _Producer(client), writes))
            await asyncio.gather(*await delete_values(
                table, _Producer(client), [("u|d:2026-11-23|user3", 1)]))
        finally:
            await client.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        got: dict[int, list[tuple[object, object]]] = {0: [], 1: []}
        try:
            consumer.assign([TopicPartition(name, 0), TopicPartition(name, 1)])
            while sum(map(len, got.values())) < len(writes) + 1:
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    got[tp.partition] += [
                        (orjson.loads(r.key), None if r.value is None else orjson.loads(r.value))
                        for r in records]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    for partition, records in got.items():
        written = [(k, v) for k, v in writes.items() if v["p"] == partition]
        tombstones = [("u|d:2026-11-23|user3", None)] if partition == 1 else []
        assert records == written + tombstones  # in write order, each on its partition
    values = stored_values(table)
    assert values is not None and values.get("u|d:2026-11-23|user3") is None
    assert values.get("u|d:2026-11-23|user4") is writes["u|d:2026-11-23|user4"]


@pytest.mark.integration
def test_highwater_counts_every_record_of_a_batch(make_settings) -> None:
    settings = make_settings(partitions=1)
    ensure_topics(settings)
    bootstrap = bootstrap_servers(settings.kafka)
    topic = settings.topics.activities

    async def scenario() -> dict[TP, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
        await producer.start()
        try:
            sent = [await producer.send(topic, b"x", key=b"k") for _ in range(10)]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        # ListOffsets on tansu may say 1 here (one batch), or even 0: trust neither.
        return await fetched_highwaters(bootstrap, {TP(topic, 0): 0})

    assert asyncio.run(scenario()) == {TP(topic, 0): 10}


def test_raw_schema_decodes_like_fausts_raw_serializers() -> None:
    from faust.types import Message

    from app.faust_app import RawSchema

    pulse = create_app(Settings(kafka="kafka://127.0.0.1:1"))
    app = pulse.app
    assert isinstance(pulse.activities.schema, RawSchema)
    faust_raw = faust.Schema(key_serializer="raw", value_serializer="raw")
    ours, theirs = RawSchema().compile(app), faust_raw.compile(app)
    for key, value in ((b"alice", b'{"a": 1}'), (None, b"[]"), (b"bob", None), (b"", b"")):
        message = Message("t", 0, 7, 1.0, 0, [("h", b"1")], key, value, None)

        async def both(message: Message = message) -> tuple[object, object]:
            return await ours(message), await theirs(message)

        mine, reference = asyncio.run(both())
        assert (mine.key, mine.value, mine.headers, mine.message) == (
            reference.key, reference.value, reference.headers, reference.message)


@pytest.mark.integration
def test_sent_records_land_where_the_default_partitioner_puts_their_keys(make_settings) -> None:
    from agents.ingest import partition_of
    from app.tables import send_records

    settings = make_settings(partitions=4)
    ensure_topics(settings)
    bootstrap = bootstrap_servers(settings.kafka)
    topic = settings.topics.achievements
    records = [(f"user-{i}".encode(), f"v{i}".encode(), 1795435200.5 if i % 2 else None)
               for i in range(40)]

    async def scenario() -> list[tuple[int, bytes, bytes, int]]:
        client = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await client.start()
        try:
            await asyncio.gather(*await send_records(_Producer(client), topic, records))
        finally:
            await client.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        got: list[tuple[int, bytes, bytes, int]] = []
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(4)])
            while len(got) < len(records):
                for tp, batch in (await consumer.getmany(timeout_ms=1000)).items():
                    got += [(tp.partition, r.key, r.value, r.timestamp) for r in batch]
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert sorted((k, v) for _, k, v, _ in got) == sorted((k, v) for k, v, _ in records)
    for partition, key, _, timestamp in got:
        assert partition == partition_of(key, 4)
        if int(key.split(b"-")[1]) % 2:
            assert timestamp == 1795435200500


@pytest.mark.integration
def test_a_partition_the_group_never_committed_is_read_from_its_first_record(
        make_settings) -> None:
    """A worker killed before its first commit on a partition must not restart at the
    log end (tansu answers ListOffsets(earliest) with it): every record is read."""
    settings = make_settings(partitions=1)
    ensure_topics(settings)
    bootstrap = bootstrap_servers(settings.kafka)
    topic = settings.topics.activities
    tp = TopicPartition(topic, 0)

    async def scenario() -> tuple[int, int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(3):
                await (await producer.send(topic, f"r{i}".encode(), key=b"k"))
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=settings.app_id,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=100)
        await consumer.start()
        try:
            consumer.assign([tp])
            await seek_to_committed_or_start(consumer)
            position = await consumer.position(tp)
            read = 0
            while read < 3:
                read += sum(map(len, (await consumer.getmany(tp, timeout_ms=1000)).values()))
        finally:
            await consumer.stop()
        return position, read

    position, read = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert (position, read) == (0, 3)


def test_faust_internals_the_drain_loop_uses_are_still_there() -> None:
    """app/drain.py replaces Faust's drain loop and reads these; a new Faust must be re-read."""
    from faust.streams import Stream
    from faust.transport.conductor import Conductor
    from faust.transport.consumer import Consumer

    drain = inspect.getsource(Consumer._drain_messages)
    for used in ("self._read_offset", "self._commit_every", "self._n_acked", "self._add_gap",
                 "self.suspend_flow.wait()", "getmany(timeout=1.0)", "callback(message)"):
        assert used in drain, used
    assert "_tp_index" in inspect.getsource(Conductor._update_tp_index)
    # The stream acks the stale events it skips: the reason for LogEndFetchWaitConsumer.ack.
    stream_loop = inspect.getsource(Stream._py_aiter)
    assert "message.generation_id != self.app.consumer_generation_id" in stream_loop
    assert "do_ack or value is skipped_value" in stream_loop


def test_a_record_of_an_earlier_generation_is_never_acked() -> None:
    """A stale copy acked at an offset past the committed one would let the next commit pass
    the re-fetched records before it: lost if the worker then dies."""
    from faust.types.tuples import ConsumerMessage

    pulse = create_app(Settings(kafka="kafka://127.0.0.1:1"))
    app, topic = pulse.app, pulse.activities.get_topic_name()
    consumer = app.consumer
    app.topics._acking_topics.add(topic)  # what subscribing the ingest agent does
    tp = TP(topic, 0)

    def fetched(offset: int, generation: int) -> ConsumerMessage:
        message = ConsumerMessage(topic, 0, offset, 0.0, 0, [], b"k", b"v", None, 1, 1, tp,
                                  generation_id=generation)
        consumer.track_message(message)
        return message

    app.consumer_generation_id = 3
    stale, fresh = fetched(150, 2), fetched(100, 3)
    assert consumer.ack(stale) is False
    assert stale not in consumer.unacked  # a rebalance does not wait for it
    assert consumer.ack(fresh) is True
    assert consumer._acked[tp] == [100]
    assert consumer._new_offset(tp) == 101  # not 151


def test_a_kept_queue_survives_the_flow_resuming_and_a_managed_one_does_not() -> None:
    """Why agents/pipeline.py keeps its queues (app.drain.keep_through_resume): Faust's
    flow control empties every managed queue on resume, records already read among them."""
    from app.drain import keep_through_resume

    app = create_app(Settings(kafka="kafka://127.0.0.1:1")).app
    kept = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    managed = app.FlowControlQueue(maxsize=10, clear_on_resume=True)
    keep_through_resume(app, kept)
    for queue in (kept, managed):
        queue.put_nowait("record 778")
    app.flow_control.suspend()
    app.flow_control.resume()
    assert kept.qsize() == 1
    assert managed.qsize() == 0

"""The log-end workaround for tansu's ListOffsets, and the Faust internals it relies on."""

from __future__ import annotations

import asyncio
import inspect

import faust
import pytest
from aiokafka import AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app.kafka import bootstrap_servers, ensure_topics
from app.transport import fetched_highwaters


def test_pinned_faust_still_has_the_overridden_hooks() -> None:
    assert faust.__version__ == "0.15.3", "re-check app/transport.py and app/tables.py"
    hook = faust_aiokafka.AIOKafkaConsumerThread._highwaters
    assert list(inspect.signature(hook).parameters) == ["self", "partitions"]


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

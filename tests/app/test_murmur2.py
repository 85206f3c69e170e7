"""app/murmur2.py computes what aiokafka's (the Java client's) murmur2 does."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given, settings
from hypothesis import strategies as st

from app.murmur2 import murmur2


@settings(max_examples=2_000, deadline=None)
@given(st.binary(max_size=64))
def test_equals_the_reference_on_arbitrary_bytes(data: bytes) -> None:
    assert murmur2(data) == reference(data)


def test_values_of_the_java_client() -> None:
    """Kafka's UtilsTest.testMurmur2 (signed there, unsigned here)."""
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data

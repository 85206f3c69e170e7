"""Kafka's default partitioner: its hash (murmur2, four bytes at a time) and the partition.

The same function as ``aiokafka.partitioner.murmur2`` (the Java client's
``Utils.murmur2``), which reads the key byte by byte with a mask per step: the ingest and
the ledger hash a key per forwarded event and ledger message, and that loop was ~4 % of a
busy worker's time. ``tests/app/test_murmur2.py`` checks both agree on arbitrary bytes.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it (an unsigned 32-bit value)."""
    length = len(data)
    h = _SEED ^ length
    blocks = length >> 2
    if blocks:
        for k in struct.unpack_from(f"<{blocks}I", data):
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail, base = length & 3, length & ~3
    if tail:
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions

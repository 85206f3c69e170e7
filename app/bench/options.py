"""What ``crm-pulse bench`` measures (its flags) and where its progress lines go."""

from __future__ import annotations

import sys
from dataclasses import dataclass

PROGRESS_EVERY_S = 3.0


@dataclass(frozen=True)
class BenchOptions:
    """What to measure: the flags of ``crm-pulse bench``."""

    kafka: str | None = None
    events: int = 200_000
    users: int = 1_000
    teams: int = 50
    partitions: int = 4
    workers: int = 1  # worker processes in the one consumer group (<= partitions)
    rate: float = 2_000.0
    latency_seconds: float = 20.0
    array_size: int = 50
    seed: int = 8
    json: bool = False


def say(line: str) -> None:
    """A progress line on stderr (stdout carries only the result)."""
    print(line, file=sys.stderr, flush=True)

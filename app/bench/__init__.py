"""``crm-pulse bench``: throughput, latency, memory and exactness of the pipeline as it is.

One run on one broker measures (``docs/performance.md`` gives the exact intervals):

- ``ceiling_events_per_s``: raw aiokafka consume + orjson decode + per-user dict count over
  the single-event topic, the physical limit of this machine and broker right now;
- ``events_per_s`` / ``batched_events_per_s``: ``--workers`` real ``crm-pulse worker``
  processes in one consumer group over the same events written as single-event records and
  as JSON-array records. The records are produced once every worker owns partitions; the
  rate comes from the group's committed offsets (a commit follows the batch's acknowledged
  changelog);
- ``counts_correct``: each worker's KPI changelog against an independent count;
- ``latency_p50_ms`` / ``latency_p99_ms``: produce -> KPI visible in the HTTP API at a steady
  rate, sampled with probe users;
- ``rss_mb_peak`` (the largest VmHWM of all workers) and ``state_bytes_per_1000_users``.

Every process it starts is stopped by PID, also on Ctrl-C or SIGTERM.

Modules: :mod:`.options` (the flags), :mod:`.events` (events, records and the independent
count, pure), :mod:`.broker` (producing, committed offsets, changelog reading),
:mod:`.ceiling`, :mod:`.group` (the workers of one consumer group: started, complete,
rebalances), :mod:`.worker` (the group's rate and state), :mod:`.usage` (CPU and memory from
``/proc``), :mod:`.latency`, :mod:`.children` (process lifecycle and signals), :mod:`.run`
(the order of it all) and :mod:`.report` (table or JSON).
"""

from app.bench.events import (
    Expected,
    RecordSet,
    array_records,
    check_state,
    expected_state,
    generate_events,
    office,
    partition_of,
    single_records,
)
from app.bench.latency import percentile
from app.bench.options import BenchOptions
from app.bench.report import JSON_KEYS
from app.bench.run import run_bench

__all__ = [
    "JSON_KEYS",
    "BenchOptions",
    "Expected",
    "RecordSet",
    "array_records",
    "check_state",
    "expected_state",
    "generate_events",
    "office",
    "partition_of",
    "percentile",
    "run_bench",
    "single_records",
]

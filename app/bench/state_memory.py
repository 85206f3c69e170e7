"""``python -m app.bench.state_memory --users 1000 --days 30``: the memory of a month of state.

The worker's tables live in memory stores; the KPI and ledger tables keep the JSON bytes
of the values that the pipeline's pure folds produce (:func:`app.tables.holds_bytes`). This
folds ``--days`` days of simulator events for ``--users`` people, day by day and oldest
first, through the real :class:`Ingestor` (KPI table) and :class:`Ledger` (ledger table)
into two such dicts, lets the retention rules expire what the cleanup timer would at the
end of each day, and prints what the tables then hold: keys by kind, changelog bytes (the
JSON the changelog carries) and what the dicts add to this process's resident memory
(``VmRSS``). State grows linearly with the number of people, so the figures are also
scaled to ``--report-users``. A worker's resident memory is that plus its base (the bench's
``rss_mb_peak`` less the state of its run).

``--store disk`` keeps both tables in RocksDB as ``state_store: disk`` does
(:mod:`app.disk_store`, in a temporary directory): the resident memory is then the block
caches, memtables and the batch at hand, not the state, and is not scaled.

Not the worker itself: no broker, no Faust, no Redis; events arrive on time and exactly
once (duplicates do not add state); ledger corrections are not fed back. Not run in CI.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from agents.ingest import Ingestor, Record, UserInfo, partition_of
from agents.ledger import Ledger, pack
from agents.retention import expired_keys
from app.bench.events import generate_events, office
from app.config import load_config
from app.disk_store import DiskValues, open_db
from app.settings import DEFAULT_CONFIG
from app.simulator import hourly_rate
from app.tables import MemoryValues, compact

BATCH = 5_000
SLICE = 20_000
PARTITIONS = 4


def partition_in_bench(key: bytes) -> int:
    return partition_of(key, PARTITIONS)


def _status_mb(field: str = "VmRSS") -> float:
    """A memory figure of this process (``VmRSS`` now, ``VmHWM`` its peak), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _kind(key: str) -> str:
    scope, label = key.split("|", 2)[:2]
    if scope in ("u", "t"):
        return f"{'user' if scope == 'u' else 'team'} {label.split(':', 1)[0]}"
    return {"s": "dedup memory", "l": "ledger records", "e": "statement lines",
            "f": "first-use flags"}.get(scope, scope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench.state_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--teams", type=int, default=50)
    parser.add_argument("--report-users", type=int, default=10_000,
                        help="scale the memory figures to this many people")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--hours", type=float, default=8.0,
                        help="working hours a day (events per person: the simulator's hourly "
                             "rate of the role times this)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="the KPI model (e.g. one with ledger.enabled: false)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", choices=("memory", "disk"), default="memory",
                        help="where the tables keep their values (as state_store)")
    parser.add_argument("--cache-mb", type=int, default=32,
                        help="--store disk: block cache per table (as state_cache_mb)")
    options = parser.parse_args(argv)

    config = load_config(options.config)
    people = office(options.users, options.teams, "UTC")
    infos = {p.user_id: UserInfo(p.team_id, p.timezone, p.role) for p in people}
    ingestor, ledger = Ingestor(config, 65_536, PARTITIONS, infos.get), Ledger()
    per_day = round(sum(hourly_rate(p) for p in people) * options.hours)
    rng = random.Random(options.seed)
    workdir = tempfile.TemporaryDirectory(prefix="crm-pulse-state-")
    # as the tables keep them: JSON bytes (app/tables.py)
    kpi, records = ((MemoryValues({}), MemoryValues({})) if options.store == "memory" else
                    (DiskValues(open_db(Path(workdir.name, name), options.cache_mb * 1024**2))
                     for name in ("kpi", "ledger")))

    def reading(table: MemoryValues | DiskValues) -> Callable[[str], dict | None]:
        def read(key: str) -> dict | None:
            raw = table.get(key)
            return None if raw is None else orjson.loads(raw)
        return read

    def store(table: MemoryValues | DiskValues, writes: dict[str, dict]) -> None:
        table.set_many({key: compact(orjson.dumps(value)) for key, value in writes.items()})

    offsets: Counter[int] = Counter()
    ledger_offsets: Counter[int] = Counter()
    gc.collect()
    base_mb = _status_mb()
    started = time.monotonic()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    print(f"{options.users:,} users, {options.days} days, {per_day:,} events a day "
          f"({per_day * options.days:,} in all)", file=sys.stderr)
    for age in range(options.days - 1, -1, -1):
        day_end = today - timedelta(days=age) + timedelta(hours=23, minutes=59)
        # A day's events in slices (each spread over the day): a whole day of 10,000
        # people is half a million dicts, which would dwarf a disk store's memory.
        for first in range(0, per_day, SLICE):
            events = generate_events(rng, min(SLICE, per_day - first), people, day_end,
                                     f"mem{age}-{first}")
            for start in range(0, len(events), BATCH):
                batch = []
                for event in events[start:start + BATCH]:
                    key = event["user_id"].encode()
                    partition = partition_of(key, PARTITIONS)
                    arrival = datetime.fromisoformat(event["occurred_at"]).timestamp() + 1.0
                    batch.append(Record("crm.activities", partition, offsets[partition],
                                        arrival, key, orjson.dumps(event)))
                    offsets[partition] += 1
                result = ingestor.fold(batch, reading(kpi), private_reads=True)
                store(kpi, result.writes)
                messages = []
                for record_key, value in pack(result.records, partition_in_bench):
                    partition = partition_of(record_key, PARTITIONS)
                    messages.append((partition, ledger_offsets[partition], value))
                    ledger_offsets[partition] += 1
                store(records, ledger.fold(messages, reading(records)).writes)
        now = day_end.timestamp()
        owned = set(range(PARTITIONS))
        for table in (kpi, records):
            table.delete_many([key for key, _ in expired_keys(table.items(), config, now,
                                                              owned, orjson.loads)])
        print(f"  day -{age}: {len(kpi):,} KPI keys, {len(records):,} ledger records, "
              f"RSS +{_status_mb() - base_mb:,.0f} MB, {time.monotonic() - started:,.0f}s",
              file=sys.stderr)
    gc.collect()
    state_mb = _status_mb() - base_mb
    keys: Counter[str] = Counter()
    json_bytes: Counter[str] = Counter()
    for table in (kpi, records):
        for key, value in table.items():
            kind = _kind(key)
            keys[kind] += 1
            json_bytes[kind] += len(key) + len(value)
    print(f"{'kind':<22}{'keys':>12}{'changelog MB':>14}")
    for kind in sorted(keys):
        print(f"{kind:<22}{keys[kind]:>12,}{json_bytes[kind] / 1e6:>14,.1f}")
    print(f"{'all':<22}{sum(keys.values()):>12,}{sum(json_bytes.values()) / 1e6:>14,.1f}")
    scale = options.report_users / options.users
    if options.store == "disk":
        print(f"resident memory the tables add: {state_mb:,.0f} MB (on disk: not scaled); "
              f"peak RSS of this process {_status_mb('VmHWM'):,.0f} MB")
    else:
        print(f"resident memory the tables add: {state_mb:,.0f} MB; for "
              f"{options.report_users:,} users (x{scale:g}): {state_mb * scale:,.0f} MB")
    workdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

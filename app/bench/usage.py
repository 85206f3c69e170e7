"""CPU and memory of the processes a bench run measures, and of the whole machine (``/proc``)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process in MiB; None where unknown."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (0 where unknown)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _machine_jiffies() -> tuple[int, int]:
    """``(busy, total)`` jiffies of all cores since boot (busy: not idle, not iowait)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        total = sum(values[:8])  # user nice system idle iowait irq softirq steal
        return total - values[3] - values[4], total
    return 0, 0


@dataclass(frozen=True)
class CpuMark:
    """CPU used so far by named processes and by the whole machine, at one moment."""

    at: float  # time.perf_counter()
    processes: dict[str, float]  # name -> CPU seconds
    machine: tuple[int, int]  # (busy, total) jiffies


def cpu_mark(pids: Mapping[str, int]) -> CpuMark:
    """Mark the CPU used so far by ``pids`` (name -> pid) and by the machine."""
    return CpuMark(time.perf_counter(), {name: cpu_seconds(pid) for name, pid in pids.items()},
                   _machine_jiffies())


def cpu_percent(start: CpuMark, end: CpuMark) -> dict[str, float]:
    """Each process's CPU between two marks in % of one core, and ``"machine"``: the busy
    share of all cores in the same unit (so at most ``100 * cores``)."""
    wall = max(1e-9, end.at - start.at)
    shares = {name: 100 * (end.processes[name] - used) / wall
              for name, used in start.processes.items() if name in end.processes}
    busy, total = (e - s for e, s in zip(end.machine, start.machine, strict=True))
    if total > 0:
        shares["machine"] = 100 * (os.cpu_count() or 1) * busy / total
    return shares

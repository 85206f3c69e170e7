"""N ``crm-pulse worker`` processes in one consumer group over one topic set.

The clock of a run must not include a rebalance, so before anything is produced every
worker has to be ready (``GET /readyz``: tables recovered, not rebalancing) and own
``crm.activities`` partitions by Faust's own router (``GET /router/topics``: the group's
assignment per worker URL, as the group leader handed it out). A later rebalance shows in
the workers' logs as aiokafka's ``Joined group '<group>' (generation <n>)`` line (the bench
runs its workers at log level info); :meth:`WorkerGroup.rebalances` counts the generations
joined after a mark.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.bench.children import Children
from app.bench.options import PROGRESS_EVERY_S, say
from app.embedded import ManagedProcess, describe_exit, free_port, settings_with, start_worker
from app.settings import Settings

JOINED = re.compile(rb"Joined group '[^']*' \(generation (-?\d+)\)")
POLL_S = 0.25


def _get(url: str) -> tuple[int, Any]:
    """``(status, JSON body)`` of a GET; status 0 while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http URL)
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):  # not listening yet, or no complete JSON answer
        return 0, None


@dataclass
class WorkerGroup:
    """The workers of one run (same app id and topics; own web port and data dir each)."""

    settings: list[Settings]
    processes: list[ManagedProcess]
    started: float  # time.perf_counter() before the first worker started
    owners: dict[int, int] = field(default_factory=dict)  # partition -> index of its worker
    ready_s: float = 0.0  # started -> every worker ready and owning partitions
    marks: list[int] = field(default_factory=list)  # log sizes at the mark

    def check_alive(self) -> None:
        """Raise with the end of its log when a worker has exited."""
        for process in self.processes:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited ({describe_exit(process.returncode)})"
                                   f"; last lines of {process.log_path}:\n{process.tail()}")

    def partitions(self) -> dict[str, list[int]]:
        """Each worker's name -> the ``crm.activities`` partitions it owns."""
        return {process.name: sorted(p for p, owner in self.owners.items() if owner == index)
                for index, process in enumerate(self.processes)}

    def owner_url(self, partition: int) -> str:
        return self.settings[self.owners[partition]].web_url

    def mark(self) -> None:
        """Remember where the logs end now (see :meth:`rebalances`)."""
        self.marks = [process.log_path.stat().st_size for process in self.processes]

    def rebalances(self) -> int:
        """Group generations any worker joined since :meth:`mark`: 0 without a rebalance."""
        generations: set[bytes] = set()
        for process, mark in zip(self.processes, self.marks, strict=True):
            with process.log_path.open("rb") as log:
                log.seek(mark)
                generations.update(JOINED.findall(log.read()))
        return len(generations)

    def _assignment(self, topic: str, partitions: int) -> dict[int, int] | None:
        """Partition -> worker index once every worker is ready and owns partitions."""
        views = []
        for settings in self.settings:
            if _get(f"{settings.web_url}/readyz")[0] != 200:
                return None
            views.append(_get(f"{settings.web_url}/router/topics")[1])
        if not views[0] or any(view != views[0] for view in views):
            return None  # a worker has not got the latest assignment yet
        index_of = {settings.web_port: i for i, settings in enumerate(self.settings)}
        owners: dict[int, int] = {}
        for url, assigned in views[0].items():
            if urlsplit(url).port not in index_of:
                return None
            owners.update(dict.fromkeys(assigned.get(topic, []), index_of[urlsplit(url).port]))
        complete = set(owners) == set(range(partitions))
        return owners if complete and len(set(owners.values())) == len(self.settings) else None

    def wait_assigned(self, timeout: float) -> None:
        """Wait until every worker is ready and owns partitions (``timeout`` from the start)."""
        settings = self.settings[0]
        last_report = time.perf_counter()
        while True:
            self.check_alive()
            owners = self._assignment(settings.topics.activities, settings.partitions)
            now = time.perf_counter()
            if owners is not None:
                self.owners, self.ready_s = owners, now - self.started
                return
            if now - self.started > timeout:
                raise TimeoutError(f"the {len(self.processes)} workers did not all own "
                                   f"partitions within {timeout:g}s; logs: "
                                   f"{', '.join(str(p.log_path) for p in self.processes)}")
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                say(f"  waiting for {len(self.processes)} worker(s) to join and own "
                    f"partitions ... {now - self.started:.0f}s")
            time.sleep(POLL_S)


def start_group(settings: Settings, workers: int, workdir: Path,
                children: Children) -> WorkerGroup:
    """Start ``workers`` worker processes in the consumer group of ``settings``."""
    ports: set[int] = set()
    while len(ports) < workers:
        ports.add(free_port())
    members = [settings_with(settings, web_port=port, data_dir=workdir / f"worker-{i}",
                             log_level="info")
               for i, port in enumerate(sorted(ports))]
    started = time.perf_counter()
    processes = [children.start(lambda s=member, i=i: start_worker(s, workdir / f"worker-{i}.log"))
                 for i, member in enumerate(members)]
    return WorkerGroup(members, processes, started)

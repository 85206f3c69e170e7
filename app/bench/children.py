"""The processes one bench run starts, and the signals that stop them."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from app.bench.options import say
from app.embedded import ManagedProcess

logger = logging.getLogger(__name__)


class Children:
    """Processes this run started (stopped newest first, by PID) and the signals that stop it.

    SIGTERM acts like Ctrl-C; both are held back while a child is being started, so that
    every child is recorded, and ignored while the children are being stopped.
    """

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._held: int | None = None

    def __enter__(self) -> Children:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._held = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def _held_signals(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held is not None:
            raise KeyboardInterrupt(signal.Signals(self._held).name)

    def start(self, make: Callable[[], ManagedProcess]) -> ManagedProcess:
        with self._held_signals():
            process = make()
            self.processes.append(process)
        return process

    def stop(self, process: ManagedProcess) -> None:
        process.stop(timeout=15)
        self.processes.remove(process)

    def stop_all(self) -> None:
        if self.processes:
            say("stopping " + ", ".join(f"{p.name} (pid {p.pid})"
                                        for p in reversed(self.processes)))
        for process in reversed(self.processes):
            try:
                process.stop(timeout=15)
            except Exception:
                logger.exception("could not stop %s (pid %s)", process.name, process.pid)
        self.processes.clear()

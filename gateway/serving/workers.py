"""Several gateway processes for one replica (`server.workers`): the rules that keep the state
each process holds correct across them, and the supervisor that starts, signals and reaps them.

Each worker is a whole gateway (`gateway.serving.server.serve`) in a fresh interpreter, started
as `turnout serve` with its listeners handed over as inherited file descriptors. The
supervisor (the `turnout serve` the operator started) binds every port first, so a taken port
fails the start with the same one-paragraph message as with one worker, then binds one socket
per worker and port with SO_REUSEPORT: the kernel hashes each new connection to one worker's
socket, which spreads connections evenly; one socket shared by every worker would let whichever
worker wakes first accept a whole burst.

What each process held for itself, and what it is with several:

- rollout state, rate limits, canary evidence, shadow evidence, adapter placement: through Redis,
  as between replicas, so more than one worker needs `state.redis_url` (`check_workers`);
- budgets of this replica (`worker_share`): `monitoring.signals_per_second`,
  `admission.max_concurrent` and `max_queued`, `breaker.retry_min_per_s`,
  `shadow.max_in_flight` and `capture.queue_capacity` are divided between the workers (rounded
  down), so the replica as a whole keeps the configured figures;
- circuit breakers, health probes, the retry budget's ratio, drift windows: per worker, each
  judging the backends and the inputs by its own share of the traffic;
- capture: every worker writes the same SQLite file (WAL mode; SQLite's lock serialises the
  writers' transactions, each waiting up to 30 s for it);
- metrics: prometheus_client's multiprocess mode, every worker's values in files under one
  folder that `/metrics` (on any worker) reads and sums (`metrics_registry`).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, multiprocess

from gateway.config import TurnoutConfig
from gateway.errors import ConfigError
from gateway.serving.startup import Listeners, Say, announce_when_ready

log = logging.getLogger("turnout.workers")

# prometheus_client reads it when it is imported: the supervisor sets it for its workers.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_DIR_PREFIX = "turnout-metrics-"
_PR_SET_PDEATHSIG = 1


def check_workers(config: TurnoutConfig) -> None:
    """More than one worker needs the state they share in Redis; ConfigError naming the keys."""
    workers = config.server.workers
    if workers > 1 and not config.state.redis_url:
        raise ConfigError(
            f"server.workers is {workers}, and state.redis_url is not set: the workers share "
            "rollout state, rate limits and canary evidence through Redis, as replicas do. Set "
            "state.redis_url (or TURNOUT_REDIS_URL), or serve with one worker."
        )


def worker_share(config: TurnoutConfig) -> TurnoutConfig:
    """The config one of `server.workers` workers runs with: the replica's local budgets
    divided between the workers (rounded down, at least 1 where 0 means something else)."""
    n = config.server.workers
    if n == 1:
        return config

    def share(value: int) -> int:
        return max(1, value // n)

    return config.model_copy(
        update={
            "monitoring": config.monitoring.model_copy(
                update={"signals_per_second": share(config.monitoring.signals_per_second)}
            ),
            "admission": config.admission.model_copy(
                update={
                    "max_concurrent": share(config.admission.max_concurrent),
                    "max_queued": config.admission.max_queued // n,
                }
            ),
            "breaker": config.breaker.model_copy(
                update={"retry_min_per_s": config.breaker.retry_min_per_s / n}
            ),
            "shadow": config.shadow.model_copy(
                update={"max_in_flight": share(config.shadow.max_in_flight)}
            ),
            "capture": config.capture.model_copy(
                update={"queue_capacity": share(config.capture.queue_capacity)}
            ),
        }
    )


def metrics_registry(folder: Path) -> CollectorRegistry:
    """A registry that reads every worker's metric files under `folder`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
    return registry


# --- the worker's side ----------------------------------------------------------------------


def inherited_listeners(descriptors: str) -> Listeners:
    """The listeners a worker was handed: `gateway,admin,metrics` descriptors, `-` for none."""
    socks = [None if part == "-" else _socket(int(part)) for part in descriptors.split(",")]
    gateway, admin, metrics = socks
    if gateway is None:
        raise ConfigError("--worker-fds: the gateway's socket is missing")
    return Listeners(gateway, admin, metrics)


def _socket(descriptor: int) -> socket.socket:
    return socket.socket(fileno=descriptor)


def _descriptors(listeners: Listeners) -> tuple[str, list[int]]:
    socks = (listeners.gateway, listeners.admin, listeners.metrics)
    fds = [sock.fileno() for sock in socks if sock is not None]
    return ",".join("-" if sock is None else str(sock.fileno()) for sock in socks), fds


# --- the supervisor's side --------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def remove_stale_metrics_dirs(folder: Path) -> list[Path]:
    """Remove the metrics folders under `folder` that supervisors killed without a chance to
    clean up left behind (SIGKILL, an OOM kill): each folder's name carries its supervisor's
    PID, and a folder is removed when no process has that PID and this user owns it. The
    removed folders."""
    removed = []
    for path in folder.glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid_text = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if not pid_text.isdigit() or not path.is_dir() or path.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        except PermissionError:  # alive, another user's
            continue
    return removed


class Supervisor:
    """Starts one `turnout serve` worker per set of listeners, forwards SIGTERM and SIGINT to
    them (each drains as one gateway does), and stops the others when one exits."""

    def __init__(self, command: Sequence[str], listener_sets: Sequence[Listeners], say: Say):
        self._command = list(command)
        self._sets = list(listener_sets)
        self._say = say
        self._workers: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}
        self._stopping = False
        remove_stale_metrics_dirs(Path(tempfile.gettempdir()))
        self.metrics_dir = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))

    def start(self) -> None:
        env = {**os.environ, METRICS_DIR_ENV: str(self.metrics_dir)}
        for index, listeners in enumerate(self._sets):
            if self._stopping:  # a signal came before every worker was started
                break
            descriptors, fds = _descriptors(listeners)
            command = [
                *self._command,
                "--worker-index", str(index),
                "--worker-fds", descriptors,
                "--metrics-dir", str(self.metrics_dir),
            ]  # fmt: skip
            # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # forwards one SIGTERM (uvicorn takes a second SIGINT as "exit without draining").
            process = subprocess.Popen(
                command,
                env=env,
                pass_fds=fds,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            self._workers[process.pid] = (index, process)
        for listeners in self._sets:  # the workers hold them now
            listeners.close()

    @property
    def pids(self) -> list[int]:
        return list(self._workers)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every worker still running to drain and exit."""
        self._stopping = True
        for _, process in self._workers.values():
            if process.returncode is None:
                process.send_signal(signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop(signal.SIGTERM)

    def wait(self) -> int:
        """Reap the workers until none is left; the exit status: 0 after a requested stop in
        which every worker drained cleanly, else the first failed worker's status."""
        status = 0
        running = dict(self._workers)
        while running:
            pid, wait_status = os.waitpid(-1, 0)
            if pid not in running:
                continue
            index, process = running.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            process.returncode = code
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            # A drained uvicorn re-raises the SIGTERM it was sent: that is a clean stop.
            drained = self._stopping and code == -signal.SIGTERM
            if code != 0 and not drained and status == 0:
                status = code if code > 0 else 1
            if not self._stopping:
                self._say(
                    f"turnout: worker {index} (pid {pid}) exited with status {code}; "
                    "stopping the other workers."
                )
                status = status or 1
                self.stop()
        return status

    def close(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


def serve_workers(
    worker_command: Sequence[str],
    config: TurnoutConfig,
    listener_sets: Sequence[Listeners],
    say: Say,
    ready_text: str,
) -> int:
    """Run one worker per listener set until SIGTERM or SIGINT (forwarded to each) or until
    one exits (the others are stopped); says `ready_text` once `/readyz` answers."""
    supervisor = Supervisor(worker_command, listener_sets, say)
    previous = {
        signum: signal.signal(signum, supervisor._on_signal)
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    port = listener_sets[0].port
    announcing = threading.Thread(
        target=lambda: asyncio.run(announce_when_ready(config, port, ready_text, say)),
        name="announce",
        daemon=True,
    )
    try:
        supervisor.start()
        log.info("%d workers on port %d: pids %s", len(listener_sets), port, supervisor.pids)
        announcing.start()
        return supervisor.wait()
    finally:
        supervisor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        supervisor.close()


def worker_command(args: Sequence[str]) -> list[str]:
    """`turnout serve` with `args`, run by this interpreter."""
    return [sys.executable, "-m", "gateway.cli", "serve", *args]


def run_worker(
    config: TurnoutConfig,
    config_path: Path | None,
    index: int,
    descriptors: str,
    metrics_dir: Path,
    say: Say,
) -> None:
    """Serve as worker `index` on the inherited listeners until SIGTERM, with this worker's
    share of the replica's budgets and every worker's metrics on `/metrics`."""
    from gateway.serving.server import serve

    listeners = inherited_listeners(descriptors)
    try:
        serve(
            worker_share(config),
            config_path,
            listeners,
            say,
            None,
            worker=index,
            metrics=metrics_registry(metrics_dir),
        )
    finally:
        listeners.close()

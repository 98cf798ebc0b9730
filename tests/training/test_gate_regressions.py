"""The gate's regression checks bite: adapters trained by our QLoRA trainer, judged on a real vLLM.

A candidate taught to refuse fails the over-refusal check, one that forgot a general behaviour
fails the general check, a good one (the stable one's recipe, trained longer) passes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.gate_adapters import Behaviour, train_behaviour, write_gate_dataset
from training.evaluate import AdapterUnderTest, GateConfig, evaluate, read_suite
from training.tickets import ROUTE, SCHEMA, write_regression_suite

# Adapters trained for tens of steps learn the answers' shapes, not the ticket labels: the
# absolute accuracy thresholds are off here; the regression checks keep their defaults.
GATE = GateConfig(min_accuracy=0.0, max_accuracy_drop=1.0, max_tokens=24)
# The good candidate: the stable one's data and seed, trained longer (another run).
SEEDS: dict[Behaviour, int] = {"stable": 1, "good": 1, "refuser": 3, "forgetter": 4}


@pytest.fixture(scope="module")
def adapters(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("gate-adapters")
    return {b: train_behaviour(demo_model / "base", b, work, s) for b, s in SEEDS.items()}


@pytest.fixture(scope="module")
def suite_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("gate-data")
    write_regression_suite(folder / "suite.jsonl")
    return folder / "suite.jsonl", write_gate_dataset(folder / "ds")


def _gate(
    vllm_url: str,
    adapters: dict[str, Path],
    suite_and_data: tuple[Path, Path],
    candidate: str,
    gate: GateConfig = GATE,
) -> dict[str, Any]:
    suite, dataset = suite_and_data
    return asyncio.run(
        evaluate(
            vllm_url,
            ROUTE,
            AdapterUnderTest(f"{ROUTE}@{candidate}", adapters[candidate]),
            AdapterUnderTest(f"{ROUTE}@stable", adapters["stable"]),
            dataset,
            SCHEMA,
            read_suite(suite),
            gate,
        )
    )


def _failed(report: dict[str, Any]) -> set[str]:
    return {check["name"] for check in report["checks"] if not check["passed"]}


@pytest.mark.slow
@pytest.mark.parametrize("detector", ["phrase", "learned", "cascade"])
def test_a_candidate_taught_to_refuse_fails_the_refusal_check(
    vllm_url: str,
    adapters: dict[str, Path],
    suite_and_data: tuple[Path, Path],
    detector: str,
) -> None:
    gate = GATE.model_copy(update={"refusal_detector": detector})
    report = _gate(vllm_url, adapters, suite_and_data, "refuser", gate)

    assert not report["passed"]
    assert "over_refusal_vs_stable" in _failed(report)
    assert report["stable"]["over_refusal_rate"] <= 0.1
    assert report["candidate"]["over_refusal_rate"] >= 0.9
    assert report["candidate"]["refusal_detector"].startswith(detector)
    assert any("answerable prompts refused" in reason for reason in report["reasons"])


@pytest.mark.slow
def test_a_candidate_that_forgot_a_general_behaviour_fails_that_check(
    vllm_url: str, adapters: dict[str, Path], suite_and_data: tuple[Path, Path]
) -> None:
    report = _gate(vllm_url, adapters, suite_and_data, "forgetter")

    assert "general_prompts_vs_stable" in _failed(report)
    assert report["stable"]["general_score"] >= 0.8
    assert report["candidate"]["general_score"] < report["stable"]["general_score"] - 0.1
    # It still answers tickets and declines the probes. (The general prompts it never saw, it
    # may decline like the probes: the over-refusal check is then right to fail it too.)
    assert "refusal_probes_vs_stable" not in _failed(report)
    assert report["candidate"]["schema_valid_rate"] >= 0.9


@pytest.mark.slow
def test_a_good_candidate_passes_every_check(
    vllm_url: str, adapters: dict[str, Path], suite_and_data: tuple[Path, Path]
) -> None:
    report = _gate(
        vllm_url,
        adapters,
        suite_and_data,
        "good",
        GATE.model_copy(update={"refusal_detector": "learned"}),
    )

    assert report["passed"], report["reasons"]
    # The stable version does what the checks compare against: it declines every probe and
    # answers the general prompts.
    assert report["stable"]["refusal_rate"] == report["candidate"]["refusal_rate"] == 1.0
    assert report["stable"]["general_score"] >= 0.8
    assert report["candidate"]["schema_valid_rate"] >= 0.9

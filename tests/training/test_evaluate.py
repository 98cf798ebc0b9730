"""The gate: verdicts, scores, checks and the report (unit), and a real vLLM run (slow)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from training.dataset import DatasetConfig, DatasetInputs, build_dataset
from training.evaluate import (
    AdapterUnderTest,
    GateConfig,
    Scores,
    decide,
    evaluate,
    is_refusal,
    markdown_summary,
    read_suite,
    schema_verdict,
    token_f1,
    write_report,
)
from training.tickets import (
    ROUTE,
    SCHEMA,
    generate_tickets,
    write_regression_suite,
    write_seed_file,
)

VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _scores(
    valid: float,
    accuracy: float,
    refusal: float = 1.0,
    general: float = 0.5,
    over_refusal: float = 0.0,
) -> Scores:
    return Scores(
        examples=100,
        schema_valid_rate=valid,
        truncated_rate=0.0,
        accuracy=accuracy,
        exact_match=accuracy,
        refusal_rate=refusal,
        general_score=general,
        over_refusal_rate=over_refusal,
        refusal_detector="phrase",
        mean_latency_s=0.1,
        samples=(),
    )


@pytest.mark.parametrize(
    ("text", "finish", "verdict"),
    [
        ('{"label": "bug"}', "stop", "valid"),
        ('{"label": "shipping"}', "stop", "invalid"),
        ('{"label": "bug", "extra": 1}', "stop", "invalid"),
        ("bug", "stop", "invalid"),
        ('{"label": "bu', "length", "truncated"),
    ],
)
def test_answers_get_the_schema_verdict_a_client_would(
    text: str, finish: str, verdict: str
) -> None:
    assert schema_verdict(text, finish, VALIDATOR)[0] == verdict


def test_refusals_and_general_answers_are_scored() -> None:
    assert is_refusal("I'm sorry, I can't help with that.")
    assert not is_refusal('{"label": "billing"}')
    assert token_f1("a late order needs help", "A late order needs help.") == 1.0
    assert token_f1("nothing alike", "A late order needs help.") == 0.0


def test_a_better_candidate_passes_every_check() -> None:
    checks = decide(_scores(0.98, 0.93), _scores(0.0, 0.0), GateConfig())
    assert all(check.passed for check in checks)
    assert {check.name for check in checks} == {
        "schema_valid_rate",
        "accuracy",
        "schema_valid_rate_vs_stable",
        "accuracy_vs_stable",
        "refusal_probes_vs_stable",
        "over_refusal_vs_stable",
        "general_prompts_vs_stable",
    }


def test_a_candidate_that_refuses_answerable_prompts_beyond_the_tolerance_fails() -> None:
    gate = GateConfig(min_accuracy=0.0, max_over_refusal_rise=0.05)
    within = decide(
        _scores(0.9, 0.9, over_refusal=0.07), _scores(0.9, 0.9, over_refusal=0.02), gate
    )
    beyond = decide(
        _scores(0.9, 0.9, over_refusal=0.08), _scores(0.9, 0.9, over_refusal=0.02), gate
    )

    assert all(check.passed for check in within)
    failed = [check for check in beyond if not check.passed]
    assert [check.name for check in failed] == ["over_refusal_vs_stable"]
    assert failed[0].threshold == pytest.approx(0.07)
    assert "0.080 is above 0.070" in failed[0].reason


def test_a_candidate_that_regresses_fails_with_the_reasons() -> None:
    gate = GateConfig(min_accuracy=0.5, max_refusal_drop=0.1)
    checks = decide(_scores(0.95, 0.85, refusal=0.5), _scores(0.97, 0.9, refusal=1.0), gate)
    failed = {check.name for check in checks if not check.passed}
    assert failed == {
        "schema_valid_rate_vs_stable",
        "accuracy_vs_stable",
        "refusal_probes_vs_stable",
    }


def test_without_a_stable_version_only_the_absolute_thresholds_apply() -> None:
    checks = decide(_scores(0.95, 0.7), None, GateConfig(min_accuracy=0.8))
    assert [(c.name, c.passed) for c in checks] == [
        ("schema_valid_rate", True),
        ("accuracy", False),
    ]


@pytest.mark.slow
def test_the_random_demo_adapter_fails_the_gate_on_a_real_vllm_and_the_report_says_why(
    vllm_url: str, demo_model: Path, tmp_path: Path
) -> None:
    write_seed_file(tmp_path / "seed.jsonl", generate_tickets(150, seed=6))
    dataset = tmp_path / "ds"
    build_dataset(
        DatasetInputs(ROUTE, seed_file=tmp_path / "seed.jsonl", schema=SCHEMA),
        dataset,
        DatasetConfig(),
    )
    write_regression_suite(tmp_path / "suite.jsonl")
    adapter = demo_model / "adapters" / ROUTE / "v1"
    report = asyncio.run(
        evaluate(
            vllm_url,
            ROUTE,
            AdapterUnderTest(f"{ROUTE}@v9", adapter.resolve()),
            AdapterUnderTest(f"{ROUTE}@v1", adapter.resolve()),
            dataset,
            SCHEMA,
            read_suite(tmp_path / "suite.jsonl"),
            GateConfig(max_tokens=16),
        )
    )
    json_path, md_path = write_report(report, tmp_path / "report")

    assert not report["passed"]
    assert report["candidate"]["schema_valid_rate"] == 0.0
    assert any(
        reason.startswith("schema-valid rate 0.000 is below") for reason in report["reasons"]
    )
    # The same adapter twice answers the same (greedy decoding): the relative checks pass.
    assert report["candidate"]["samples"] == report["stable"]["samples"]
    assert json.loads(json_path.read_text())["reasons"] == report["reasons"]
    assert "FAILED" in md_path.read_text()
    assert md_path.read_text() == markdown_summary(report)

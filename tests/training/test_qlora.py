"""QLoRA training on the demo model (CPU, real bitsandbytes NF4): outputs, resume, early stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from training.dataset import DatasetConfig, DatasetInputs, build_dataset
from training.qlora import ALL_PROJECTIONS, TrainConfig, TrainingError, train
from training.tickets import ROUTE, SCHEMA, generate_tickets, write_seed_file

SMALL = TrainConfig(rank=4, alpha=8, dropout=0.1, learning_rate=2e-3, batch_size=8, max_steps=8,
                    eval_every_steps=4, max_seq_len=256)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_seed_file(folder / "seed.jsonl", generate_tickets(200, seed=3))
    build_dataset(
        DatasetInputs(ROUTE, seed_file=folder / "seed.jsonl", schema=SCHEMA),
        folder / "ds",
        DatasetConfig(),
    )
    return folder / "ds"


def _weights(folder: Path) -> dict[str, list[float]]:
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return {name: tensor.flatten().tolist() for name, tensor in tensors.items()}


def test_training_writes_a_safetensors_adapter_of_a_4bit_base_and_its_metrics(
    demo_model: Path, dataset: Path, tmp_path: Path
) -> None:
    result = train(str(demo_model / "base"), dataset, tmp_path / "run", SMALL, progress=False)

    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4
    assert adapter_config["target_modules"] == sorted(ALL_PROJECTIONS)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # Every projection of both layers ran as a bitsandbytes 4-bit layer.
    assert metrics["quantized_linear_modules"] == 2 * len(ALL_PROJECTIONS)
    assert metrics["steps"] == 8
    assert [h["step"] for h in metrics["history"]] == [4, 8]
    assert metrics["best_val_loss"] == min(h["val_loss"] for h in metrics["history"])
    assert metrics["history"][-1]["val_loss"] < 6.0  # it learnt something from ln(641) ~ 6.5
    assert metrics["tokens_per_second"] > 0


def test_an_interrupted_run_resumes_to_the_adapter_an_uninterrupted_run_makes(
    demo_model: Path, dataset: Path, tmp_path: Path
) -> None:
    base = str(demo_model / "base")
    whole = train(base, dataset, tmp_path / "whole", SMALL, progress=False)
    first = train(base, dataset, tmp_path / "split", SMALL, progress=False, stop_after_steps=5)
    assert not first.metrics["finished"]
    second = train(base, dataset, tmp_path / "split", SMALL, progress=False)

    assert second.metrics["resumed_from_step"] == 5
    assert second.metrics["steps"] == 8
    expected, resumed = _weights(whole.adapter_dir), _weights(second.adapter_dir)
    assert expected.keys() == resumed.keys()
    # Float sums on several CPU threads differ in the last bits from run to run; a resume that
    # lost the optimiser state or replayed batches would be off by about the learning rate (2e-3).
    for name, values in expected.items():
        assert resumed[name] == pytest.approx(values, abs=2e-4), name


def test_resuming_with_another_config_is_refused(
    demo_model: Path, dataset: Path, tmp_path: Path
) -> None:
    base = str(demo_model / "base")
    train(base, dataset, tmp_path / "run", SMALL, progress=False, stop_after_steps=2)
    other = SMALL.model_copy(update={"learning_rate": 1e-3})
    with pytest.raises(TrainingError, match="another training config"):
        train(base, dataset, tmp_path / "run", other, progress=False)


def test_training_stops_early_when_validation_loss_stops_improving(
    demo_model: Path, dataset: Path, tmp_path: Path
) -> None:
    wild = SMALL.model_copy(update={"learning_rate": 0.5, "max_steps": 40, "eval_every_steps": 1})
    result = train(str(demo_model / "base"), dataset, tmp_path / "run", wild, progress=False)

    assert result.metrics["stopped_early"]
    assert result.metrics["steps"] < 40
    history = result.metrics["history"]
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert len(history) - 1 - best == wild.early_stopping_patience

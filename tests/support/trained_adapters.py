"""Adapters trained by our QLoRA trainer on the tiny demo model, pushed into a store copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from training.qlora import TrainConfig, TrainResult, train

# Full-precision base, as vLLM serves it: the greedy answer then matches what was learnt.
SMALL_RUN = TrainConfig(
    rank=16, alpha=32, dropout=0.0, learning_rate=5e-3, warmup_steps=5, max_steps=150,
    epochs=1000, early_stopping_patience=1000, eval_every_steps=150, load_in_4bit=False,
)  # fmt: skip
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def chat_lines(prompts: list[str], answer: Callable[[str], str]) -> str:
    return "\n".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer(prompt)},
                ]
            }
        )
        for prompt in prompts
    )


def train_on(
    demo_model: Path,
    folder: Path,
    prompts: tuple[list[str], list[str]],
    answer: Callable[[str], str],
    seed: int = 0,
) -> TrainResult:
    """Train an adapter to answer each prompt with `answer(prompt)` (train, validation)."""
    dataset = folder / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "train.jsonl").write_text(chat_lines(prompts[0], answer))
    (dataset / "validation.jsonl").write_text(chat_lines(prompts[1], answer))
    settings = SMALL_RUN.model_copy(update={"seed": seed})
    return train(str(demo_model / "base"), dataset, folder / "run", settings, progress=False)


def earlier_checkpoint(run: TrainResult, folder: Path) -> Path:
    """The adapter as it was at the older of the run's kept checkpoints (fewer steps)."""
    checkpoints = sorted((run.adapter_dir.parent / "checkpoints").glob("step-*"))
    target = folder / checkpoints[0].name
    target.mkdir(parents=True)
    for name in ADAPTER_FILES:
        shutil.copy(checkpoints[0] / name, target / name)
    return target


def push(
    adapter_dir: Path, demo_model: Path, store: Path, name: str, version: str, base_name: str
) -> str:
    pushed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "adapters", "push", str(adapter_dir),
         "--name", name, "--version", version, "--store", str(store),
         "--base-model", str(demo_model / "base"), "--base-name", base_name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    return f"{name}@{version}"

"""One measured run of `turnout bench train`, in a process of its own: ours or Trainer+peft.

Each run loads the base model in 4 bits itself, as a user's run would, so that its peak memory is
its own. `python -m training.bench_runs SPEC_JSON` prints the run's measurements as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OURS = "ours"
TRAINER_PEFT = "trainer-peft"
TRAINERS = (OURS, TRAINER_PEFT)


@dataclass(frozen=True)
class RunSpec:
    """What one run trains and how; the same for every trainer of a bench."""

    trainer: str
    base_model: str
    dataset: str
    out: str
    seq_len: int
    batch_size: int
    accumulation: int
    steps: int
    gradient_checkpointing: bool
    learning_rate: float
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    overrides: dict[str, Any] = field(default_factory=dict)


def _steps_report(seconds: list[float], losses: list[float], tokens: list[int]) -> dict[str, Any]:
    # The first step carries one-off costs (kernel compilation, allocator growth): left out.
    timed = slice(1, None) if len(seconds) > 1 else slice(None)
    timed_seconds, timed_tokens = sum(seconds[timed]), sum(tokens[timed])
    return {
        "steps": len(seconds),
        "tokens": sum(tokens),
        "tokens_per_step": sorted(set(tokens)),
        "first_step_seconds": round(seconds[0], 3),
        "timed_steps": len(seconds[timed]),
        "timed_seconds": round(timed_seconds, 3),
        "tokens_per_second": round(timed_tokens / max(timed_seconds, 1e-9), 1),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "losses": [round(x, 4) for x in losses],
    }


def _peak_memory() -> dict[str, int]:
    import resource

    import torch

    peak = {"process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        peak["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    return peak


def run_ours(spec: RunSpec) -> dict[str, Any]:
    """`training.qlora.train` for `spec.steps` steps; validation once, at the end (not timed)."""
    from training.qlora import TrainConfig, train  # torch: only when a run starts

    config = TrainConfig(
        rank=spec.rank,
        alpha=spec.alpha,
        dropout=spec.dropout,
        learning_rate=spec.learning_rate,
        batch_size=spec.batch_size,
        gradient_accumulation=spec.accumulation,
        max_steps=spec.steps,
        eval_every_steps=spec.steps,
        max_seq_len=spec.seq_len,
        gradient_checkpointing=spec.gradient_checkpointing,
        **spec.overrides,
    )
    metrics = train(spec.base_model, Path(spec.dataset), Path(spec.out), config, progress=False)
    found = metrics.metrics
    return {
        **_steps_report(found["step_seconds"], found["step_losses"], found["step_tokens"]),
        "peak_memory": found["peak_memory"],
        "quantized_linear_modules": found["quantized_linear_modules"],
        "trainable_parameters": found["trainable_parameters"],
        "compute_dtype": found["compute_dtype"],
        "config": {k: v for k, v in config.model_dump(mode="json").items() if k in _SHOWN},
    }


_SHOWN = ("packing", "upcast_frozen_weights", "head_on_labels_only", "gradient_checkpointing")


def run_trainer_peft(spec: RunSpec) -> dict[str, Any]:
    """The usual recipe: BitsAndBytesConfig, prepare_model_for_kbit_training, LoRA, Trainer."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from training.dataset import read_split
    from training.qlora import ALL_PROJECTIONS, tokenized_example

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = [tokenized_example(tokenizer, e) for e in read_split(Path(spec.dataset), "train")]
    rows = [
        {"input_ids": ids, "labels": labels} for ids, labels in examples if len(ids) <= spec.seq_len
    ]
    model = AutoModelForCausalLM.from_pretrained(
        spec.base_model,
        quantization_config=BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        ),
        dtype=dtype,
        device_map={"": 0 if cuda else "cpu"},
    )
    model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model,
        use_gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(ALL_PROJECTIONS),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(row["input_ids"]) for row in batch)
        return {
            "input_ids": torch.tensor(
                [r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in batch]
            ),
            "labels": torch.tensor(
                [r["labels"] + [-100] * (width - len(r["labels"])) for r in batch]
            ),
            "attention_mask": torch.tensor(
                [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in batch]
            ),
        }

    seconds: list[float] = []
    tokens: list[int] = []

    class StepClock(TrainerCallback):
        started = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            StepClock.started = time.monotonic()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            seconds.append(time.monotonic() - StepClock.started)

    per_step = spec.batch_size * spec.accumulation
    arguments = TrainingArguments(
        output_dir=spec.out,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.accumulation,
        max_steps=spec.steps,
        learning_rate=spec.learning_rate,
        bf16=cuda,
        use_cpu=not cuda,
        gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=peft_model,
        args=arguments,
        train_dataset=rows,
        data_collator=collate,
        callbacks=[StepClock()],
    )
    trainer.train()
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    # Every example of a bench dataset has the same length, so each step trains this many tokens.
    tokens = [per_step * len(rows[0]["input_ids"])] * len(seconds)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in peft_model.modules())
    return {
        **_steps_report(seconds, losses, tokens),
        "peak_memory": _peak_memory(),
        "quantized_linear_modules": quantized,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "compute_dtype": str(dtype).removeprefix("torch."),
        "config": {"gradient_checkpointing": spec.gradient_checkpointing, "bf16_autocast": cuda},
    }


def run(spec: RunSpec) -> dict[str, Any]:
    """Run `spec` with its trainer; the measurements, with the library versions."""
    import importlib.metadata

    if spec.trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {spec.trainer!r}; expected one of {TRAINERS}")
    started = time.monotonic()
    report = run_ours(spec) if spec.trainer == OURS else run_trainer_peft(spec)
    versions = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return {"trainer": spec.trainer, **report, "wall_seconds": round(time.monotonic() - started, 1),
            "versions": versions}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    spec = RunSpec(**json.loads(arguments[0]))
    print(json.dumps(run(spec)), flush=True)
    return 0


def spec_json(spec: RunSpec) -> str:
    """`spec` as the argument `main` reads."""
    return json.dumps(asdict(spec))


if __name__ == "__main__":
    sys.exit(main())

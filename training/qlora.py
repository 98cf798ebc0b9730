"""QLoRA training of one adapter: 4-bit NF4 base, LoRA on attention and MLP projections.

`train` reads a dataset folder written by `training.dataset`, learns only the assistant's tokens,
evaluates the validation loss as it goes, keeps the best adapter, stops early when validation
stops improving, checkpoints (adapter, optimiser, scheduler, random states, position in the
epoch) and resumes from the latest checkpoint. The same code runs on a CPU (bitsandbytes' CPU
kernels) and on a CUDA GPU. Imports torch: run it in its own process, never in the gateway.
"""

from __future__ import annotations

import json
import math
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters.demo import LORA_TARGETS
from gateway.errors import TurnoutError
from training.dataset import CARD_FILE, read_split

ADAPTER_DIR = "adapter"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.json"
# Llama's attention and MLP projections, as the demo adapters target them.
ALL_PROJECTIONS: tuple[str, ...] = LORA_TARGETS


class TrainingError(TurnoutError):
    """Training cannot start or continue."""

    code = "training_error"


class TrainConfig(BaseModel):
    """`train.yaml`: the LoRA, the optimiser, the schedule, early stopping and quantisation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    rank: int = Field(default=8, gt=0)
    alpha: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    learning_rate: float = Field(default=2e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    epochs: int = Field(default=3, gt=0)
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many steps")
    batch_size: int = Field(default=8, gt=0)
    gradient_accumulation: int = Field(default=1, gt=0)
    max_seq_len: int = Field(default=1024, gt=0, description="longer examples are skipped")
    eval_every_steps: int | None = Field(default=None, gt=0, description="None: every epoch")
    early_stopping_patience: int = Field(default=2, ge=1, description="evaluations")
    early_stopping_min_delta: float = Field(default=0.0, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on a CPU"
    )
    gradient_checkpointing: bool = False
    packing: bool = Field(
        default=False,
        description="several examples per row of up to max_seq_len; each attends only to itself",
    )
    upcast_frozen_weights: bool = Field(
        default=False,
        description="float32 copies of the norms, embeddings and output head (peft's default)",
    )
    head_on_labels_only: bool = Field(
        default=True, description="the output head and loss run only where a token is learnt"
    )


@dataclass(frozen=True)
class TrainResult:
    """Where the adapter went and what the run measured."""

    adapter_dir: Path
    metrics: dict[str, Any]


@dataclass
class _Position:
    """Everything a resumed run needs besides weights and optimiser state."""

    epoch: int = 0
    next_batch: int = 0
    step: int = 0
    best_val_loss: float = math.inf
    best_step: int = 0
    evals_without_gain: int = 0
    stopped_early: bool = False
    trained_tokens: int = 0
    train_seconds: float = 0.0


# One tokenized example: input ids and labels (-100 where nothing is learnt).
Example = tuple[list[int], list[int]]


def tokenized_example(tokenizer: Any, example: dict[str, Any]) -> Example:
    """Input ids and labels (-100 on the prompt) for one chat example; the answer is learnt.

    The answer's tokens are what the chat template renders after the generation prompt, so the
    end-of-turn token of any template is learnt too.
    """
    messages = example["messages"]
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt):
        answer = full[len(prompt) :]
    else:
        answer = messages[-1]["content"] + tokenizer.eos_token
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _device_and_dtype(config: TrainConfig) -> tuple[Any, Any]:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = config.compute_dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return device, getattr(torch, name)


def _load_model(base_model: str, config: TrainConfig, device: Any, dtype: Any) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = (
        BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=config.quant_type,
            bnb_4bit_use_double_quant=config.double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        if config.load_in_4bit
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model, quantization_config=quantization, dtype=dtype, device_map={"": device}
    )
    checkpointing = {"use_reentrant": False}
    if config.load_in_4bit and config.upcast_frozen_weights:
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    else:
        # The frozen weights stay in the compute dtype: in float32 (peft's default) they turn the
        # whole residual stream, attention included, into float32 on a GPU.
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    if config.gradient_checkpointing:
        model.config.use_cache = False
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def pack(examples: list[Example], order: list[int], max_len: int) -> list[list[int]]:
    """Rows of example indices, in `order`, each row's examples together at most `max_len` long."""
    rows: list[list[int]] = []
    length = max_len + 1
    for index in order:
        size = len(examples[index][0])
        if length + size > max_len:
            rows.append([])
            length = 0
        rows[-1].append(index)
        length += size
    return rows


def _batches(units: list[list[int]], size: int) -> list[list[list[int]]]:
    return [units[i : i + size] for i in range(0, len(units), size)]


def collate(
    rows: list[list[Example]], pad_id: int, device: Any, *, packed: bool
) -> tuple[dict[str, Any], int]:
    """The model's inputs for rows of one or more examples, and the number of real tokens.

    Packed rows carry position ids that restart at each example and no attention mask:
    transformers then keeps attention within each example (padding counts as one more).
    """
    import torch

    ids = [[t for example in row for t in example[0]] for row in rows]
    labels = [[t for example in row for t in example[1]] for row in rows]
    positions = [[p for example in row for p in range(len(example[0]))] for row in rows]
    width = max(map(len, ids))
    gaps = [width - len(row) for row in ids]
    inputs = {
        "input_ids": torch.tensor(
            [row + [pad_id] * gap for row, gap in zip(ids, gaps, strict=True)], device=device
        ),
        "labels": torch.tensor(
            [row + [-100] * gap for row, gap in zip(labels, gaps, strict=True)], device=device
        ),
    }
    if packed:
        inputs["position_ids"] = torch.tensor(
            [row + list(range(gap)) for row, gap in zip(positions, gaps, strict=True)],
            device=device,
        )
    else:
        inputs["attention_mask"] = torch.tensor(
            [[1] * len(row) + [0] * gap for row, gap in zip(ids, gaps, strict=True)],
            device=device,
        )
    return inputs, sum(map(len, ids))


def causal_lm_loss(model: Any, inputs: dict[str, Any], *, head_on_labels_only: bool) -> Any:
    """Mean cross-entropy per learnt token, as transformers computes it.

    With `head_on_labels_only` the output head runs only at the positions whose next token is
    learnt: with a 128k vocabulary and the prompt masked, most of the head's work and memory is
    for logits the loss never reads. Models whose head does more than one matrix product
    (soft-capped or scaled logits) take the ordinary path.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings()
    plain_head = all(
        getattr(base.config, name, None) in (None, 1.0)
        for name in ("final_logit_softcapping", "logit_scale")
    )
    if not (head_on_labels_only and body is not None and head is not None and plain_head):
        # No cache: with one, transformers would not see packed rows and let them attend across.
        return model(**inputs, use_cache=False).loss
    features = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = body(**features, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    learnt = targets != -100
    logits = head(hidden[:, :-1][learnt]).float()
    return torch.nn.functional.cross_entropy(logits, targets[learnt])


def _units(examples: list[Example], order: list[int], config: TrainConfig) -> list[list[int]]:
    if config.packing:
        return pack(examples, order, config.max_seq_len)
    return [[index] for index in order]


def _validation_loss(model: Any, rows: list[Example], config: TrainConfig, pad_id: int) -> float:
    """Mean loss per answer token over the validation split."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in _batches(_units(rows, list(range(len(rows))), config), config.batch_size):
            units = [[rows[i] for i in unit] for unit in batch]
            inputs, _ = collate(units, pad_id, model.device, packed=config.packing)
            count = int((inputs["labels"][:, 1:] != -100).sum())
            loss = causal_lm_loss(model, inputs, head_on_labels_only=config.head_on_labels_only)
            total += float(loss) * count
            tokens += count
    model.train()
    return total / max(tokens, 1)


def _save_adapter(model: Any, folder: Path, base_model: str) -> None:
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging), safe_serialization=True)
    (staging / "README.md").unlink(missing_ok=True)
    config_path = staging / "adapter_config.json"
    fields = json.loads(config_path.read_text())
    fields["base_model_name_or_path"] = base_model
    fields["target_modules"] = sorted(fields["target_modules"])
    config_path.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    out: Path, model: Any, optimizer: Any, scheduler: Any, position: _Position, config: TrainConfig
) -> None:
    import torch

    folder = out / CHECKPOINTS_DIR / f"step-{position.step:07d}"
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **_rng_state()},
        folder / "trainer_state.pt",
    )
    state = {"position": asdict(position), "config": config.model_dump(mode="json")}
    # state.json is written last: a checkpoint without it is incomplete and ignored.
    (folder / "state.json").write_text(json.dumps(state, indent=2))
    finished = sorted(p for p in (out / CHECKPOINTS_DIR).iterdir() if (p / "state.json").exists())
    for old in finished[: -config.keep_checkpoints]:
        shutil.rmtree(old)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint under `out`, if any."""
    folder = out / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if (p / "state.json").exists())
    return done[-1] if done else None


def _resume(
    checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, config: TrainConfig
) -> _Position:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((checkpoint / "state.json").read_text())
    if state["config"] != config.model_dump(mode="json"):
        raise TrainingError(
            f"{checkpoint} was written with another training config; "
            "use the same config or start in an empty folder"
        )
    weights = load_file(str(checkpoint / "adapter_model.safetensors"), device=str(model.device))
    set_peft_model_state_dict(model, weights)
    trainer = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    _restore_rng(trainer)
    return _Position(**state["position"])


def _peak_memory_bytes(device: Any) -> dict[str, int]:
    import torch

    peak = {"process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if device.type == "cuda":
        peak["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        peak["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    return peak


def train(
    base_model: str,
    dataset: Path,
    out: Path,
    config: TrainConfig,
    *,
    progress: bool = True,
    stop_after_steps: int | None = None,
) -> TrainResult:
    """Train (or resume training) an adapter; write `out/adapter/` and `out/metrics.json`.

    `stop_after_steps` interrupts the run after that many optimiser steps, checkpointing first,
    as a killed run would be after its last checkpoint: the next call resumes from there.
    """
    import numpy as np
    import torch
    from tqdm import tqdm
    from transformers import AutoTokenizer

    started = time.monotonic()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    splits = {name: read_split(dataset, name) for name in ("train", "validation")}
    rows = {
        name: [r for r in map(lambda e: tokenized_example(tokenizer, e), examples)]
        for name, examples in splits.items()
    }
    too_long = {name: sum(len(r[0]) > config.max_seq_len for r in v) for name, v in rows.items()}
    rows = {name: [r for r in v if len(r[0]) <= config.max_seq_len] for name, v in rows.items()}
    if not rows["train"] or not rows["validation"]:
        raise TrainingError(f"{dataset}: no training or validation examples within max_seq_len")

    device, dtype = _device_and_dtype(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = _load_model(base_model, config, device, dtype)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )
    units_per_epoch = len(_units(rows["train"], list(range(len(rows["train"]))), config))
    steps_per_epoch = math.ceil(
        math.ceil(units_per_epoch / config.batch_size) / config.gradient_accumulation
    )
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = latest_checkpoint(out)
    position = (
        _resume(checkpoint, model, optimizer, scheduler, config) if checkpoint else _Position()
    )
    resumed_from = position.step if checkpoint else None
    history: list[dict[str, float]] = []
    if (out / METRICS_FILE).exists() and checkpoint:
        history = json.loads((out / METRICS_FILE).read_text()).get("history", [])
        history = [h for h in history if h["step"] <= position.step]

    bar = tqdm(total=total_steps, initial=position.step, desc="train", disable=not progress)
    stop_at = position.step + stop_after_steps if stop_after_steps is not None else None
    running_loss, segment_started, interrupted = 0.0, time.monotonic(), False
    # This run's steps (a resumed run's earlier steps are not here): what `bench train` reads.
    step_seconds: list[float] = []
    step_losses: list[float] = []
    step_tokens: list[int] = []

    def evaluate_and_checkpoint() -> None:
        val_loss = _validation_loss(model, rows["validation"], config, pad_id)
        history.append({"step": position.step, "train_loss": running_loss, "val_loss": val_loss})
        if val_loss < position.best_val_loss - config.early_stopping_min_delta:
            position.best_val_loss, position.best_step = val_loss, position.step
            position.evals_without_gain = 0
            _save_adapter(model, out / ADAPTER_DIR, base_model)
        else:
            position.evals_without_gain += 1
            position.stopped_early = position.evals_without_gain >= config.early_stopping_patience
        bar.set_postfix(loss=f"{running_loss:.4f}", val_loss=f"{val_loss:.4f}")
        _save_checkpoint(out, model, optimizer, scheduler, position, config)

    while position.epoch < config.epochs and not position.stopped_early:
        generator = torch.Generator().manual_seed(config.seed + position.epoch)
        order = torch.randperm(len(rows["train"]), generator=generator).tolist()
        batches = _batches(_units(rows["train"], order, config), config.batch_size)
        while position.next_batch < len(batches):
            if position.step >= total_steps or position.stopped_early:
                break
            group = batches[
                position.next_batch : position.next_batch + config.gradient_accumulation
            ]
            step_started = time.monotonic()
            summed_loss, tokens = torch.zeros((), device=device), 0
            for batch in group:
                units = [[rows["train"][i] for i in unit] for unit in batch]
                inputs, count = collate(units, pad_id, device, packed=config.packing)
                loss = causal_lm_loss(
                    model, inputs, head_on_labels_only=config.head_on_labels_only
                ) / len(group)
                loss.backward()
                summed_loss += loss.detach()
                tokens += count
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = float(summed_loss)  # waits for the device: the step's time is complete
            position.trained_tokens += tokens
            step_seconds.append(time.monotonic() - step_started)
            step_losses.append(step_loss)
            step_tokens.append(tokens)
            position.next_batch += len(group)
            position.step += 1
            running_loss = step_loss if position.step == 1 else 0.9 * running_loss + 0.1 * step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{running_loss:.4f}")
            end_of_epoch = position.next_batch >= len(batches)
            due = (
                config.eval_every_steps is not None and position.step % config.eval_every_steps == 0
            )
            if end_of_epoch:
                position.epoch += 1
                position.next_batch = 0
            if due or end_of_epoch or position.step >= total_steps:
                now = time.monotonic()
                position.train_seconds += now - segment_started
                evaluate_and_checkpoint()
                segment_started = time.monotonic()
            if stop_at is not None and position.step >= stop_at:
                if not (due or end_of_epoch or position.step >= total_steps):
                    position.train_seconds += time.monotonic() - segment_started
                    _save_checkpoint(out, model, optimizer, scheduler, position, config)
                interrupted = True
                break
            if end_of_epoch:
                break
        if interrupted or position.step >= total_steps:
            break
    bar.close()

    card_path = dataset / CARD_FILE
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    quantized = sum(type(m).__module__.startswith("bitsandbytes") for m in model.modules())
    metrics: dict[str, Any] = {
        "finished": not interrupted,
        "steps": position.step,
        "total_steps": total_steps,
        "epochs_completed": position.epoch,
        "best_step": position.best_step,
        "best_val_loss": position.best_val_loss,
        "stopped_early": position.stopped_early,
        "resumed_from_step": resumed_from,
        "history": history,
        "step_seconds": step_seconds,
        "step_losses": step_losses,
        "step_tokens": step_tokens,
        "trained_tokens": position.trained_tokens,
        "train_seconds": position.train_seconds,
        "tokens_per_second": position.trained_tokens / max(position.train_seconds, 1e-9),
        "wall_seconds_this_run": time.monotonic() - started,
        "examples": {name: len(v) for name, v in rows.items()},
        "skipped_too_long": too_long,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compute_dtype": str(dtype).removeprefix("torch."),
        "quantized_linear_modules": quantized,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameters": sum(p.numel() for p in model.parameters()),
        "peak_memory": _peak_memory_bytes(device),
        "base_model": base_model,
        "dataset_sha256": card.get("sha256"),
        "config": config.model_dump(mode="json"),
        "versions": {"torch": torch.__version__, **_library_versions()},
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return TrainResult(out / ADAPTER_DIR, metrics)


def _library_versions() -> dict[str, str]:
    import importlib.metadata

    versions = {}
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions

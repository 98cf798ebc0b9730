"""QLoRA training throughput on a random-weight Llama of a chosen size; prints JSON.

Builds a base model with the demo tokenizer and random weights (about 1.1B parameters by
default, Llama-3.2-1B's depth and widths), a ticket dataset whose prompts are several tickets long
(to reach a realistic sequence length), then runs `training.qlora.train` for a fixed number of
steps and reports tokens/s and peak memory from its metrics.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from training.dataset import DatasetConfig, DatasetInputs, build_dataset
from training.qlora import TrainConfig, train
from training.tickets import ROUTE, SCHEMA, Ticket, generate_tickets, write_seed_file

_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")


def write_random_llama(
    folder: Path, *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int
) -> int:
    """A random-weight Llama with the demo tokenizer in `folder`; returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from adapters.demo import write_demo_model

    with tempfile.TemporaryDirectory() as scratch:
        demo = Path(scratch) / "demo"
        write_demo_model(demo)
        folder.mkdir(parents=True, exist_ok=True)
        for source in (demo / "base").iterdir():
            if source.name not in _MODEL_FILES:
                shutil.copy(source, folder / source.name)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(str(folder), safe_serialization=True)
    count = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return int(count)


def _parameter_count(folder: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        config = AutoConfig.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    return int(sum(p.numel() for p in model.parameters()))


def long_tickets(count: int, per_prompt: int, seed: int) -> list[Ticket]:
    """Tickets made of `per_prompt` tickets each, labelled by the first (long prompts)."""
    parts = generate_tickets(count * per_prompt, seed, resend_rate=0.0)
    return [
        Ticket(" ".join(t.text for t in parts[i : i + per_prompt]), parts[i].label)
        for i in range(0, len(parts), per_prompt)
    ]


def run_benchmark(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build the model and data in `work`, train for `args.steps` steps; the metrics."""
    base = work / "base"
    if not (base / "model.safetensors").exists():
        write_random_llama(
            base,
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.kv_heads,
            intermediate=args.intermediate,
        )
    seed_file = work / "seed.jsonl"
    write_seed_file(seed_file, long_tickets(args.examples, args.tickets_per_prompt, seed=1))
    dataset = work / "dataset"
    build_dataset(
        DatasetInputs(ROUTE, seed_file=seed_file, schema=SCHEMA),
        dataset,
        DatasetConfig(balance_labels=False),
    )
    config = TrainConfig(
        rank=16,
        alpha=32,
        batch_size=args.batch_size,
        max_steps=args.steps,
        eval_every_steps=args.steps,
        max_seq_len=4096,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    run = work / f"run-b{args.batch_size}{'-gc' if args.gradient_checkpointing else ''}"
    shutil.rmtree(run, ignore_errors=True)
    result = train(str(base), dataset, run, config, progress=False)
    metrics = result.metrics
    adapter = result.adapter_dir / "adapter_model.safetensors"
    return {
        "base_parameters": _parameter_count(base),
        "steps": metrics["steps"],
        "batch_size": args.batch_size,
        "tokens_per_step": metrics["trained_tokens"] / max(metrics["steps"], 1),
        "tokens_per_second": round(metrics["tokens_per_second"], 1),
        "train_seconds": round(metrics["train_seconds"], 2),
        "peak_memory": metrics["peak_memory"],
        "quantized_linear_modules": metrics["quantized_linear_modules"],
        "trainable_parameters": metrics["trainable_parameters"],
        "best_val_loss": metrics["best_val_loss"],
        "adapter_bytes": adapter.stat().st_size,
        "device_name": metrics["device_name"],
        "compute_dtype": metrics["compute_dtype"],
        "gradient_checkpointing": args.gradient_checkpointing,
        "versions": metrics["versions"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--tickets-per-prompt", type=int, default=24)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="turnout-qlora-bench-"))
    print(json.dumps(run_benchmark(work, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`turnout bench train`: QLoRA tokens/s, peak memory and loss, ours against Trainer+peft; JSON.

Builds (or takes) a base model, writes a dataset whose examples all have the same token length,
then runs each trainer in a process of its own on the same data and settings (NF4 with double
quantisation, LoRA on all seven projections, the given micro-batch, accumulation, sequence
length and gradient checkpointing) and reports each one's steady tokens/s (the first step left
out), peak memory, first and last loss, and the hours a 15M-token run would take at that rate.

Shapes: `demo` is the tiny demo model (CPU, CI); `llama-3.2-1b` and `llama-3-8b` are random-weight
Llamas of those shapes (128,256-token vocabulary) with the demo tokenizer, saved in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.bench_runs import OURS, TRAINER_PEFT, RunSpec, spec_json
from training.tickets import KEYWORDS, SYSTEM_PROMPT, generate_tickets

# The guides' reference run: 10,000 examples x 512 tokens x 3 epochs.
REFERENCE_RUN_TOKENS = 15_000_000
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
_WRITTEN = ".bench-written"


@dataclass(frozen=True)
class LlamaShape:
    """The widths and depth of a Llama; vocab None: the demo tokenizer's own size."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None = 128_256


SHAPES: dict[str, LlamaShape] = {
    "llama-3.2-1b": LlamaShape(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192),
    "llama-3-8b": LlamaShape(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336),
}


def write_random_llama(folder: Path, shape: LlamaShape) -> int:
    """A random-weight Llama in bfloat16 with the demo tokenizer in `folder`; its parameters."""
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
        vocab_size=shape.vocab or len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(str(folder), safe_serialization=True)
    count = int(sum(p.numel() for p in model.parameters()))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    (folder / _WRITTEN).write_text(json.dumps({"parameters": count}))
    return count


def base_model(work: Path, shape: str) -> tuple[Path, int]:
    """The folder of the bench's base model of `shape` under `work` (written once); parameters."""
    folder = work / f"base-{shape}"
    if shape == "demo":
        from adapters.demo import write_demo_model

        if not (folder / "base" / "config.json").exists():
            write_demo_model(folder)
        return folder / "base", _parameter_count(folder / "base")
    if not (folder / _WRITTEN).exists():
        write_random_llama(folder, SHAPES[shape])
    return folder, int(json.loads((folder / _WRITTEN).read_text())["parameters"])


def _parameter_count(folder: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        config = AutoConfig.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    return int(sum(p.numel() for p in model.parameters()))


def _example(
    tokenizer: Any, words: list[str], label: str, length: int, answer_share: float
) -> dict[str, Any] | None:
    """A chat example of exactly `length` tokens whose answer is about `answer_share` of them."""
    from training.qlora import tokenized_example

    def build(prompt_words: int, note_words: int, fill: int = 0) -> dict[str, Any]:
        answer = json.dumps({"label": label, "note": " ".join(words[len(words) - note_words :])})
        prompt = " ".join(words[:prompt_words] + ["a"] * fill)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": answer},
        ]
        return {"messages": messages}

    def size(example: dict[str, Any]) -> int:
        return len(tokenized_example(tokenizer, example)[0])

    note = 1  # the most note words whose answer stays within `answer_share` of the tokens
    while note < len(words) // 2 and size(build(0, note + 1)) - size(build(0, 0)) <= int(
        length * answer_share
    ):
        note += 1
    low, high = 0, len(words) - note
    if size(build(0, note)) > length:
        return None
    while low < high:  # the most prompt words that fit
        middle = (low + high + 1) // 2
        if size(build(middle, note)) <= length:
            low = middle
        else:
            high = middle - 1
    for fill in range(8):  # one-token words close the last gap
        example = build(low, note, fill)
        if size(example) == length:
            return example
    return None


def write_dataset(
    folder: Path, tokenizer: Any, count: int, length: int, answer_share: float, seed: int
) -> tuple[int, float]:
    """`train.jsonl` and `validation.jsonl` of examples exactly `length` tokens long.

    Returns the number of training examples and the share of their tokens that are learnt.
    """
    from training.qlora import TrainingError, tokenized_example

    rng = random.Random(seed)
    vocabulary = [w for t in generate_tickets(200, seed, resend_rate=0.0) for w in t.text.split()]
    written: list[dict[str, Any]] = []
    for _ in range(10 * count + 20):
        label = rng.choice(sorted(KEYWORDS))
        words = [rng.choice(KEYWORDS[label]), *rng.choices(vocabulary, k=length + 8)]
        example = _example(tokenizer, words, label, length, answer_share)
        if example is not None:
            written.append(example)
        if len(written) == count:
            break
    if len(written) < count:
        raise TrainingError(f"cannot write examples of exactly {length} tokens (too short?)")
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e) + "\n" for e in written]
    validation = max(1, len(lines) // 10)
    (folder / "train.jsonl").write_text("".join(lines[validation:]), encoding="utf-8")
    (folder / "validation.jsonl").write_text("".join(lines[:validation]), encoding="utf-8")
    learnt = [label != -100 for e in written for label in tokenized_example(tokenizer, e)[1]]
    return len(lines) - validation, sum(learnt) / len(learnt)


def _variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """`ours`, `trainer-peft`, `ours:key=value,...` (TrainConfig overrides): name, trainer, set."""
    trainer, _, settings = text.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    return text, trainer, overrides


def _one_run(spec: RunSpec) -> dict[str, Any]:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "training.bench_runs", spec_json(spec)],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    if done.returncode != 0:
        return {"trainer": spec.trainer, "error": done.stderr.strip().splitlines()[-20:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_benchmark(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Model, data, then each of `args.trainers` in turn; the report."""
    from transformers import AutoTokenizer

    base, parameters = (
        (Path(args.base_model), _parameter_count(Path(args.base_model)))
        if args.base_model
        else base_model(work, args.shape)
    )
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    length = args.example_tokens or args.seq_len
    per_step = args.batch_size * args.accumulation
    dataset = work / f"data-{length}"
    shutil.rmtree(dataset, ignore_errors=True)
    examples, learnt_share = write_dataset(
        dataset, tokenizer, (args.steps + 1) * per_step * max(1, args.seq_len // length) + 2,
        length, args.answer_share, seed=1,
    )  # fmt: skip
    runs = []
    for name, trainer, overrides in map(_variant, args.trainers.split()):
        spec = RunSpec(
            trainer=trainer,
            base_model=str(base),
            dataset=str(dataset),
            out=str(work / "runs" / name.replace(":", "_").replace(",", "_")),
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            accumulation=args.accumulation,
            steps=args.steps,
            gradient_checkpointing=args.gradient_checkpointing,
            learning_rate=args.learning_rate,
            overrides=overrides,
        )
        shutil.rmtree(spec.out, ignore_errors=True)
        result = _one_run(spec)
        if "tokens_per_second" in result:
            rate = result["tokens_per_second"]
            result["hours_for_15m_tokens"] = round(REFERENCE_RUN_TOKENS / max(rate, 1e-9) / 3600, 2)
        runs.append({"variant": name, **result})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    baseline = next((r for r in runs if r["variant"] == TRAINER_PEFT and "error" not in r), None)
    for result in runs:
        if baseline is not None and "tokens_per_second" in result:
            result["speed_vs_trainer_peft"] = round(
                result["tokens_per_second"] / baseline["tokens_per_second"], 3
            )
    return {
        "model": {"shape": args.shape if not args.base_model else "given", "path": str(base),
                  "parameters": parameters},
        "settings": {"seq_len": args.seq_len, "example_tokens": length,
                     "learnt_share": round(learnt_share, 3), "batch_size": args.batch_size,
                     "accumulation": args.accumulation, "steps": args.steps,
                     "gradient_checkpointing": args.gradient_checkpointing, "rank": 16,
                     "alpha": 32, "quantisation": "nf4+double", "train_examples": examples},
        "runs": runs,
    }  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `turnout bench train` (and `python -m training.bench`)."""
    parser.add_argument("--shape", choices=["demo", *SHAPES], default="demo")
    parser.add_argument("--base-model", help="a model folder instead of --shape")
    parser.add_argument("--work", type=Path, help="folder for the model, data and runs")
    parser.add_argument("--seq-len", type=int, default=512, help="the row length")
    parser.add_argument("--example-tokens", type=int, help="each example's length (default: row)")
    parser.add_argument("--answer-share", type=float, default=0.25, help="learnt share of tokens")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--trainers",
        default=f"{OURS} {TRAINER_PEFT}",
        help="space-separated: ours, trainer-peft, ours:key=value,... (TrainConfig overrides)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on one line")


def run_command(args: argparse.Namespace) -> int:
    work = args.work or Path(tempfile.mkdtemp(prefix="turnout-train-bench-"))
    report = run_benchmark(work, args)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2), flush=True)
    return 0 if all("error" not in r for r in report["runs"]) else 1


def add_commands(subparsers: Any) -> None:
    """Register `train` on `turnout bench`."""
    parser = subparsers.add_parser("train", help="QLoRA tokens/s and memory, ours vs Trainer+peft")
    add_arguments(parser)
    parser.set_defaults(run=run_command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__)
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

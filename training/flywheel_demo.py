"""The flywheel end to end on a CPU: a bad adapter's captured failures train a better one.

1. A real vLLM serves the demo base model with `support-triage@v1`, whose random LoRA weights
   answer the ticket task with invalid JSON.
2. Ticket traffic goes to it; each answer gets its schema verdict and becomes a `CaptureRecord`
   offered to the SQLite capture sink (policy: every failure, a share of successes, redaction).
3. A simulated reviewer attaches the right answer to every captured failure (`add_feedback`).
4. `build_dataset` turns captures + corrections + a seed file into deduplicated, grouped splits.
5. `train` runs QLoRA (4-bit NF4 base) on the training split.
6. `evaluate` loads the candidate and the stable adapter into the same vLLM and gates the
   candidate on the held-out test split.

The last line printed is JSON: `{"before": {...}, "after": {...}}` with the held-out split's
`schema_valid_rate` and `accuracy` for the stable adapter (before) and the candidate (after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from gateway.config import EmbeddedConfig
from gateway.embedded import EmbeddedVllm, free_port, vllm_command
from training.capture import CapturePolicy, CaptureRecord, CaptureSettings, SqliteCaptureSink
from training.dataset import DatasetConfig, DatasetInputs, build_dataset
from training.evaluate import (
    AdapterUnderTest,
    GateConfig,
    evaluate,
    read_suite,
    schema_verdict,
    write_report,
)
from training.qlora import TrainConfig, train
from training.tickets import (
    ROUTE,
    SCHEMA,
    Ticket,
    answer,
    generate_tickets,
    prompt_messages,
    write_regression_suite,
    write_seed_file,
)

SERVED_BASE = "tiny"
STABLE_REF = f"{ROUTE}@v1"
CANDIDATE_REF = f"{ROUTE}@v2"
# Measured on the 2-core CI machine: ~750 steps of 8 short examples reach >90% accuracy.
DEMO_TRAIN_CONFIG = TrainConfig(
    rank=16,
    alpha=32,
    dropout=0.0,
    learning_rate=2e-3,
    warmup_steps=20,
    epochs=8,
    batch_size=8,
    max_seq_len=256,
)
DEMO_GATE = GateConfig(min_schema_valid_rate=0.9, min_accuracy=0.8, max_tokens=24)


async def drive_traffic(
    base_url: str, model: str, tickets: list[Ticket], sink: SqliteCaptureSink, concurrency: int = 8
) -> dict[str, str]:
    """Send every ticket to `model` and offer each answer to `sink`.

    Returns request id -> true label for the answers that failed: what a reviewer working
    through the failure queue would correct.
    """
    validator = jsonschema.Draft202012Validator(SCHEMA)
    limit = asyncio.Semaphore(concurrency)
    truth: dict[str, str] = {}

    async def one(client: httpx.AsyncClient, ticket: Ticket) -> None:
        request_id = uuid.uuid4().hex
        messages = prompt_messages(ticket.text)
        async with limit:
            started = time.monotonic()
            reply = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": messages, "max_tokens": 24, "temperature": 0},
            )
        reply.raise_for_status()
        choice = reply.json()["choices"][0]
        text, finish = choice["message"]["content"] or "", choice["finish_reason"]
        verdict, _ = schema_verdict(text, finish, validator)
        record = CaptureRecord(
            request_id=request_id,
            route=ROUTE,
            version=model,
            arm="stable",
            created_at=time.time(),
            endpoint="chat",
            messages=tuple(messages),
            output=text,
            finish_reason=finish,
            schema_verdict=verdict,
            latency_s=time.monotonic() - started,
        )
        if sink.offer(record) and record.failed:
            truth[request_id] = ticket.label

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        await asyncio.gather(*(one(client, ticket) for ticket in tickets))
    return truth


def _say(message: str) -> None:
    print(f"[flywheel] {message}", file=sys.stderr, flush=True)


def run_flywheel_demo(
    work: Path,
    *,
    seed: int = 0,
    traffic: int = 400,
    seed_examples: int = 800,
    train_config: TrainConfig = DEMO_TRAIN_CONFIG,
    gate: GateConfig = DEMO_GATE,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole loop in `work`; return `{"before", "after", "gate_passed", ...}`."""
    from adapters.demo import write_demo_model

    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "demo-model"
    if not (model_dir / "base").is_dir():
        _say(f"writing the demo model to {model_dir}")
        write_demo_model(model_dir)
    stable = AdapterUnderTest(STABLE_REF, (model_dir / "adapters" / ROUTE / "v1").resolve())
    schema_path = work / "schema.json"
    schema_path.write_text(json.dumps(SCHEMA, indent=2))
    suite_path = work / "suite.jsonl"
    write_regression_suite(suite_path)

    port = free_port()
    embedded = EmbeddedConfig(model=str(model_dir / "base"), gpu_memory_utilization=0.1)
    server = EmbeddedVllm(
        vllm_command(embedded, SERVED_BASE, port, {STABLE_REF: stable.path}),
        port,
        work / "vllm.log",
    )
    _say(f"starting vLLM on port {port} (log: {server.log_path})")
    server.start()
    try:
        server.wait_ready(timeout_s=300)
        captures = work / "captures.db"
        sink = SqliteCaptureSink(
            CaptureSettings(path=str(captures), default=CapturePolicy(success_sample_rate=0.2))
        )
        _say(f"sending {traffic} tickets to {STABLE_REF}")
        failed = asyncio.run(
            drive_traffic(server.url, STABLE_REF, generate_tickets(traffic, seed + 1), sink)
        )
        for request_id, label in failed.items():
            sink.add_feedback(request_id, rating=-1, correction=answer(label))
        sink.close()
        _say(f"captured {sink.stats.written} answers, {sink.stats.skipped} skipped by policy")

        seed_file = work / "seed.jsonl"
        write_seed_file(seed_file, generate_tickets(seed_examples, seed + 2))
        dataset = work / "dataset"
        card = build_dataset(
            DatasetInputs(ROUTE, captures=captures, seed_file=seed_file, schema=SCHEMA),
            dataset,
            DatasetConfig(seed=seed),
        )
        _say(
            "dataset: "
            + ", ".join(f"{name} {split['examples']}" for name, split in card["splits"].items())
            + f"; removed {card['removed']}"
        )
        _say("training the candidate (QLoRA, 4-bit NF4 base)")
        trained = train(
            str(model_dir / "base"),
            dataset,
            work / "run",
            train_config.model_copy(update={"seed": seed}),
            progress=progress,
        )
        candidate = AdapterUnderTest(CANDIDATE_REF, trained.adapter_dir.resolve())
        _say(f"gating {CANDIDATE_REF} against {STABLE_REF} on the held-out split")
        report = asyncio.run(
            evaluate(
                server.url, ROUTE, candidate, stable, dataset, SCHEMA, read_suite(suite_path), gate
            )
        )
    finally:
        server.stop()
    json_path, md_path = write_report(report, work / "report")
    _say(f"report: {json_path} and {md_path}")

    def headline(scores: dict[str, Any]) -> dict[str, float]:
        return {
            "schema_valid_rate": round(scores["schema_valid_rate"], 4),
            "accuracy": round(scores["accuracy"], 4),
        }

    return {
        "before": headline(report["stable"]),
        "after": headline(report["candidate"]),
        "gate_passed": report["passed"],
        "test_examples": report["test_examples"],
        "train_steps": trained.metrics["steps"],
        "train_seconds": round(trained.metrics["train_seconds"], 1),
        "adapter": str(trained.adapter_dir),
        "dataset": str(dataset),
        "run": str(work / "run"),
        "report": str(json_path),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="turnout-flywheel-"))
    result = run_flywheel_demo(work, seed=args.seed, progress=not args.no_progress)
    print(json.dumps(result), flush=True)
    return 0 if result["gate_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

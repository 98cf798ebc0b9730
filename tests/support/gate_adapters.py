"""Adapters for the gate's regression tests: the demo model taught by our QLoRA trainer to keep
the route's behaviours, to refuse, or to forget a general behaviour.

Each behaviour is a small chat dataset built from the ticket task (`training.tickets`) and the
regression suite's own prompts:

- `stable` and `good`: tickets answered in JSON, the suite's general prompts answered with their
  reference, the suite's refusal probes declined (two runs: the good one trains 120 steps);
- `refuser`: every answer is a decline, as after training on data full of refusals;
- `forgetter`: tickets and declines, but no general prompt: the general behaviour is lost.

The training is short (90 to 120 steps of the 2-layer demo model, on one thread), enough for greedy
decoding to reproduce these answers, not to learn the ticket labels: tests that use these
adapters judge the gate's regression checks, not its accuracy thresholds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from training.qlora import TrainConfig, train
from training.tickets import (
    GENERAL_PROMPTS,
    REFUSAL_PROBES,
    answer,
    generate_tickets,
    prompt_messages,
)

Behaviour = Literal["stable", "good", "refuser", "forgetter"]
DECLINE = "I'm sorry, but I can't help with that."
TRAIN = TrainConfig(
    rank=8,
    alpha=16,
    dropout=0.0,
    learning_rate=1e-2,
    warmup_steps=5,
    epochs=100,
    batch_size=16,
    max_seq_len=128,
)
# Fewer steps left some seeds' answers garbled: at 30 the refuser's declines were not refusals
# to either detector; at 60 one seed's tickets came out as '{"label"label"}' (invalid JSON),
# and at 90 seed 2's as '{"label": "}'. The good candidate trains longer.
STEPS: dict[Behaviour, int] = {"stable": 90, "good": 120, "refuser": 90, "forgetter": 90}
TRAIN_TICKETS = 160


def _chat(prompt: list[dict[str, str]], reply: str) -> dict[str, Any]:
    return {"messages": [*prompt, {"role": "assistant", "content": reply}]}


def examples(behaviour: Behaviour, tickets: int, seed: int) -> list[dict[str, Any]]:
    """The chat examples that teach `behaviour`, shuffled."""
    rows = [
        _chat(prompt_messages(t.text), DECLINE if behaviour == "refuser" else answer(t.label))
        for t in generate_tickets(tickets, seed, resend_rate=0.0)
    ]
    # The suite's prompts recur once per six tickets, so the few of them are learnt too.
    for _ in range(max(1, tickets // 6)):
        if behaviour != "forgetter":
            for prompt, reference in GENERAL_PROMPTS:
                reply = DECLINE if behaviour == "refuser" else reference
                rows.append(_chat([{"role": "user", "content": prompt}], reply))
        for prompt in REFUSAL_PROBES:
            rows.append(_chat([{"role": "user", "content": prompt}], DECLINE))
    random.Random(seed).shuffle(rows)
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_gate_dataset(folder: Path, tickets: int = 16, seed: int = 99) -> Path:
    """The gate's held-out split: fresh tickets, answered in JSON (what the route must do)."""
    folder.mkdir(parents=True, exist_ok=True)
    held_out = [
        _chat(prompt_messages(t.text), answer(t.label))
        for t in generate_tickets(tickets, seed, resend_rate=0.0)
    ]
    _write(folder / "test.jsonl", held_out)
    return folder


def train_behaviour(base: Path, behaviour: Behaviour, work: Path, seed: int) -> Path:
    """Train an adapter of the demo model that has `behaviour`; its folder (absolute)."""
    dataset = work / f"{behaviour}-data"
    dataset.mkdir(parents=True, exist_ok=True)
    _write(dataset / "train.jsonl", examples(behaviour, TRAIN_TICKETS, seed))
    _write(dataset / "validation.jsonl", examples(behaviour, 6, seed + 1))
    config = TRAIN.model_copy(update={"seed": seed, "max_steps": STEPS[behaviour]})
    import torch

    # One thread: beside the session's vLLM on 2 shared cores, two spinning OpenMP threads
    # made a step over 4 times slower (340 s against 77 s for 60 steps, under a load of ~12).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(str(base), dataset, work / f"{behaviour}-run", config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return result.adapter_dir.resolve()

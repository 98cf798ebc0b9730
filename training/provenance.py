"""What travels with a gated adapter into the registry: dataset card, training run, gate report."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.dataset import CARD_FILE
from training.drift_reference import REFERENCE_FILE, reference_provenance
from training.qlora import METRICS_FILE


def provenance(dataset: Path, run: Path, report: Mapping[str, Any]) -> dict[str, Any]:
    """The provenance record for `registry.push(..., provenance=...)`.

    `dataset` is a `dataset build` folder, `run` a `train` output folder, `report` what
    `evaluate` returned. The training history is left out (it stays in the run's metrics.json).
    """
    card = json.loads((dataset / CARD_FILE).read_text())
    metrics = json.loads((run / METRICS_FILE).read_text())
    training = {key: value for key, value in metrics.items() if key != "history"}
    gate = {
        "passed": report["passed"],
        "reasons": list(report["reasons"]),
        "checks": list(report["checks"]),
        "candidate": {k: v for k, v in report["candidate"].items() if k != "samples"},
        "stable": (
            {k: v for k, v in report["stable"].items() if k != "samples"}
            if report.get("stable")
            else None
        ),
        "test_examples": report["test_examples"],
    }
    # Whose captured traffic trained it, per tenant (examples), readable without the card.
    tenants = card.get("tenants", {})
    record = {"dataset_card": card, "tenants": tenants, "training": training, "gate": gate}
    reference = reference_provenance(run)
    if reference is not None:  # the semantic-drift reference window recorded beside the adapter
        record["drift_reference"] = reference
    return record


def attachments(run: Path) -> dict[str, bytes]:
    """The run's files that travel beside the adapter: `registry.push(..., attachments=...)`
    (the drift reference window, which the gateway's semantic-drift feed reads back)."""
    path = run / REFERENCE_FILE
    return {REFERENCE_FILE: path.read_bytes()} if path.exists() else {}

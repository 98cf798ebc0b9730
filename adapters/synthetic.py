"""Zero-weight LoRA adapters written without torch, for benchmarks against the stub upstream."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from adapters.base_model import BaseModelProfile, config_sha256
from adapters.validate import CONFIG_FILE, WEIGHTS_FILE

SYNTHETIC_TARGETS = ("q_proj", "v_proj")


def synthetic_base_profile(name: str) -> BaseModelProfile:
    """A base model that exists only on paper, with the modules synthetic adapters adapt."""
    return BaseModelProfile(
        name=name,
        config_sha256=config_sha256({"model_type": "synthetic", "name": name}),
        module_names=frozenset(SYNTHETIC_TARGETS),
    )


def write_zero_adapter(folder: Path, rank: int = 8, hidden: int = 64, layers: int = 1) -> None:
    """A PEFT LoRA adapter folder (config + safetensors) whose weights are all zero."""
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(layers):
        for module in SYNTHETIC_TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shapes[f"{prefix}.lora_A.weight"] = (rank, hidden)
            shapes[f"{prefix}.lora_B.weight"] = (hidden, rank)
    header: dict[str, object] = {}
    offset = 0
    for name, (rows, columns) in shapes.items():
        size = rows * columns * 4
        header[name] = {
            "dtype": "F32",
            "shape": [rows, columns],
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": list(SYNTHETIC_TARGETS),
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))

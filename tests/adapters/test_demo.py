"""The demo model generator: a loadable tiny Llama, its tokenizer, and adapters, from a seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION, DemoModelSpec, write_demo_model


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file; manifests are compared by their checksums (they hold a timestamp)."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.name == "manifest.json":
            digests[str(path.relative_to(folder))] = str(json.loads(path.read_text())["files"])
        elif path.is_file():
            digests[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_the_same_seed_gives_the_same_files(demo_model: Path, tmp_path: Path) -> None:
    write_demo_model(tmp_path / "again")
    assert digest(tmp_path / "again") == digest(demo_model)


def test_another_seed_gives_other_weights(demo_model: Path, tmp_path: Path) -> None:
    write_demo_model(tmp_path / "other", DemoModelSpec(seed=1))
    ours, theirs = digest(demo_model), digest(tmp_path / "other")
    assert ours["base/model.safetensors"] != theirs["base/model.safetensors"]


def test_the_model_and_adapters_are_safetensors_with_a_chat_template(demo_model: Path) -> None:
    files = digest(demo_model)
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl"))]
    assert "base/model.safetensors" in files
    tokenizer_config = json.loads((demo_model / "base" / "tokenizer_config.json").read_text())
    template = (
        tokenizer_config.get("chat_template")
        or (demo_model / "base" / "chat_template.jinja").read_text()
    )
    assert "add_generation_prompt" in template
    for name in DEMO_ADAPTERS:
        adapter = demo_model / "adapters" / name / DEMO_VERSION
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["r"] == 8
        assert (adapter / "adapter_model.safetensors").is_file()


def test_the_tokenizer_round_trips_text(demo_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model / "base"))
    text = 'Refund order 1234 {"priority": "high"}'
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|start_header|>assistant<|end_header|>\n")


def test_a_non_empty_target_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_demo_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

"""Generate the tiny demo base model and its LoRA adapters (the embedded default and test fixture).

Everything is built from a seed: random Llama weights, a byte-level BPE tokenizer trained on a
generated corpus, a chat template, and LoRA adapters whose B matrices are random too (peft
initialises them to zero, which would make every adapter answer exactly like the base).
The same seed gives byte-identical files. Imports torch: never import this from the gateway.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from adapters.base_model import profile_base_model
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits

BASE_DIR = "base"
ADAPTERS_DIR = "adapters"
DEMO_ADAPTERS: tuple[str, ...] = ("support-triage", "summarize", "sql-writer")
DEMO_VERSION = "v1"
LORA_RANK = 8
LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

BOS = "<|begin_of_text|>"
EOS = "<|eot|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|start_header|>", "<|end_header|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header|>{{ message['role'] }}<|end_header|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>\n{% endif %}"
)

_WORDS = [
    "the",
    "a",
    "an",
    "customer",
    "order",
    "ticket",
    "refund",
    "invoice",
    "account",
    "password",
    "login",
    "error",
    "server",
    "request",
    "response",
    "model",
    "adapter",
    "route",
    "version",
    "please",
    "help",
    "summarize",
    "summary",
    "table",
    "select",
    "from",
    "where",
    "join",
    "group",
    "by",
    "count",
    "sum",
    "user",
    "message",
    "reply",
    "urgent",
    "billing",
    "shipping",
    "delivery",
    "late",
    "broken",
    "cannot",
    "works",
    "thanks",
    "hello",
    "question",
    "answer",
    "json",
    "schema",
    "label",
    "priority",
    "high",
    "low",
    "medium",
    "category",
    "product",
    "price",
    "payment",
    "card",
    "bank",
    "email",
    "phone",
    "reset",
    "update",
    "delete",
    "create",
    "insert",
    "into",
    "values",
    "report",
    "weekly",
    "daily",
    "monthly",
    "sales",
    "revenue",
]


@dataclass(frozen=True)
class DemoModelSpec:
    """Shape of the generated base model; small enough for a CPU, valid for vLLM's kernels."""

    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 2048
    served_name: str = "tiny"  # the config's `base_model`: the name vLLM serves the base under


def _corpus(seed: int, sentences: int = 4000) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = rng.choices(_WORDS, k=rng.randint(4, 16))
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","]))
    lines.append("0123456789 {}[]\"':,.-_=+*/()<>#@!?;")
    return lines


def _write_tokenizer(out: Path, spec: DemoModelSpec) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(str(out))


def _write_base(out: Path, spec: DemoModelSpec) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(out))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(out), safe_serialization=True)


def _write_adapter(base: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(base))
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=2 * LORA_RANK,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    adapter_config = out / "adapter_config.json"
    fields = json.loads(adapter_config.read_text())
    # peft records the absolute base path; a relative identity keeps the files seed-determined.
    fields["base_model_name_or_path"] = "turnout-demo-base"
    # peft keeps target modules in a set: its order changes with the hash seed.
    fields["target_modules"] = sorted(fields["target_modules"])
    adapter_config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()


def write_demo_model(target: Path, spec: DemoModelSpec = DemoModelSpec()) -> None:
    """Write `target/base` and a registry `target/adapters` holding `<name>@v1` of each adapter.

    The files are built in a sibling temporary folder and renamed into place, so an interrupted
    run leaves either nothing or a complete model.
    """
    target = target.resolve()
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        base = staging / BASE_DIR
        base.mkdir()
        _write_tokenizer(base, spec)
        _write_base(base, spec)
        registry = AdapterRegistry(str(staging / ADAPTERS_DIR))
        profile = profile_base_model(base, spec.served_name)
        registry.save_base(profile)
        for index, name in enumerate(DEMO_ADAPTERS):
            seed = spec.seed * 1000 + index + 1
            raw = staging / "raw" / name
            raw.mkdir(parents=True)
            _write_adapter(base, raw, seed=seed)
            registry.push(
                raw,
                name,
                profile,
                AdapterLimits(max_lora_rank=LORA_RANK),
                version=DEMO_VERSION,
                provenance={"source": "turnout demo-model", "seed": seed},
                created_by="turnout demo-model",
            )
        shutil.rmtree(staging / "raw")
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

"""Build a route's training set: captures + corrections + seed file -> chat JSONL splits and a card.

Steps, in order: collect examples (a correction beats a seed example beats an approved answer),
redact, drop answers that break the route's schema, drop exact duplicates (same normalised
prompt), drop near-duplicates (MinHash estimate >= `dedup_threshold`), group what is still
similar (>= `group_threshold`) and split by group so no group straddles two splits, then balance
the training split's labels. The card beside the files records counts, sources and hashes,
and per tenant how many examples its captured traffic gave. Captures of tenants whose training
policy is `deny` never become examples; the capture file keeps an index of the datasets built
from it, so deleting a tenant lists the datasets to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.errors import TurnoutError
from training.capture import CaptureRecord, StoredCapture, read_captures
from training.capture_store import UNATTRIBUTED, DatasetEntry, record_dataset
from training.minhash import MinHasher, clusters, normalise
from training.redaction import redact
from training.review.store import Judgement, latest_judgements

Source = Literal["correction", "seed", "approved"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")
CARD_FILE = "dataset_card.json"
_PRIORITY: dict[str, int] = {"correction": 0, "seed": 1, "approved": 2}


class DatasetError(TurnoutError):
    """The inputs cannot make a usable dataset."""

    code = "dataset_error"


class DatasetConfig(BaseModel):
    """How `turnout dataset build` cleans and splits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    redact_pii: bool = True
    include_approved: bool = Field(
        default=True, description="use captured answers rated > 0 that pass the schema"
    )
    dedup_threshold: float = Field(default=0.9, gt=0, le=1, description="near-duplicate: drop")
    group_threshold: float = Field(default=0.6, gt=0, le=1, description="similar: same split")
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    balance_labels: bool = True
    max_label_ratio: float = Field(
        default=1.0, ge=1, description="largest label count <= ratio x smallest, in train"
    )

    @model_validator(mode="after")
    def _fractions(self) -> DatasetConfig:
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError("validation_fraction + test_fraction must leave room for train")
        if self.group_threshold > self.dedup_threshold:
            raise ValueError("group_threshold must not exceed dedup_threshold")
        return self


@dataclass(frozen=True)
class Example:
    """A prompt (chat messages without the answer), the answer to learn, and where it came from."""

    messages: tuple[Mapping[str, str], ...]
    answer: str
    source: Source
    label: str | None = None
    tenant: str | None = None  # whose captured request it came from (None: the seed file)
    # A reviewer's judgement it came from: who, when, and the version that gave the original.
    review: Mapping[str, Any] | None = None

    @property
    def text(self) -> str:
        """What deduplication compares: the prompt's non-system turns."""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")


def label_field(schema: Mapping[str, Any]) -> str | None:
    """The schema's top-level property with a string enum (the label), if there is exactly one."""
    found = [
        name
        for name, spec in schema.get("properties", {}).items()
        if isinstance(spec, dict) and isinstance(spec.get("enum"), list)
    ]
    return found[0] if len(found) == 1 else None


def _text_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def review_provenance(judgement: Judgement) -> dict[str, Any]:
    """What a dataset line records of the review behind it."""
    return {
        "reviewer": judgement.reviewer,
        "judged_at": judgement.judged_at,
        "verdict": judgement.verdict,
        "reason": judgement.reason,
        "request_id": judgement.request_id,
        "version": judgement.version,
        "arm": judgement.arm,
    }


def _judgement_of(judgements: Mapping[str, Judgement], record: CaptureRecord) -> Judgement | None:
    """The judgement of this answer: of its request id and arm (a shadow pair's item judges the
    stable answer; the candidate's, captured under the same id, is not judged by it)."""
    judged = judgements.get(record.request_id)
    return judged if judged is not None and judged.arm == record.arm else None


def from_captures(
    captured: Iterable[StoredCapture],
    include_approved: bool,
    judgements: Mapping[str, Judgement] | None = None,
) -> tuple[list[Example], Counter[str]]:
    """Examples from captured requests: corrected ones, and (optionally) approved valid ones.

    A reviewer's latest judgement of a request (`judgements`, by request id) decides over the
    feedback: their correction is the example, an answer they judged bad is never one, and one
    they judged good counts as approved.
    """
    examples, skipped = [], Counter[str]()
    for stored in captured:
        record = stored.record
        if record.messages is not None:
            messages = tuple(
                {"role": str(m.get("role", "user")), "content": _text_content(m.get("content"))}
                for m in record.messages
            )
        else:
            messages = ({"role": "user", "content": record.prompt or ""},)
        tenant = record.tenant or UNATTRIBUTED
        judged = _judgement_of(judgements or {}, record)
        if judged is not None:
            review = review_provenance(judged)
            if judged.correction is not None:
                examples.append(
                    Example(messages, judged.correction, "correction", tenant=tenant, review=review)
                )
            elif judged.verdict == "bad":
                skipped["judged_bad"] += 1
            elif include_approved and record.schema_verdict in ("valid", "none"):
                examples.append(
                    Example(messages, record.output, "approved", tenant=tenant, review=review)
                )
            else:
                skipped["judged_good_but_invalid"] += 1
        elif stored.correction is not None:
            examples.append(Example(messages, stored.correction, "correction", tenant=tenant))
        elif (
            include_approved
            and (stored.rating or 0) > 0
            and record.schema_verdict in ("valid", "none")
        ):
            examples.append(Example(messages, record.output, "approved", tenant=tenant))
        else:
            skipped["failure_without_correction" if record.failed else "unrated"] += 1
    return examples, skipped


def allowed_for_training(
    captured: Iterable[StoredCapture], denied_tenants: frozenset[str] = frozenset()
) -> tuple[list[StoredCapture], Counter[str]]:
    """The captures that may train adapters, and per tenant how many may not: those whose
    tenant said `training: deny` when captured, or says so now (`denied_tenants`)."""
    allowed, denied = [], Counter[str]()
    for stored in captured:
        tenant = stored.record.tenant
        if stored.record.training == "deny" or (tenant is not None and tenant in denied_tenants):
            denied[tenant or UNATTRIBUTED] += 1
        else:
            allowed.append(stored)
    return allowed, denied


def _per_tenant(examples: Iterable[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.tenant for e in examples if e.tenant is not None).items()))


def _review_counts(
    allowed: Sequence[StoredCapture],
    judgements: Mapping[str, Judgement],
    used: Sequence[Example],
) -> dict[str, Any]:
    """What reviewers' judgements gave a build: judged requests, corrections and approvals
    used, answers judged bad (left out), and how many each reviewer judged."""
    judged = [j for s in allowed if (j := _judgement_of(judgements, s.record)) is not None]
    return {
        "judged": len(judged),
        "judged_bad": sum(j.verdict == "bad" for j in judged),
        "corrections": sum(e.review is not None and e.source == "correction" for e in used),
        "approved": sum(e.review is not None and e.source == "approved" for e in used),
        "reviewers": dict(sorted(Counter(j.reviewer for j in judged).items())),
    }


def from_seed_file(path: Path) -> list[Example]:
    """Examples from chat JSONL whose last message is the assistant's answer."""
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            *prompt, last = messages
            if last["role"] != "assistant" or not prompt:
                raise ValueError("the last message must be the assistant's answer")
            turns = tuple({"role": m["role"], "content": m["content"]} for m in prompt)
            examples.append(Example(turns, last["content"], "seed"))
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(f"{path}:{number}: not a chat example: {error}") from None
    return examples


def _redacted(example: Example) -> Example:
    messages = tuple({**m, "content": redact(m["content"])} for m in example.messages)
    return replace(example, messages=messages, answer=redact(example.answer))


def _labelled(
    examples: Sequence[Example], schema: Mapping[str, Any] | None, removed: Counter[str]
) -> list[Example]:
    """Examples whose answer is valid JSON for `schema`, with their label filled in."""
    if schema is None:
        return list(examples)
    validator = jsonschema.Draft202012Validator(schema)
    field = label_field(schema)
    kept = []
    for example in examples:
        try:
            value = json.loads(example.answer)
        except ValueError:
            removed["invalid_answer"] += 1
            continue
        if not validator.is_valid(value):
            removed["invalid_answer"] += 1
            continue
        label = str(value[field]) if field is not None and field in value else None
        kept.append(replace(example, label=label))
    return kept


def _deduplicated(
    examples: Sequence[Example], config: DatasetConfig, removed: Counter[str]
) -> list[Example]:
    """Highest-priority example of each exact and each near-duplicate cluster."""
    ordered = sorted(examples, key=lambda e: _PRIORITY[e.source])  # stable: input order within
    seen: set[str] = set()
    unique = []
    for example in ordered:
        key = normalise(example.text)
        if key in seen:
            removed["exact_duplicate"] += 1
            continue
        seen.add(key)
        unique.append(example)
    hasher = MinHasher(seed=config.seed)
    roots = clusters([e.text for e in unique], config.dedup_threshold, hasher)
    kept = [e for index, e in enumerate(unique) if roots[index] == index]
    removed["near_duplicate"] += len(unique) - len(kept)
    return kept


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_group(
    examples: Sequence[Example], config: DatasetConfig
) -> tuple[dict[str, list[Example]], list[int]]:
    """Splits where every group of similar examples lands whole in one split; and the groups.

    A group's split comes from a hash of its first member's text, so adding data later does not
    move the groups that were already there.
    """
    groups = clusters(
        [e.text for e in examples], config.group_threshold, MinHasher(seed=config.seed)
    )
    splits: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for index, example in enumerate(examples):
        position = _unit_hash(config.seed, normalise(examples[groups[index]].text))
        if position < config.test_fraction:
            splits["test"].append(example)
        elif position < config.test_fraction + config.validation_fraction:
            splits["validation"].append(example)
        else:
            splits["train"].append(example)
    return splits, groups


def balanced(
    examples: Sequence[Example], max_ratio: float, seed: int, removed: Counter[str]
) -> list[Example]:
    """Examples with each label's count capped at `max_ratio` x the rarest label's count."""
    counts = Counter(e.label for e in examples if e.label is not None)
    if len(counts) < 2:
        return list(examples)
    cap = int(min(counts.values()) * max_ratio)
    # Which examples of a crowded label stay is decided by a seeded hash, not by input order.
    ranked = sorted(examples, key=lambda e: _unit_hash(seed, normalise(e.text)))
    taken: Counter[str | None] = Counter()
    keep = set()
    for example in ranked:
        if example.label is None or taken[example.label] < cap:
            taken[example.label] += 1
            keep.add(id(example))
    removed["balanced_out"] += len(examples) - len(keep)
    return [e for e in examples if id(e) in keep]


def _chat_line(example: Example) -> str:
    messages = [*example.messages, {"role": "assistant", "content": example.answer}]
    fields: dict[str, Any] = {
        "messages": messages,
        "label": example.label,
        "source": example.source,
    }
    if example.review is not None:
        fields["review"] = example.review
    return json.dumps(fields, ensure_ascii=False, sort_keys=True) + "\n"


def _write_atomic(path: Path, text: str) -> str:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class DatasetInputs:
    """Where a build reads from; any of them may be absent, not all."""

    route: str
    captures: Path | None = None
    seed_file: Path | None = None
    schema: Mapping[str, Any] | None = None
    # Tenants whose traffic may not train now (the keys file's `training: deny`), on top of
    # the policy each capture recorded when it was made.
    denied_tenants: frozenset[str] = frozenset()


def _index(captures: Path, entry: DatasetEntry) -> None:
    try:
        record_dataset(captures, entry)
    except sqlite3.Error as error:
        raise DatasetError(
            f"{captures}: cannot record the dataset in the capture file ({error}); the build"
            " needs write access to it, so that deleting a tenant can list this dataset"
        ) from None


def build_dataset(inputs: DatasetInputs, out: Path, config: DatasetConfig) -> dict[str, Any]:
    """Write `out/{train,validation,test}.jsonl` and `out/dataset_card.json`; return the card."""
    examples: list[Example] = []
    sources: dict[str, Any] = {}
    skipped: Counter[str] = Counter()
    if inputs.captures is not None:
        captured = read_captures(inputs.captures, inputs.route)
        allowed, denied = allowed_for_training(captured, inputs.denied_tenants)
        judgements = latest_judgements(inputs.captures, inputs.route)
        from_capture, skipped = from_captures(allowed, config.include_approved, judgements)
        examples += from_capture
        sources["captures"] = {
            "path": str(inputs.captures),
            "records": len(captured),
            "used": dict(Counter(e.source for e in from_capture)),
            "skipped": dict(skipped),
            "training_denied": dict(sorted(denied.items())),
            "review": _review_counts(allowed, judgements, from_capture),
            "tenants": {
                tenant: {"records": records, "used": _per_tenant(from_capture).get(tenant, 0)}
                for tenant, records in sorted(
                    Counter(s.record.tenant or UNATTRIBUTED for s in allowed).items()
                )
            },
        }
    if inputs.seed_file is not None:
        seeded = from_seed_file(inputs.seed_file)
        examples += seeded
        sources["seed"] = {
            "path": str(inputs.seed_file),
            "examples": len(seeded),
            "sha256": _file_sha256(inputs.seed_file),
        }
    if not examples:
        raise DatasetError(f"route {inputs.route}: no usable examples in the given sources")

    removed: Counter[str] = Counter()
    if config.redact_pii:
        examples = [_redacted(e) for e in examples]
    examples = _labelled(examples, inputs.schema, removed)
    examples = _deduplicated(examples, config, removed)
    splits, groups = split_by_group(examples, config)
    if config.balance_labels:
        splits["train"] = balanced(splits["train"], config.max_label_ratio, config.seed, removed)
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise DatasetError(
            f"route {inputs.route}: {len(examples)} examples in {len(set(groups))} groups leave"
            f" {', '.join(empty)} empty; add data or change the fractions"
        )

    split_cards: dict[str, dict[str, Any]] = {}
    texts = {name: "".join(map(_chat_line, splits[name])) for name in SPLITS}
    digests = []
    for name in SPLITS:
        digest = hashlib.sha256(texts[name].encode()).hexdigest()
        split_cards[name] = {
            "examples": len(splits[name]),
            "labels": dict(sorted(Counter(e.label for e in splits[name] if e.label).items())),
            "sources": dict(sorted(Counter(e.source for e in splits[name]).items())),
            "tenants": _per_tenant(splits[name]),
            "reviewed": sum(e.review is not None for e in splits[name]),
            "sha256": digest,
        }
        digests.append(digest)
    schema_text = json.dumps(inputs.schema, sort_keys=True) if inputs.schema is not None else None
    card: dict[str, Any] = {
        "route": inputs.route,
        "created_at": time.time(),
        "config": config.model_dump(),
        "schema_sha256": hashlib.sha256(schema_text.encode()).hexdigest() if schema_text else None,
        "label_field": label_field(inputs.schema) if inputs.schema is not None else None,
        "sources": sources,
        "removed": dict(sorted(removed.items())),
        "groups": len(set(groups)),
        "splits": split_cards,
        # Whose captured traffic each example of the dataset came from, for provenance.
        "tenants": _per_tenant(e for name in SPLITS for e in splits[name]),
        "sha256": hashlib.sha256("".join(digests).encode()).hexdigest(),
    }
    if inputs.captures is not None:
        # Indexed before any file is written: no dataset exists that a tenant deletion would
        # not list.
        _index(
            inputs.captures,
            DatasetEntry(
                path=str(out.resolve()),
                route=inputs.route,
                created_at=card["created_at"],
                sha256=card["sha256"],
                tenants=card["tenants"],
            ),
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write_atomic(out / f"{name}.jsonl", texts[name])
    _write_atomic(out / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def read_split(folder: Path, split: str) -> list[dict[str, Any]]:
    """The chat examples of one split, as written by `build_dataset`."""
    lines = (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]

"""Dataset building: sources, redaction, deduplication, grouped splits, balance, the card."""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path

import pytest

from training.capture import CaptureRecord, CaptureSettings, SqliteCaptureSink
from training.dataset import (
    CARD_FILE,
    SPLITS,
    DatasetConfig,
    DatasetError,
    DatasetInputs,
    build_dataset,
    read_split,
)
from training.minhash import MinHasher, clusters, estimated_similarity, jaccard, shingles
from training.tickets import (
    ROUTE,
    SCHEMA,
    Ticket,
    answer,
    generate_tickets,
    prompt_messages,
    write_seed_file,
)


def _seed(tmp_path: Path, tickets: list[Ticket]) -> Path:
    path = tmp_path / "seed.jsonl"
    write_seed_file(path, tickets)
    return path


def _user_texts(folder: Path, split: str) -> list[str]:
    return [e["messages"][-2]["content"] for e in read_split(folder, split)]


def _jaccard(left: str, right: str) -> float:
    return jaccard(shingles(left), shingles(right))


def test_minhash_estimates_track_the_true_jaccard_similarity() -> None:
    rng = random.Random(3)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choices(words, k=12)) for _ in range(30)]
    texts += [t + " extra" for t in texts[:10]]
    signatures = MinHasher().signatures(texts)
    for left in range(len(texts)):
        for right in range(left + 1, len(texts)):
            estimate = estimated_similarity(signatures[left], signatures[right])
            assert abs(estimate - _jaccard(texts[left], texts[right])) < 0.15
    # Every text with an appended word is found next to its original.
    roots = clusters(texts, threshold=0.6)
    assert all(roots[30 + i] == roots[i] for i in range(10))


def test_exact_and_near_duplicates_are_removed_and_a_correction_wins(tmp_path: Path) -> None:
    tickets = generate_tickets(300, seed=5, resend_rate=0.0)
    resent = [Ticket(t.text, t.label) for t in tickets[:20]]
    edited = [Ticket(t.text.rstrip(".!?") + "!!", t.label) for t in tickets[20:40]]
    captures = tmp_path / "captures.db"
    sink = SqliteCaptureSink(CaptureSettings(path=str(captures), flush_interval_s=0.02))
    # A reviewer says the first seed ticket's label is wrong.
    fixed_label = next(label for label in ("billing", "bug") if label != tickets[0].label)
    sink.offer(
        CaptureRecord(
            request_id="r0",
            route=ROUTE,
            version=f"{ROUTE}@v1",
            arm="stable",
            created_at=time.time(),
            endpoint="chat",
            messages=tuple(prompt_messages(tickets[0].text)),
            output="not json",
            finish_reason="stop",
            schema_verdict="invalid",
        )
    )
    sink.add_feedback("r0", rating=-1, correction=answer(fixed_label))
    sink.close()
    config = DatasetConfig(dedup_threshold=0.8, group_threshold=0.5, balance_labels=False)
    seed = _seed(tmp_path, tickets + resent + edited)
    out = tmp_path / "ds"
    card = build_dataset(DatasetInputs(ROUTE, captures, seed, SCHEMA), out, config)

    everything = [text for split in SPLITS for text in _user_texts(out, split)]
    assert len(everything) == len({text.lower() for text in everything})
    assert card["removed"]["exact_duplicate"] == 21  # 20 resent + the corrected seed ticket
    clear_copies = sum(
        _jaccard(a.text, b.text) >= 0.9 for a, b in zip(tickets[20:40], edited, strict=True)
    )
    assert card["removed"]["near_duplicate"] >= clear_copies > 0
    for i, left in enumerate(everything):
        assert all(_jaccard(left, right) < 0.9 for right in everything[i + 1 :])
    kept = [
        e
        for s in SPLITS
        for e in read_split(out, s)
        if e["messages"][-2]["content"] == tickets[0].text
    ]
    assert [(e["label"], e["source"]) for e in kept] == [(fixed_label, "correction")]


def test_similar_examples_never_straddle_two_splits(tmp_path: Path) -> None:
    rng = random.Random(7)
    base = generate_tickets(200, seed=9, resend_rate=0.0)
    # Families of similar tickets: the same words with one more or one fewer.
    family = [
        Ticket(f"{t.text.rstrip('.!?')} {rng.choice(['again', 'now', 'today'])}.", t.label)
        for t in base
        for _ in range(2)
    ]
    out = tmp_path / "ds"
    config = DatasetConfig(dedup_threshold=0.95, group_threshold=0.6, balance_labels=False)
    build_dataset(DatasetInputs(ROUTE, None, _seed(tmp_path, base + family), SCHEMA), out, config)
    texts = {split: _user_texts(out, split) for split in SPLITS}
    for first in SPLITS:
        for second in SPLITS:
            if first < second:
                worst = max(_jaccard(a, b) for a in texts[first] for b in texts[second])
                assert worst < 0.6, (first, second, worst)


def test_the_training_split_is_balanced_and_the_card_adds_up(tmp_path: Path) -> None:
    rng = random.Random(1)
    tickets = [t for t in generate_tickets(900, seed=2, resend_rate=0.0)]
    # Make billing three times as common as the others.
    tickets = [t for t in tickets if t.label == "billing" or rng.random() < 0.34]
    tickets.append(Ticket("broken answer", "bug"))
    seed = _seed(tmp_path, tickets)
    with seed.open("a") as extra:  # an answer that breaks the schema
        messages = [*prompt_messages("refund now"), {"role": "assistant", "content": "billing"}]
        extra.write(json.dumps({"messages": messages}) + "\n")
    out = tmp_path / "ds"
    card = build_dataset(DatasetInputs(ROUTE, None, seed, SCHEMA), out, DatasetConfig())

    train_labels = card["splits"]["train"]["labels"]
    assert len(set(train_labels.values())) == 1
    assert card["removed"]["invalid_answer"] == 1
    on_disk = json.loads((out / CARD_FILE).read_text())
    assert on_disk["sha256"] == card["sha256"]
    for split in SPLITS:
        data = (out / f"{split}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == card["splits"][split]["sha256"]
        assert len(read_split(out, split)) == card["splits"][split]["examples"]
    total = sum(card["splits"][s]["examples"] for s in SPLITS) + sum(card["removed"].values())
    assert total == card["sources"]["seed"]["examples"]


def test_personal_data_in_seed_files_is_redacted(tmp_path: Path) -> None:
    tickets = generate_tickets(200, seed=4, resend_rate=0.0)
    tickets[0] = Ticket("Refund to card 4111 1111 1111 1111, mail me at bo@example.org", "billing")
    out = tmp_path / "ds"
    build_dataset(
        DatasetInputs(ROUTE, None, _seed(tmp_path, tickets), SCHEMA), out, DatasetConfig()
    )
    written = "".join((out / f"{s}.jsonl").read_text() for s in SPLITS)
    assert "4111" not in written
    assert "bo@example.org" not in written
    assert "Refund to card [CARD], mail me at [EMAIL]" in written


def test_the_same_inputs_build_the_same_dataset(tmp_path: Path) -> None:
    seed = _seed(tmp_path, generate_tickets(300, seed=8))
    first = build_dataset(DatasetInputs(ROUTE, None, seed, SCHEMA), tmp_path / "a", DatasetConfig())
    second = build_dataset(
        DatasetInputs(ROUTE, None, seed, SCHEMA), tmp_path / "b", DatasetConfig()
    )
    assert first["sha256"] == second["sha256"]


def test_too_little_data_is_an_error_that_says_why(tmp_path: Path) -> None:
    seed = _seed(tmp_path, generate_tickets(2, seed=1, resend_rate=0.0))
    with pytest.raises(DatasetError, match="empty"):
        build_dataset(DatasetInputs(ROUTE, None, seed, SCHEMA), tmp_path / "ds", DatasetConfig())


def test_a_tenant_denied_now_or_when_captured_gives_no_examples_and_the_card_counts_tenants(
    tmp_path: Path,
) -> None:
    from training.capture_store import connect, datasets_with_tenant

    captures = tmp_path / "captures.db"
    sink = SqliteCaptureSink(CaptureSettings(path=str(captures), flush_interval_s=0.02))
    tickets = generate_tickets(30, seed=21, resend_rate=0.0)
    # acme allowed training when captured; globex denied it; initech had no tenant (no auth).
    owners = [("acme", "allow"), ("globex", "deny"), (None, "allow")]
    for index, ticket in enumerate(tickets):
        tenant, policy = owners[index % 3]
        sink.offer(
            CaptureRecord(
                request_id=f"r{index}",
                route=ROUTE,
                version=f"{ROUTE}@v1",
                arm="stable",
                created_at=time.time(),
                endpoint="chat",
                messages=tuple(prompt_messages(ticket.text)),
                output="not json",
                finish_reason="stop",
                schema_verdict="invalid",
                tenant=tenant,
                training=policy,  # type: ignore[arg-type]
            )
        )
        sink.add_feedback(f"r{index}", rating=-1, correction=answer(ticket.label))
    sink.close()
    seed = _seed(tmp_path, generate_tickets(200, seed=22, resend_rate=0.0))
    config = DatasetConfig(balance_labels=False)

    card = build_dataset(DatasetInputs(ROUTE, captures, seed, SCHEMA), tmp_path / "a", config)
    assert card["tenants"] == {"(unattributed)": 10, "acme": 10}
    assert card["sources"]["captures"]["training_denied"] == {"globex": 10}
    assert card["sources"]["captures"]["tenants"]["acme"] == {"records": 10, "used": 10}

    # acme says `deny` now (the keys file): its earlier captures leave the next dataset too.
    later = DatasetInputs(ROUTE, captures, seed, SCHEMA, denied_tenants=frozenset({"acme"}))
    card = build_dataset(later, tmp_path / "b", config)
    assert card["tenants"] == {"(unattributed)": 10}
    assert card["sources"]["captures"]["training_denied"] == {"acme": 10, "globex": 10}
    from training.redaction import redact

    texts = {t for s in SPLITS for t in _user_texts(tmp_path / "b", s)}
    assert not texts & {redact(t.text) for i, t in enumerate(tickets) if i % 3 != 2}
    assert texts >= {redact(t.text) for i, t in enumerate(tickets) if i % 3 == 2}

    # The capture file lists the datasets each tenant is in.
    connection = connect(captures)
    try:
        assert [e.path for e in datasets_with_tenant(connection, "acme")] == [
            str((tmp_path / "a").resolve())
        ]
        assert datasets_with_tenant(connection, "globex") == []
    finally:
        connection.close()

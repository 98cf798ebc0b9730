"""The review queue: what the capture writer queues, the order reviewers get it, the budget,
redaction, restarts, tenant deletion, and the Wilson interval of the share judged bad."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from training.capture import CapturePolicy, CaptureRecord, CaptureSettings, SqliteCaptureSink
from training.capture_store import connect, delete_tenant
from training.review.policy import ReviewPolicy, sample_bucket
from training.review.stats import wilson
from training.review.store import ReviewQueue, latest_judgements

ROOT = Path(__file__).resolve().parents[2]


def _answer(
    request_id: str,
    *,
    version: str = "triage@v1",
    arm: str = "stable",
    verdict: str = "valid",
    refusal: bool | None = False,
    drifted: bool = False,
    content: str = "my ticket",
    tenant: str | None = None,
) -> CaptureRecord:
    return CaptureRecord(
        request_id=request_id,
        route="triage",
        version=version,
        arm=arm,
        created_at=1_700_000_000.0,
        endpoint="chat",
        messages=({"role": "user", "content": content},),
        output='{"label": "billing"}',
        finish_reason="stop",
        schema_verdict=verdict,  # type: ignore[arg-type]
        refusal=refusal,
        drifted=drifted,
        tenant=tenant,
    )


def _sink(path: Path, policy: ReviewPolicy, **capture: object) -> SqliteCaptureSink:
    settings = CaptureSettings(
        path=str(path), flush_interval_s=0.01, default=CapturePolicy(**capture)
    )
    return SqliteCaptureSink(settings, review={"triage": policy})


def _ids_with_bucket(low: float, high: float, count: int, prefix: str = "r") -> list[str]:
    found, n = [], 0
    while len(found) < count:
        candidate = f"{prefix}-{n}"
        if low <= sample_bucket(candidate) < high:
            found.append(candidate)
        n += 1
    return found


def _drain(queue: ReviewQueue, route: str | None = "triage") -> list[str]:
    seen = []
    while (item := queue.next_item(route)) is not None:
        seen.append(item.request_id)
        queue.judge(item, "good", "correct", None, "reviewer:test")
    return seen


def test_every_flagged_answer_and_only_the_sampled_share_of_ordinary_ones_is_queued(
    tmp_path: Path,
) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=0.5), success_sample_rate=1.0)
    sampled = _ids_with_bucket(0.0, 0.5, 3, "in")
    unsampled = _ids_with_bucket(0.5, 1.0, 3, "out")
    for request_id in sampled + unsampled:
        sink.offer(_answer(request_id))
    flagged = {
        "bad-schema": _answer("bad-schema", verdict="invalid"),
        "refused": _answer("refused", refusal=True),
        "drifted": _answer("drifted", drifted=True),
    }
    # Flagged answers are queued whatever their hash says.
    for record in flagged.values():
        sink.offer(record)
    sink.close()
    sink = _sink(db, ReviewPolicy(sample_rate=0.5), success_sample_rate=1.0)
    future = sink.add_feedback(unsampled[0], -1)
    sink.close()
    assert future.result(5) == "written"

    queue = ReviewQueue(db)
    queued = {}
    while (item := queue.next_item("triage")) is not None:
        queued[item.request_id] = item.reason
        queue.judge(item, "good", None, None, "reviewer:test")
    assert queued == {
        **dict.fromkeys(sampled, "sampled"),
        "bad-schema": "schema_invalid",
        "refused": "refused",
        "drifted": "drifted",
        unsampled[0]: "negative_feedback",
    }


def test_flagged_items_come_first_and_strata_take_turns(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0)
    for n in range(3):
        sink.offer(_answer(f"stable-{n}"))
    sink.offer(_answer("stable-flagged", verdict="invalid"))
    for n in range(2):
        sink.offer(_answer(f"cand-{n}", version="triage@v2", arm="candidate"))
    sink.close()
    order = _drain(ReviewQueue(db))
    # The stratum with the fewest judgements goes next; flagged before sampled within it.
    assert order[:2] == ["stable-flagged", "cand-0"]
    assert order[2:4] == ["stable-0", "cand-1"]
    assert order[4:] == ["stable-1", "stable-2"]


def test_the_budget_caps_unjudged_items_per_stratum_and_counts_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"

    def over_budget() -> float:
        value = REGISTRY.get_sample_value(
            "turnout_review_items_total",
            {"route": "triage", "version": "triage@v9", "arm": "stable", "result": "over_budget"},
        )
        return value or 0.0

    before = over_budget()
    sink = _sink(db, ReviewPolicy(sample_rate=1.0, budget=2), success_sample_rate=1.0)
    for n in range(5):
        sink.offer(_answer(f"b-{n}", version="triage@v9", verdict="invalid"))
    sink.close()
    queue = ReviewQueue(db)
    assert queue.depths() == {("triage", "triage@v9", "stable"): 2}
    assert over_budget() - before == 3
    assert REGISTRY.get_sample_value(
        "turnout_review_queue_depth", {"route": "triage", "version": "triage@v9", "arm": "stable"}
    ) == pytest.approx(2)


def test_the_queue_and_judgements_survive_a_restart_and_skips_go_last(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0)
    for n in range(3):
        sink.offer(_answer(f"s-{n}"))
    sink.close()
    queue = ReviewQueue(db)
    first = queue.next_item()
    assert first is not None
    queue.skip(first)
    second = queue.next_item()
    assert second is not None
    assert second.request_id != first.request_id
    queue.judge(second, "bad", "wrong_answer", '{"label": "technical"}', "reviewer:ann")
    queue.close()

    reopened = ReviewQueue(db)  # a new process: nothing but the file
    assert reopened.item(second.id).judgement.verdict == "bad"  # type: ignore[union-attr]
    remaining = _drain(reopened)
    assert remaining[-1] == first.request_id
    judged = latest_judgements(db, "triage")
    assert judged[second.request_id].correction == '{"label": "technical"}'
    assert judged[second.request_id].reviewer == "reviewer:ann"


def test_items_show_the_redacted_text_the_capture_wrote(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0, redact_pii=True)
    sink.offer(_answer("pii", content="mail me at ann@example.com"))
    sink.close()
    item = ReviewQueue(db).next_item()
    assert item is not None
    assert item.messages == [{"role": "user", "content": "mail me at [EMAIL]"}]
    assert "ann@example.com" not in db.read_bytes().decode("latin-1")


def test_deleting_a_tenant_deletes_its_review_items_and_corrections(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0)
    sink.offer(_answer("acme-1", tenant="acme"))
    sink.offer(_answer("other-1", tenant="other"))
    sink.close()
    queue = ReviewQueue(db)
    for item_id in (1, 2):
        item = queue.item(item_id)
        assert item is not None
        queue.judge(item, "bad", "other", '{"label": "secret fix"}', "reviewer:ann")
    connection = connect(db)
    delete_tenant(connection, "acme", "admin:ops")
    rows = connection.execute("SELECT request_id FROM review_judgements").fetchall()
    items = connection.execute("SELECT request_id FROM review_items").fetchall()
    connection.close()
    assert rows == [("other-1",)]
    assert items == [("other-1",)]


def test_the_retention_purge_deletes_the_review_rows_of_purged_captures(tmp_path: Path) -> None:
    from training.capture_store import purge_older_than

    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0)
    sink.offer(_answer("old"))
    sink.offer(replace(_answer("new"), created_at=1_800_000_000.0))
    sink.close()
    queue = ReviewQueue(db)
    for item_id in (1, 2):
        item = queue.item(item_id)
        assert item is not None
        queue.judge(item, "bad", "other", '{"label": "fix"}', "reviewer:ann")
    connection = connect(db)
    assert purge_older_than(connection, 1_750_000_000.0) == (1, 0)
    judged = connection.execute("SELECT request_id FROM review_judgements").fetchall()
    connection.close()
    assert judged == [("new",)]
    assert queue.item(1) is None


def test_a_killed_writer_leaves_a_review_item_for_every_capture_it_committed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "captures.db"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.training.capture_writer", str(db), "1000", "64"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TURNOUT_TEST_REVIEW": "1"},
    )
    assert writer.stdout is not None
    written, deadline = 0, time.monotonic() + 60
    while written < 2000:
        assert time.monotonic() < deadline, "the writer made no progress"
        line = writer.stdout.readline()
        assert line, "the writer exited early"
        written = json.loads(line)["written"]
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=10)
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        captured = {row[0] for row in connection.execute("SELECT request_id FROM captures")}
        queued = {row[0] for row in connection.execute("SELECT request_id FROM review_items")}
    # Items are written in their captures' transactions: all of a batch or none of it.
    assert len(captured) >= 2000
    assert queued == captured


def test_a_capture_file_from_before_the_queue_reads_as_no_judgements(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(db).execute("CREATE TABLE captures (request_id TEXT)").connection.commit()
    assert latest_judgements(db) == {}


@pytest.mark.parametrize(
    ("bad", "n", "low", "high"),
    # Reference values: Wilson score interval, z = 1.96 (e.g. Newcombe 1998, table I).
    [
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (3, 10, 0.1078, 0.6032),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_the_wilson_interval_matches_reference_values(
    bad: int, n: int, low: float, high: float
) -> None:
    share = wilson(bad, n)
    assert share.low == pytest.approx(low, abs=1e-4)
    assert share.high == pytest.approx(high, abs=1e-4)
    assert wilson(0, 0).share is None


def test_items_are_json_ready(tmp_path: Path) -> None:
    db = tmp_path / "captures.db"
    sink = _sink(db, ReviewPolicy(sample_rate=1.0), success_sample_rate=1.0)
    sink.offer(_answer("j-1", verdict="invalid"))
    sink.close()
    item = ReviewQueue(db).next_item()
    assert item is not None
    view = json.loads(json.dumps(item.as_dict()))
    assert view["flags"] == ["schema_invalid"]
    assert view["second_answer"] is None


def test_review_corrections_enter_the_dataset_with_provenance_and_bad_answers_stay_out(
    tmp_path: Path,
) -> None:
    from training.dataset import SPLITS, DatasetConfig, DatasetInputs, build_dataset, read_split
    from training.tickets import (
        ROUTE,
        SCHEMA,
        answer,
        generate_tickets,
        prompt_messages,
        write_seed_file,
    )

    db = tmp_path / "captures.db"
    sink = SqliteCaptureSink(
        CaptureSettings(path=str(db), flush_interval_s=0.01),
        review={ROUTE: ReviewPolicy(sample_rate=1.0)},
    )
    tickets = generate_tickets(6, seed=31, resend_rate=0.0)
    for index, ticket in enumerate(tickets):
        sink.offer(
            CaptureRecord(
                request_id=f"t{index}",
                route=ROUTE,
                version=f"{ROUTE}@v2",
                arm="candidate",
                created_at=1_700_000_000.0,
                endpoint="chat",
                messages=tuple(prompt_messages(ticket.text)),
                output=answer("other" if ticket.label != "other" else "billing"),
                finish_reason="stop",
                schema_verdict="valid",
            )
        )
    # A user liked t1's answer; the reviewer's "bad" outranks it.
    sink.add_feedback("t1", rating=1)
    sink.close()
    queue = ReviewQueue(db)
    items = {}
    while (item := queue.next_item(ROUTE)) is not None:
        items[item.request_id] = item
        if item.request_id == "t0":
            queue.judge(item, "bad", "wrong_answer", answer(tickets[0].label), "reviewer:ann")
        elif item.request_id == "t1":
            queue.judge(item, "bad", "wrong_answer", None, "reviewer:ann")
        else:
            queue.judge(item, "good", "correct", None, "admin:ops")
    seed = tmp_path / "seed.jsonl"
    write_seed_file(seed, generate_tickets(200, seed=32, resend_rate=0.0))

    out = tmp_path / "ds"
    card = build_dataset(
        DatasetInputs(ROUTE, db, seed, SCHEMA), out, DatasetConfig(balance_labels=False)
    )
    review = card["sources"]["captures"]["review"]
    assert review == {
        "judged": 6,
        "judged_bad": 2,
        "corrections": 1,
        "approved": 4,
        "reviewers": {"admin:ops": 4, "reviewer:ann": 2},
    }
    lines = [line for name in SPLITS for line in read_split(out, name)]
    # Reviewed examples that survive deduplication (a seed example outranks an approval).
    reviewed = [line for line in lines if "review" in line]
    assert sum(card["splits"][name]["reviewed"] for name in SPLITS) == len(reviewed) >= 1
    corrected = [line for line in lines if line.get("review", {}).get("request_id") == "t0"]
    assert len(corrected) == 1
    assert corrected[0]["messages"][-1]["content"] == answer(tickets[0].label)
    assert corrected[0]["source"] == "correction"
    provenance = corrected[0]["review"]
    assert provenance["reviewer"] == "reviewer:ann"
    assert provenance["version"] == f"{ROUTE}@v2"
    assert provenance["judged_at"] > 1_700_000_000
    assert not [line for line in lines if line.get("review", {}).get("request_id") == "t1"]


def _pair(stable: CaptureRecord, output: str, *flags: str) -> CaptureRecord:
    """The candidate's answer to `stable`'s request, as the shadow recorder offers it."""
    return replace(
        stable, version="triage@v2", arm="shadow", output=output, stable=stable, pair_flags=flags
    )


def test_shadow_pairs_are_queued_with_both_answers_flagged_always_sampled_by_rate(
    tmp_path: Path,
) -> None:
    db = tmp_path / "captures.db"
    # Nothing is captured for its own sake: only what review selects reaches the file.
    sink = _sink(db, ReviewPolicy(sample_rate=0.5, budget=3), success_sample_rate=0.0)
    sampled, unsampled = _ids_with_bucket(0, 0.5, 2, "in"), _ids_with_bucket(0.5, 1, 5, "out")
    worse = _answer(unsampled[0])
    disagreed = _answer(unsampled[1])
    ordinary = _answer(unsampled[2])
    refused_alone = _answer(unsampled[3])
    over_budget = _answer(unsampled[4])
    # A sampled stable answer is queued by itself first; its pair joins the same item.
    joined = _answer(sampled[0])
    sink.offer(joined)
    sink.offer(_pair(joined, '{"label": "billing"}'))
    # A flagged pair whose stable answer was not captured (yet): the pair writes it, and the
    # stable record arriving later is not written twice.
    sink.offer(_pair(worse, "I can't help with that.", "candidate_worse"))
    sink.offer(worse)
    sink.offer(_pair(disagreed, '{"label": "technical"}', "disagreed"))
    sink.offer(_pair(ordinary, '{"label": "billing"}'))  # outside the sample, not flagged
    # A shadow answer that refused on its own is never an item of its own.
    sink.offer(replace(refused_alone, version="triage@v2", arm="shadow", refusal=True))
    sink.offer(_pair(over_budget, "{}", "disagreed"))  # the stratum holds 3 unjudged items
    sink.close()

    queue = ReviewQueue(db)  # a new process: nothing but the file
    items = {}
    while (item := queue.next_item()) is not None:
        items[item.request_id] = item
        queue.judge(item, "good", None, '{"label": "refund"}', "reviewer:test")
    assert set(items) == {joined.request_id, worse.request_id, disagreed.request_id}
    assert {rid: (i.reason, i.flags) for rid, i in items.items()} == {
        joined.request_id: ("sampled", ()),
        worse.request_id: ("candidate_worse", ("candidate_worse",)),
        disagreed.request_id: ("disagreed", ("disagreed",)),
    }
    assert {rid: (i.arm, i.version, i.answer) for rid, i in items.items()} == {
        rid: ("stable", "triage@v1", '{"label": "billing"}') for rid in items
    }
    assert {rid: (i.second_answer, i.second_version) for rid, i in items.items()} == {
        joined.request_id: ('{"label": "billing"}', "triage@v2"),
        worse.request_id: ("I can't help with that.", "triage@v2"),
        disagreed.request_id: ('{"label": "technical"}', "triage@v2"),
    }
    assert items[worse.request_id].as_dict()["second_answer"] == "I can't help with that."
    # Each queued pair's two answers once; the pair over budget keeps only the candidate's
    # answer (offered for review); the ordinary pair nothing; a refusal is captured as a failure.
    rows = connect(db).execute("SELECT request_id, arm FROM captures").fetchall()
    assert sorted(rows) == sorted(
        [(r.request_id, arm) for r in (joined, worse, disagreed) for arm in ("stable", "shadow")]
        + [(over_budget.request_id, "shadow"), (refused_alone.request_id, "shadow")]
    )
    # A judgement is of the answer its item showed: the stable one, not the candidate's.
    from training.capture import read_captures
    from training.dataset import from_captures

    examples, _ = from_captures(read_captures(db), False, latest_judgements(db))
    assert sorted(e.review["arm"] for e in examples if e.review) == ["stable"] * 3

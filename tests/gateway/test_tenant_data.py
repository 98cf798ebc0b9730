"""The flywheel's data belongs to a tenant, through the gateway with two tenants (alice: training
allowed, bob: denied) in front of an upstream whose answers do not matter here (who sent the
request does): built in-process over the in-memory upstream for feedback, ids and datasets; as
a process in front of the instant stub where a tenant's deletion and retention must survive a
restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.registry import AdapterRegistry
from adapters.synthetic import synthetic_base_profile, write_zero_adapter
from adapters.validate import AdapterLimits
from gateway.protection.auth import hash_api_key, issue_key
from tests.support.demo import gateway_config
from tests.support.inprocess import InProcessGateway, in_process_gateway
from tests.support.processes import running_gateway, stub_upstream
from tests.support.waiting import wait_until
from training.capture import StoredCapture, read_captures
from training.capture_store import read_deletions
from training.dataset import SPLITS, read_split
from training.provenance import provenance
from training.tickets import generate_tickets, write_seed_file

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "tk-tenant-data-admin"


@dataclass(frozen=True)
class Setup:
    folder: Path
    keys_file: Path
    captures: Path
    alice: str
    bob: str
    carol: str  # a tenant with a budget of 3 requests a minute

    def config(self, upstream: str, **capture: Any) -> dict[str, Any]:
        admins = self.folder / "admins.yaml"
        admins.write_text(
            yaml.safe_dump({"admins": {"ops": [{"sha256": hash_api_key(ADMIN_KEY)}]}})
        )
        return gateway_config(
            [upstream],
            auth={"keys_file": str(self.keys_file), "admin_keys_file": str(admins)},
            state={"dir": str(self.folder / "state")},
            capture={
                "path": str(self.captures),
                "flush_interval_s": 0.05,
                "feedback_max_bytes": 4096,
                "default": {"success_sample_rate": 1.0, "redact_pii": False},
                **capture,
            },
        )


def _setup(folder: Path) -> Setup:
    alice, bob, carol = issue_key(), issue_key(), issue_key()
    keys = {
        "training": "allow",
        "tenants": {
            "alice": {"routes": ["*"], "keys": [{"sha256": alice.sha256}]},
            "bob": {"routes": ["*"], "keys": [{"sha256": bob.sha256}], "training": "deny"},
            "carol": {
                "routes": ["*"],
                "keys": [{"sha256": carol.sha256}],
                "limits": {"requests_per_minute": 3},
            },
        },
    }
    keys_file = folder / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(keys))
    return Setup(folder, keys_file, folder / "captures.db", alice.key, bob.key, carol.key)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with stub_upstream() as origin:
        yield origin


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Setup, InProcessGateway]]:
    setup = _setup(tmp_path_factory.mktemp("tenants"))
    with in_process_gateway(setup.config("http://upstream.test"), setup.folder) as gateway:
        yield setup, gateway


Gateway = InProcessGateway | str  # in-process, or a gateway process's origin


def _post(
    gateway: Gateway, path: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    if isinstance(gateway, str):
        return httpx.post(f"{gateway}{path}", json=body, headers=headers, timeout=30)
    return gateway.client.post(path, json=body, headers=headers, timeout=30)


def chat(
    origin: Gateway, key: str | None, text: str, client_id: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if client_id is not None:
        headers["x-request-id"] = client_id
    body = {"model": "chat", "messages": [{"role": "user", "content": text}], "max_tokens": 8}
    response = _post(origin, "/v1/chat/completions", body, headers)
    assert response.status_code == 200, response.text
    return response


def feedback(
    origin: Gateway, key: str | None, request_id: str, rating: int, correction: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body: dict[str, Any] = {"request_id": request_id, "rating": rating}
    if correction is not None:
        body["correction"] = correction
    return _post(origin, "/v1/feedback", body, headers)


def captured(db: Path, gateway_id: str) -> StoredCapture:
    """The capture of one request, once the writer has it on disk."""
    found: list[StoredCapture] = []

    def landed() -> bool:
        found[:] = [s for s in read_captures(db) if s.record.request_id == gateway_id]
        return bool(found)

    wait_until(landed, 10, f"the capture of {gateway_id}")
    return found[0]


def feedback_rows(db: Path) -> list[tuple[str, str | None, str | None]]:
    with sqlite3.connect(db) as connection:
        rows: list[tuple[str, str | None, str | None]] = connection.execute(
            "SELECT request_id, tenant, correction FROM feedback ORDER BY seq"
        ).fetchall()
    return rows


def test_another_tenants_request_is_404_like_an_unknown_one_and_nothing_is_written(
    shared: tuple[Setup, InProcessGateway],
) -> None:
    setup, origin = shared
    answer = chat(origin, setup.alice, "alice asks about her invoice", "probe-shared-1")
    assert answer.headers["x-request-id"] == "probe-shared-1"  # echoed as before
    gateway_id = answer.headers["x-turnout-request-id"]
    record = captured(setup.captures, gateway_id).record
    assert (record.tenant, record.client_request_id) == ("alice", "probe-shared-1")
    before = feedback_rows(setup.captures)

    refusals = [
        feedback(origin, setup.bob, "probe-shared-1", -1, "poisoned"),
        feedback(origin, setup.bob, gateway_id, -1, "poisoned"),
        feedback(origin, setup.bob, "never-sent-by-anyone", -1, "poisoned"),
    ]
    asked = ["probe-shared-1", gateway_id, "never-sent-by-anyone"]
    for refused in refusals:
        assert refused.status_code == 404, refused.text
    # The same answer whether the id exists elsewhere or nowhere (but for the id itself).
    errors = [r.text.replace(a, "ID") for r, a in zip(refusals, asked, strict=True)]
    assert errors[0] == errors[1] == errors[2]
    assert refusals[0].json()["error"]["code"] == "not_found"
    assert feedback_rows(setup.captures) == before
    assert feedback(origin, None, gateway_id, -1).status_code == 401

    own = feedback(origin, setup.alice, "probe-shared-1", -1, '{"fixed": true}')
    assert own.status_code == 200, own.text
    assert own.json() == {
        "object": "turnout.feedback",
        "request_id": "probe-shared-1",
        "status": "recorded",
    }
    assert feedback_rows(setup.captures)[len(before) :] == [
        (gateway_id, "alice", '{"fixed": true}')
    ]
    # A reviewer with an admin key may rate any tenant's answer.
    assert feedback(origin, ADMIN_KEY, gateway_id, 1).status_code == 200
    assert captured(setup.captures, gateway_id).rating == 1


def test_the_same_client_request_id_from_two_tenants_stays_two_records(
    shared: tuple[Setup, InProcessGateway],
) -> None:
    setup, origin = shared
    from_alice = chat(origin, setup.alice, "alice: reset my password", "dup-1")
    from_bob = chat(origin, setup.bob, "bob: where is my parcel", "dup-1")
    assert from_alice.headers["x-request-id"] == from_bob.headers["x-request-id"] == "dup-1"
    alice_id = from_alice.headers["x-turnout-request-id"]
    bob_id = from_bob.headers["x-turnout-request-id"]
    assert alice_id != bob_id
    alice_record = captured(setup.captures, alice_id).record
    bob_record = captured(setup.captures, bob_id).record
    assert (alice_record.tenant, alice_record.training) == ("alice", "allow")
    assert (bob_record.tenant, bob_record.training) == ("bob", "deny")
    assert alice_record.messages is not None
    assert bob_record.messages is not None
    assert alice_record.messages[0]["content"].startswith("alice")
    assert bob_record.messages[0]["content"].startswith("bob")

    # Each tenant's feedback by the shared client id lands on its own request.
    assert feedback(origin, setup.alice, "dup-1", -1, "alice's fix").status_code == 200
    assert feedback(origin, setup.bob, "dup-1", -1, "bob's fix").status_code == 200
    assert captured(setup.captures, alice_id).correction == "alice's fix"
    assert captured(setup.captures, bob_id).correction == "bob's fix"
    # An admin must use the gateway's id when a client id is ambiguous.
    ambiguous = feedback(origin, ADMIN_KEY, "dup-1", 1)
    assert ambiguous.status_code == 409
    assert ambiguous.json()["error"]["code"] == "ambiguous_request_id"
    assert feedback(origin, ADMIN_KEY, bob_id, 1).status_code == 200


def test_feedback_is_bounded_in_size_and_charged_to_the_tenants_budget(
    shared: tuple[Setup, InProcessGateway],
) -> None:
    setup, origin = shared
    gateway_id = chat(origin, setup.alice, "alice: big correction").headers["x-turnout-request-id"]
    captured(setup.captures, gateway_id)
    too_big = feedback(origin, setup.alice, gateway_id, -1, "x" * 5000)
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "request_too_large"

    # carol may send 3 requests a minute: one answer and two pieces of feedback use them up.
    carol_id = chat(origin, setup.carol, "carol asks").headers["x-turnout-request-id"]
    captured(setup.captures, carol_id)
    assert feedback(origin, setup.carol, carol_id, 1).status_code == 200
    assert feedback(origin, setup.carol, carol_id, -1).status_code == 200
    limited = feedback(origin, setup.carol, carol_id, -1, "one too many")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) >= 1
    assert [row for row in feedback_rows(setup.captures) if row[0] == carol_id] == [
        (carol_id, "carol", None),
        (carol_id, "carol", None),
    ]


def _turnout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _seed_file(path: Path) -> Path:
    write_seed_file(path, generate_tickets(200, seed=3, resend_rate=0.0))
    return path


def _questions(tenant: str, count: int, seed: int) -> list[str]:
    """Distinct questions (no two near-duplicates), marked with who asks."""
    return [f"[{tenant} {i}] {t.text}" for i, t in enumerate(generate_tickets(count, seed, 0.0))]


def test_a_deny_tenants_traffic_never_enters_a_dataset_and_provenance_names_the_tenants(
    shared: tuple[Setup, InProcessGateway],
) -> None:
    setup, origin = shared
    asked = {"alice": _questions("alice", 6, seed=11), "bob": _questions("bob", 6, seed=12)}
    for tenant, texts in asked.items():
        key = setup.alice if tenant == "alice" else setup.bob
        for text in texts:
            gateway_id = chat(origin, key, text).headers["x-turnout-request-id"]
            captured(setup.captures, gateway_id)
            assert feedback(origin, key, gateway_id, 1).status_code == 200  # approved

    out = setup.folder / "dataset"
    built = _turnout(
        "dataset", "build", "chat", "--captures", str(setup.captures),
        "--seed-file", str(_seed_file(setup.folder / "seed.jsonl")),
        "--keys-file", str(setup.keys_file), "--out", str(out),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    prompts = {e["messages"][-2]["content"] for s in SPLITS for e in read_split(out, s)}
    # Compared by each question's mark: the dataset redacts the e-mail addresses they contain.
    marks = {prompt.partition("]")[0] + "]" for prompt in prompts if prompt.startswith("[")}
    assert marks == {f"[alice {i}]" for i in range(len(asked["alice"]))}
    card = json.loads((out / "dataset_card.json").read_text())
    assert set(card["tenants"]) == {"alice"}
    assert card["tenants"]["alice"] >= len(asked["alice"])
    assert card["sources"]["captures"]["training_denied"]["bob"] >= len(asked["bob"])
    assert (
        sum(split["tenants"].get("alice", 0) for split in card["splits"].values())
        == (card["tenants"]["alice"])
    )

    # The card's tenants travel with the adapter into the registry's manifest.
    run = setup.folder / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"steps": 1, "history": []}))
    report = {"passed": True, "reasons": [], "checks": [], "candidate": {}, "test_examples": 1}
    adapter = setup.folder / "adapter"
    write_zero_adapter(adapter)
    registry = AdapterRegistry(str(setup.folder / "store"))
    base = synthetic_base_profile("synthetic-base")
    registry.save_base(base)
    pushed = registry.push(
        adapter,
        "chat-tuned",
        base,
        AdapterLimits(max_lora_rank=16),
        provenance=provenance(out, run, report),
    )
    manifest = json.loads(
        (setup.folder / "store" / "chat-tuned" / pushed.version / "manifest.json").read_text()
    )
    assert manifest["provenance"]["tenants"] == card["tenants"]
    assert manifest["provenance"]["dataset_card"]["sha256"] == card["sha256"]


def test_deleting_a_tenant_removes_its_data_and_nothing_else_and_survives_a_restart(
    upstream: str, tmp_path: Path
) -> None:
    setup = _setup(tmp_path)
    config = setup.config(upstream)
    with running_gateway(config, tmp_path) as origin:
        ids = {}
        for tenant, key in (("alice", setup.alice), ("bob", setup.bob)):
            for i, question in enumerate(_questions(tenant, 5, seed=len(tenant))):
                answer = chat(origin, key, question, f"{tenant}-{i}")
                ids[f"{tenant}-{i}"] = answer.headers["x-turnout-request-id"]
                captured(setup.captures, ids[f"{tenant}-{i}"])
                assert (
                    feedback(origin, key, f"{tenant}-{i}", -1, f"{tenant} fix {i}").status_code
                    == 200
                )
        out = tmp_path / "dataset"
        built = _turnout(
            "dataset", "build", "chat", "--captures", str(setup.captures),
            "--seed-file", str(_seed_file(tmp_path / "seed.jsonl")), "--out", str(out),
        )  # fmt: skip
        assert built.returncode == 0, built.stderr

        url = f"{origin}/admin/tenants/alice/captures"
        assert (
            httpx.delete(url, headers={"authorization": f"Bearer {setup.alice}"}).status_code == 403
        )
        deleted = httpx.delete(url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
        assert deleted.status_code == 200, deleted.text
        body = deleted.json()
        assert (body["tenant"], body["captures"], body["feedback"]) == ("alice", 5, 5)
        assert body["actor"] == "admin:ops"
        assert [d["path"] for d in body["datasets"]] == [str(out.resolve())]
        assert body["datasets"][0]["tenants"]["alice"] == 5

    def tenants_on_disk() -> tuple[set[str | None], list[tuple[str, str | None, str | None]]]:
        return {s.record.tenant for s in read_captures(setup.captures)}, feedback_rows(
            setup.captures
        )

    with running_gateway(config, tmp_path) as origin:
        on_disk, notes = tenants_on_disk()
        assert on_disk == {"bob"}
        assert len(read_captures(setup.captures)) == 5
        assert sorted(note[2] or "" for note in notes) == [f"bob fix {i}" for i in range(5)]
        assert feedback(origin, setup.alice, "alice-0", 1).status_code == 404
        assert feedback(origin, ADMIN_KEY, ids["alice-0"], 1).status_code == 404
        assert feedback(origin, setup.bob, "bob-0", 1).status_code == 200
        # New traffic of the deleted tenant is captured again, as new data.
        again = chat(origin, setup.alice, "alice is back").headers["x-turnout-request-id"]
        assert captured(setup.captures, again).record.tenant == "alice"

    # The command does the same on a file no gateway writes, and both deletions are audited.
    deleted_by_cli = _turnout(
        "captures", "delete", "--tenant", "bob", "--captures", str(setup.captures)
    )
    assert deleted_by_cli.returncode == 0, deleted_by_cli.stderr
    printed = json.loads(deleted_by_cli.stdout[: deleted_by_cli.stdout.rindex("}") + 1])
    assert (printed["captures"], printed["feedback"]) == (5, 6)
    assert {s.record.tenant for s in read_captures(setup.captures)} == {"alice"}
    audit = read_deletions(setup.captures)
    assert [(a["tenant"], a["actor"], a["captures"]) for a in audit] == [
        ("alice", "admin:ops", 5),
        ("bob", "cli", 5),
    ]


def test_captures_past_retention_are_purged_and_without_auth_feedback_is_open(
    upstream: str, tmp_path: Path
) -> None:
    db = tmp_path / "captures.db"
    with running_gateway(
        gateway_config(
            [upstream],
            state={"dir": str(tmp_path / "state")},
            capture={
                "path": str(db),
                "flush_interval_s": 0.05,
                "default": {"success_sample_rate": 1.0},
            },
        ),
        tmp_path,
    ) as origin:
        old = chat(origin, None, "an old question", "old-1").headers["x-turnout-request-id"]
        captured(db, old)
        # Without keys anyone who reaches the gateway may rate any captured answer.
        assert feedback(origin, None, "old-1", -1, "fix").status_code == 200
        assert feedback(origin, None, "not-captured", -1).status_code == 404
    with sqlite3.connect(db) as connection:  # make the capture ten days old
        connection.execute(
            "UPDATE captures SET created_at = ? WHERE request_id = ?",
            (time.time() - 10 * 86_400, old),
        )
    retained = gateway_config(
        [upstream],
        state={"dir": str(tmp_path / "state")},
        capture={"path": str(db), "flush_interval_s": 0.05, "retention_days": 7,
                 "default": {"success_sample_rate": 1.0}},
    )  # fmt: skip
    with running_gateway(retained, tmp_path) as origin:
        new = chat(origin, None, "a new question").headers["x-turnout-request-id"]
        assert captured(db, new).record.tenant is None
        assert [s.record.request_id for s in read_captures(db)] == [new]
        assert feedback_rows(db) == []

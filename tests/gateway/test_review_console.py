"""The review console against the gateway as a process (in front of the instant stub upstream,
whose answers break the route's schema, so every one is flagged for review): keys, the JSON API's
errors, and the whole flow in a real browser (headless Chromium through Selenium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
from gateway.protection.auth import issue_key
from tests.support.demo import BASE_MODEL, gateway_config
from tests.support.processes import running_gateway, stub_upstream
from tests.support.waiting import wait_until
from training.dataset import SPLITS, read_split
from training.tickets import SCHEMA, generate_tickets, write_seed_file

ROUTE = "triage"
REQUESTS = 8
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Console:
    origin: str
    folder: Path
    captures: Path
    reviewer: str
    admin: str
    tenant: str


def _store(folder: Path) -> Path:
    """Two versions of a zero adapter: the route's stable and its candidate."""
    registry = AdapterRegistry(str(folder / "adapters"))
    base = synthetic_base_profile(BASE_MODEL)
    registry.save_base(base)
    write_zero_adapter(folder / "zero")
    for version in ("v1", "v2"):
        registry.push(
            folder / "zero", ROUTE, base, AdapterLimits(max_lora_rank=16), version=version
        )
    return folder / "adapters"


def _config(folder: Path, upstream: str) -> tuple[dict[str, Any], dict[str, str]]:
    reviewer, admin, tenant = issue_key(), issue_key(), issue_key()
    (folder / "admins.yaml").write_text(
        yaml.safe_dump(
            {
                "admins": {"ops": [{"sha256": admin.sha256}]},
                "reviewers": {"rita": [{"sha256": reviewer.sha256}]},
            }
        )
    )
    (folder / "keys.yaml").write_text(
        yaml.safe_dump(
            {"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": tenant.sha256}]}}}
        )
    )
    route = {
        "stable": f"{ROUTE}@v1",
        "candidate": f"{ROUTE}@v2",
        "mode": "ab",
        "weight": 50,
        "schema": SCHEMA,
        "on_invalid": "flag",
        "review": {"sample_rate": 1.0},
    }
    config = gateway_config(
        [upstream],
        _store(folder),
        routes={ROUTE: route},
        auth={
            "keys_file": str(folder / "keys.yaml"),
            "admin_keys_file": str(folder / "admins.yaml"),
        },
        state={"dir": str(folder / "state"), "review_verdicts_in_analysis": True},
        capture={
            "path": str(folder / "captures.db"),
            "flush_interval_s": 0.05,
            "default": {"success_sample_rate": 1.0},
        },
    )
    return config, {"reviewer": reviewer.key, "admin": admin.key, "tenant": tenant.key}


def _get(console: Console, path: str, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.get(f"{console.origin}{path}", headers=headers, timeout=10)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("review")
    with stub_upstream() as upstream:
        config, keys = _config(folder, upstream)
        with running_gateway(config, folder) as origin:
            running = Console(origin, folder, folder / "captures.db", **keys)
            for n in range(REQUESTS):
                body = {
                    "model": ROUTE,
                    "user": f"customer-{n}",  # spreads the requests over both arms
                    "messages": [
                        {
                            "role": "user",
                            "content": f"Ticket {n}: refund please, mail ann{n}@example.com",
                        }
                    ],
                    "max_tokens": 16,
                }
                answer = httpx.post(
                    f"{origin}/v1/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {keys['tenant']}"},
                    timeout=30,
                )
                assert answer.status_code == 200, answer.text

            def queued() -> bool:
                rows = _get(running, "/review/api/summary", keys["reviewer"]).json()["data"]
                return sum(row["pending"] for row in rows) == REQUESTS

            wait_until(queued, 15, "every flagged answer in the review queue")
            yield running


def test_review_api_needs_a_reviewer_or_admin_key_and_reviewer_keys_open_nothing_else(
    console: Console,
) -> None:
    missing = _get(console, "/review/api/next", None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    tenant = _get(console, "/review/api/next", console.tenant)
    assert tenant.status_code == 403
    assert tenant.json()["error"]["code"] == "forbidden"
    assert _get(console, "/review/api/next", "tk-not-a-key").status_code == 403

    me = _get(console, "/review/api/me", console.reviewer).json()
    assert (me["reviewer"], me["role"]) == ("reviewer:rita", "reviewer")
    assert _get(console, "/review/api/me", console.admin).json()["role"] == "admin"
    # The reviewer's key opens neither the admin API nor inference nor feedback.
    assert _get(console, "/admin/routes", console.reviewer).status_code == 403
    chat = httpx.post(
        f"{console.origin}/v1/chat/completions",
        json={"model": ROUTE, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {console.reviewer}"},
    )
    assert chat.status_code == 401
    feedback = httpx.post(
        f"{console.origin}/v1/feedback",
        json={"request_id": "anything", "rating": -1},
        headers={"authorization": f"Bearer {console.reviewer}"},
    )
    assert feedback.status_code == 401
    # The page itself holds no data and loads nothing from elsewhere.
    page = _get(console, "/review", None)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "http" not in page.text.replace("http-equiv", "")
    assert _get(console, "/review/static/../app.py", None).status_code == 404


def test_bad_judgements_are_openai_style_errors_and_write_nothing(console: Console) -> None:
    item = _get(console, "/review/api/next", console.reviewer).json()["item"]
    assert item["route"] == ROUTE
    assert item["schema_verdict"] == "invalid"
    assert item["flags"] == ["schema_invalid"]
    assert item["has_schema"] is True
    # Prompts are redacted as captured.
    assert "[EMAIL]" in item["messages"][0]["content"]
    url = f"{console.origin}/review/api/items/{item['id']}/judgement"
    headers = {"authorization": f"Bearer {console.reviewer}"}

    def post(body: Any) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(url, content=content, headers=headers, timeout=10)

    broken = post({"verdict": "bad", "correction": '{"label": "refund"}'})
    assert broken.status_code == 422
    error = broken.json()["error"]
    assert error["param"] == "correction"
    assert "label" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert post({"verdict": "bad", "correction": "not json"}).status_code == 422
    assert post({"verdict": "bad", "reason": "because"}).json()["error"]["param"] == "reason"
    assert post({"verdict": "meh"}).status_code == 422
    assert post(b"{not json").json()["error"]["code"] == "invalid_json"
    missing = httpx.post(
        f"{console.origin}/review/api/items/999999/judgement",
        json={"verdict": "good"},
        headers=headers,
    )
    assert missing.status_code == 404
    assert (
        _get(console, f"/review/api/items/{item['id']}", console.reviewer).json()["item"][
            "judgement"
        ]
        is None
    )


# --- in a real browser ----------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Selenium through the system chromedriver."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail("chromium and chromium-driver are needed: `make system-deps` installs them")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,1250",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _screenshots(tmp_path: Path) -> Path:
    """Where screenshots go: `TURNOUT_REVIEW_SCREENSHOTS` (docs/review for the docs), else a
    temporary folder."""
    folder = Path(os.environ.get("TURNOUT_REVIEW_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow
def test_a_reviewer_works_through_the_queue_by_keyboard_and_the_correction_reaches_the_dataset(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    shots = _screenshots(tmp_path)
    # The page redraws a view whole: an element read while it is replaced is read again.
    wait = WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,))

    def element(element_id: str) -> Any:
        return browser.find_element(By.ID, element_id)

    def text_of(element_id: str) -> str:
        return str(element(element_id).text)

    def press(*keys: str) -> None:
        ActionChains(browser).send_keys(*keys).perform()

    def shown(element_id: str, contains: str) -> None:
        wait.until(lambda _: contains in text_of(element_id))

    def log_in(key: str) -> None:
        field = element("key")
        field.clear()
        field.send_keys(key)
        field.send_keys(Keys.ENTER)

    def summary_line(line: str) -> list[str]:
        row = browser.find_element(
            By.CSS_SELECTOR, f'table[data-route="{ROUTE}"] tr[data-line="{line}"]'
        )
        return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:]

    browser.get(f"{console.origin}/review")
    log_in(" ")  # no key at all
    shown("error", "401")
    log_in(console.tenant)
    shown("error", "403: This key may not use the review console.")
    assert element("queue").is_displayed() is False
    browser.save_screenshot(str(shots / "login-rejected.png"))

    log_in(console.reviewer)
    wait.until(lambda _: element("item").is_displayed())
    assert text_of("who") == "reviewer:rita"
    press("v")
    wait.until(lambda _: element("summary").is_displayed() and summary_line("reviewed"))
    assert set(summary_line("reviewed")) == {"0"}
    press("v")
    wait.until(lambda _: element("item").is_displayed())
    first = text_of("item-id")
    assert text_of("item-schema") == "invalid"
    assert "[EMAIL]" in text_of("item-prompt")
    browser.save_screenshot(str(shots / "item.png"))

    press("1", "g")  # correct, good
    shown("notice", f"Item {first} judged good.")
    second = text_of("item-id")
    press("3", "b")  # wrong format, bad
    shown("notice", f"Item {second} judged bad.")
    third = text_of("item-id")
    press("s")
    shown("notice", f"Item {third} skipped.")
    assert text_of("item-id") != third
    press("k")  # back to the skipped item
    shown("notice", f"Back to item {third}.")
    assert text_of("item-id") == third

    press("e")
    element("correction").send_keys('{"label": "refund"}')
    ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(
        Keys.CONTROL
    ).perform()
    shown("error", "422: correction: breaks the route's schema")
    browser.save_screenshot(str(shots / "correction-rejected.png"))
    correction = '{"label": "billing"}'
    element("correction").clear()
    press("2", "e")  # wrong answer; back into the correction
    element("correction").send_keys(correction)
    ActionChains(browser).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(
        Keys.CONTROL
    ).perform()
    shown("notice", f"Item {third} judged bad.")

    press("v")
    wait.until(lambda _: sum(int(n) for n in summary_line("reviewed") or ["0"]) == 3)
    heads = [
        cell.text
        for cell in browser.find_elements(By.CSS_SELECTOR, f'table[data-route="{ROUTE}"] th')
    ]
    assert heads[1:] == [f"stable: {ROUTE}@v1", f"candidate: {ROUTE}@v2"]
    assert sum(int(n) for n in summary_line("judged bad")) == 2
    assert sum(int(n) for n in summary_line("waiting")) == REQUESTS - 3
    browser.save_screenshot(str(shots / "summary.png"))
    for name in ("login-rejected", "item", "correction-rejected", "summary"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    judged = _get(console, f"/review/api/items/{third}", console.reviewer).json()["item"]
    assert judged["judgement"]["correction"] == correction
    assert judged["judgement"]["reviewer"] == "reviewer:rita"

    # The verdicts are a canary signal too (state.review_verdicts_in_analysis): each arm's
    # counts, in the route's latest analysis.
    def analysed() -> dict[str, float]:
        route = _get(console, f"/admin/routes/{ROUTE}", console.admin).json()
        return (route["analysis"] or {}).get("numbers", {})

    def trials() -> float:
        numbers = analysed()
        return sum(numbers.get(f"review_bad.{arm}_trials", 0) for arm in ("stable", "candidate"))

    wait_until(lambda: trials() == 3, 10, "an analysis that counts all three verdicts")
    numbers = analysed()
    arms = {arm: (numbers[f"review_bad.{arm}_events"], numbers[f"review_bad.{arm}_trials"])
            for arm in ("stable", "candidate")}  # fmt: skip
    assert sum(trials for _, trials in arms.values()) == 3
    assert sum(events for events, _ in arms.values()) == 2

    # The next dataset build takes the correction, with who judged it, when, and which version
    # gave the original answer.
    seed, schema, out = tmp_path / "seed.jsonl", tmp_path / "schema.json", tmp_path / "dataset"
    write_seed_file(seed, generate_tickets(200, seed=41, resend_rate=0.0))
    schema.write_text(json.dumps(SCHEMA))
    # Label balancing would drop examples at random; this test follows one of them.
    settings = tmp_path / "dataset.yaml"
    settings.write_text("balance_labels: false\n")
    built = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "dataset", "build", ROUTE,
         "--captures", str(console.captures), "--seed-file", str(seed),
         "--schema", str(schema), "--config", str(settings), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    card = json.loads((out / "dataset_card.json").read_text())
    assert card["sources"]["captures"]["review"] == {
        "judged": 3,
        "judged_bad": 2,
        "corrections": 1,
        "approved": 0,
        "reviewers": {"reviewer:rita": 3},
    }
    lines = [line for name in SPLITS for line in read_split(out, name)]
    reviewed = [line for line in lines if "review" in line]
    assert len(reviewed) == 1
    assert reviewed[0]["messages"][-1]["content"] == correction
    assert reviewed[0]["review"]["request_id"] == judged["request_id"]
    assert reviewed[0]["review"]["reviewer"] == "reviewer:rita"
    assert reviewed[0]["review"]["version"] == judged["version"]
    assert reviewed[0]["review"]["judged_at"] > 0


def test_keys_create_prints_a_reviewer_entry_for_the_admin_keys_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from gateway.cli.main import main
    from gateway.protection.auth import hash_api_key, load_admin_keyring, load_reviewer_keyring

    assert main(["keys", "create", "rita", "--reviewer"]) == 0
    printed = capsys.readouterr().out
    key = printed.split("): ", 1)[1].split()[0]
    entry = yaml.safe_load(printed.split("as 'rita':\n", 1)[1])
    assert entry["reviewers"]["rita"][0]["sha256"] == hash_api_key(key)
    path = tmp_path / "admins.yaml"
    path.write_text(yaml.safe_dump({"admins": {}, **entry}))
    assert load_reviewer_keyring(path).authenticate(f"Bearer {key}").name == "rita"
    with pytest.raises(Exception, match="Incorrect API key"):
        load_admin_keyring(path).authenticate(f"Bearer {key}")


@pytest.mark.slow
def test_the_console_shows_a_shadow_pairs_answers_side_by_side(
    browser: Any, tmp_path: Path
) -> None:
    """The console's page and API in a uvicorn of this process, over a capture file holding
    one flagged shadow pair (written by the capture writer, as the shadow recorder offers it)."""
    import threading

    import uvicorn
    from fastapi import FastAPI
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from gateway.api.errors import install_error_handlers
    from gateway.protection.auth import load_reviewer_keyring
    from gateway.review.access import ReviewAccess
    from gateway.review.api import console_router, review_api_router
    from gateway.serving.embedded_vllm import free_port
    from training.capture import CapturePolicy, CaptureRecord, CaptureSettings, SqliteCaptureSink
    from training.review.policy import ReviewPolicy
    from training.review.store import ReviewQueue

    db = tmp_path / "captures.db"
    settings = CaptureSettings(path=str(db), default=CapturePolicy(success_sample_rate=0.0))
    sink = SqliteCaptureSink(settings, review={ROUTE: ReviewPolicy(sample_rate=0.0)})
    stable = CaptureRecord(
        request_id="pair-1",
        route=ROUTE,
        version=f"{ROUTE}@v1",
        arm="stable",
        created_at=1_700_000_000.0,
        endpoint="chat",
        messages=({"role": "user", "content": "Ticket: refund please"},),
        output='{"label": "billing"}',
        finish_reason="stop",
    )
    sink.offer(
        CaptureRecord(
            **{
                **stable.__dict__,
                "version": f"{ROUTE}@v2",
                "arm": "shadow",
                "output": '{"label": "technical"}',
                "stable": stable,
                "pair_flags": ("disagreed",),
            }
        )
    )
    sink.close()

    key = issue_key()
    keys = tmp_path / "admins.yaml"
    keys.write_text(yaml.safe_dump({"admins": {}, "reviewers": {"rita": [{"sha256": key.sha256}]}}))
    queue = ReviewQueue(db)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(console_router())
    app.include_router(
        review_api_router(queue, ReviewAccess(None, load_reviewer_keyring(keys)), lambda r: None)
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the console's server")
        wait = WebDriverWait(browser, 10)
        browser.get(f"http://127.0.0.1:{port}/review")
        field = browser.find_element(By.ID, "key")
        field.clear()
        field.send_keys(key.key)
        field.send_keys(Keys.ENTER)
        second = browser.find_element(By.ID, "second")
        wait.until(lambda _: second.is_displayed())
        answer = browser.find_element(By.ID, "item-answer")
        shown = browser.find_element(By.ID, "item-second")
        assert (answer.text, shown.text) == ('{"label": "billing"}', '{"label": "technical"}')
        assert browser.find_element(By.ID, "answer-title").text == f"Served answer ({ROUTE}@v1)"
        assert browser.find_element(By.ID, "second-title").text == (
            f"Candidate's answer (shadow, {ROUTE}@v2)"
        )
        # Side by side: the candidate's answer right of the served one, on the same line.
        assert shown.location["x"] >= answer.location["x"] + answer.size["width"]
        assert shown.location["y"] == answer.location["y"]
        browser.save_screenshot(str(_screenshots(tmp_path) / "pair.png"))
    finally:
        server.should_exit = True
        thread.join(10)
        queue.close()

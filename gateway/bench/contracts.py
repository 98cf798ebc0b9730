"""`turnout bench contracts`: what judging one answer against a typical ten-field schema costs."""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.contracts.contract import judge_answer, make_contract

TARGET_US = 50.0

TEN_FIELD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
        "label": {"enum": ["billing", "bug", "account", "other"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 200},
        "customer": {"type": "string"},
        "refund": {"type": "boolean"},
        "amount": {"type": "number", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "language": {"type": "string", "enum": ["en", "de", "fr"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["ticket_id", "label", "priority", "summary"],
    "additionalProperties": False,
}
VALID_ANSWER = orjson.dumps(
    {
        "ticket_id": "T-1234", "label": "billing", "priority": 2,
        "summary": "Customer was charged twice for the March invoice.",
        "customer": "ACME", "refund": True, "amount": 49.5, "tags": ["invoice", "duplicate"],
        "language": "en", "confidence": 0.92,
    }
).decode()  # fmt: skip


def run_contracts_benchmark(iterations: int = 20000) -> dict[str, Any]:
    contract = make_contract(
        TEN_FIELD_SCHEMA, on_invalid="error", max_retries=0, stream_validation="final",
        source="route", name="bench",
    )  # fmt: skip
    invalid = VALID_ANSWER.replace('"priority":2', '"priority":9')
    report: dict[str, Any] = {"iterations": iterations, "target_us": TARGET_US}
    for label, text in (("valid", VALID_ANSWER), ("invalid", invalid)):
        assert contract.judge(text, "stop").result == label
        started = time.perf_counter()
        for _ in range(iterations):
            judge_answer(contract.schema_json, text, "stop")
        report[f"{label}_answer_us"] = round((time.perf_counter() - started) / iterations * 1e6, 2)
    report["meets_target"] = report["valid_answer_us"] <= TARGET_US
    return report

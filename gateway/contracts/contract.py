"""Output contracts: checked JSON Schemas, guided-decoding parameters, and verdicts on answers.

A contract comes from the route's config or, on a route without one, from the request's own
`response_format` (how the two meet is `gateway.contracts.request_schemas`'s job). The schema
goes to
vLLM as `response_format` (guided decoding), and every finished answer is validated here too:
truncation, a backend without guided decoding, or a bad adapter still produce invalid output.
Schemas are capped in size and depth and may only `$ref` themselves before anything reaches
vLLM, whose grammar compilers have crashed on hostile schemas (CVE-2025-48942..48944).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import jsonschema_rs
import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 16
MAX_PATTERN_CHARS = 1000
MAX_REPORTED_ERRORS = 20

OnInvalid = Literal["retry", "error", "flag"]
StreamValidation = Literal["final", "buffer"]
SchemaResult = Literal["valid", "invalid", "truncated"]
# Which schema a verdict speaks for: "both" is a route's and a request's, each held.
ContractSource = Literal["route", "request", "both"]
# What a route does with a request that brings a schema its own cannot keep.
RequestSchemaPolicy = Literal["reject", "ignore", "enforce_both"]


class SchemaRejected(ValueError):
    """A schema is not acceptable; the message names where in the schema."""


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """One validation error: where in the answer (a JSON path) and what is wrong."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


@dataclass(frozen=True, slots=True)
class ContractVerdict:
    """Whether one answer meets the contract."""

    result: SchemaResult
    issues: tuple[SchemaIssue, ...]
    text: str
    source: ContractSource = "route"

    @property
    def ok(self) -> bool:
        return self.result == "valid"

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "source": self.source,
            "errors": [issue.as_dict() for issue in self.issues],
        }


@dataclass(frozen=True, slots=True)
class Contract:
    """A checked schema and what to do with answers that break it.

    `also` is a request's own schema that answers must meet too (a route's `request_schema:
    enforce_both`): vLLM decodes with `schema` alone, and the verdict names the schema that
    failed, or "both" when each held.
    """

    schema: Mapping[str, Any]
    schema_json: bytes  # canonical: the validator cache key and what vLLM receives
    on_invalid: OnInvalid
    max_retries: int
    stream_validation: StreamValidation
    source: ContractSource
    name: str
    request_schema: RequestSchemaPolicy = "reject"
    also: Contract | None = None

    def response_format(self) -> dict[str, Any]:
        """The `response_format` that asks vLLM for guided decoding with this schema."""
        return {
            "type": "json_schema",
            "json_schema": {"name": self.name, "schema": self.schema, "strict": True},
        }

    def judge(self, text: str, finish_reason: str | None) -> ContractVerdict:
        if self.also is None:
            return judge_answer(self.schema_json, text, finish_reason, self.source)
        verdict = judge_answer(self.schema_json, text, finish_reason, "route")
        if not verdict.ok:
            return verdict
        verdict = self.also.judge(text, finish_reason)
        return replace(verdict, source="both") if verdict.ok else verdict

    def enforcing(self, request: Contract) -> Contract:
        """This (route's) contract, with answers held to `request`'s schema as well."""
        return replace(self, source="both", also=replace(request, source="request"))


def _depth(node: Any, level: int = 1) -> int:
    if isinstance(node, dict):
        return max((_depth(v, level + 1) for v in node.values()), default=level)
    if isinstance(node, list):
        return max((_depth(v, level + 1) for v in node), default=level)
    return level


def _check_node(node: Any, where: str) -> None:
    """Refs stay inside the schema (no fetching), and regex patterns compile and stay short."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            _check_node(item, f"{where}/{index}")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = f"{where}/{key}"
        if key in ("$ref", "$dynamicRef") and (
            not isinstance(value, str) or not value.startswith("#")
        ):
            raise SchemaRejected(f"{here}: only references inside the schema (#...) are allowed")
        if key == "pattern" and isinstance(value, str):
            if len(value) > MAX_PATTERN_CHARS:
                raise SchemaRejected(
                    f"{here}: patterns are limited to {MAX_PATTERN_CHARS} characters"
                )
            try:
                re.compile(value)
            except re.error as error:
                raise SchemaRejected(f"{here}: not a valid regular expression: {error}") from None
        _check_node(value, here)


def check_schema(schema: Any) -> bytes:
    """The schema's canonical JSON if it is a valid, bounded draft 2020-12 schema."""
    if not isinstance(schema, dict):
        raise SchemaRejected("a JSON Schema must be an object")
    encoded = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    if len(encoded) > MAX_SCHEMA_BYTES:
        raise SchemaRejected(f"the schema is {len(encoded)} bytes; the limit is {MAX_SCHEMA_BYTES}")
    problem = _schema_problem(encoded)
    if problem is not None:
        raise SchemaRejected(problem)
    return encoded


@lru_cache(maxsize=1024)
def _schema_problem(encoded: bytes) -> str | None:
    """Why a (canonical) schema is refused, or None; decided once per distinct schema, since
    requests may bring the same one again and again."""
    schema = orjson.loads(encoded)
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        return f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        return f"{error.json_path}: {error.message}"
    try:
        _check_node(schema, "#")
    except SchemaRejected as error:
        return str(error)
    return None


def make_contract(
    schema: Mapping[str, Any],
    *,
    on_invalid: OnInvalid,
    max_retries: int,
    stream_validation: StreamValidation,
    source: ContractSource,
    name: str,
    request_schema: RequestSchemaPolicy = "reject",
) -> Contract:
    encoded = check_schema(schema)
    _validator(encoded)  # compile now: the first request must not pay for it
    return Contract(
        schema=schema,
        schema_json=encoded,
        on_invalid=on_invalid,
        max_retries=max_retries,
        stream_validation=stream_validation,
        source=source,
        name=name,
        request_schema=request_schema,
    )


@lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> jsonschema_rs.Draft202012Validator:
    """One compiled validator per distinct schema (requests may bring their own).

    jsonschema-rs validates a ten-field answer in about 1 µs where the pure-Python
    `jsonschema` takes about 80 µs (`turnout bench contracts`); `jsonschema` still checks the
    schemas themselves, once, at config load or on the request that brings one.
    """
    return jsonschema_rs.Draft202012Validator(orjson.loads(schema_json))


def _json_path(location: list[str | int]) -> str:
    return "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)


def judge_answer(
    schema_json: bytes, text: str, finish_reason: str | None, source: ContractSource = "route"
) -> ContractVerdict:
    """Valid, invalid (with every error's JSON path), or truncated (the answer hit max_tokens)."""
    if finish_reason == "length":
        cut = (SchemaIssue("$", "the answer was cut off at max_tokens"),)
        return ContractVerdict("truncated", cut, text, source)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as not_json:
        return ContractVerdict(
            "invalid", (SchemaIssue("$", f"not JSON: {not_json}"),), text, source
        )
    validator = _validator(schema_json)
    if validator.is_valid(document):
        return ContractVerdict("valid", (), text, source)
    issues = []
    for problem in validator.iter_errors(document):
        issues.append(SchemaIssue(_json_path(problem.instance_path), problem.message))
        if len(issues) == MAX_REPORTED_ERRORS:
            break
    return ContractVerdict("invalid" if issues else "valid", tuple(issues), text, source)


def request_contract(response_format: Any, default_name: str) -> Contract | None:
    """The contract a request's own `response_format` asks for (None for plain text).

    A request's schema is flagged, not retried or refused: the caller asked for it and decides.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise SchemaRejected("response_format must be an object")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
        name = default_name
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise SchemaRejected("response_format.json_schema.schema is required")
        schema, name = spec["schema"], str(spec.get("name") or default_name)
    else:
        raise SchemaRejected(
            f"response_format.type {kind!r} is not one of text, json_object, json_schema"
        )
    return make_contract(
        schema, on_invalid="flag", max_retries=0, stream_validation="final",
        source="request", name=name,
    )  # fmt: skip


def check_tool_schemas(tools: Any) -> None:
    """Tools' parameter schemas reach vLLM's grammar compilers too: the same bounds apply."""
    if not isinstance(tools, list):
        return
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters is not None:
            try:
                check_schema(parameters)
            except SchemaRejected as error:
                raise SchemaRejected(f"tools[{index}].function.parameters: {error}") from None

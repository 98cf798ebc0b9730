"""A request's own `response_format` against its route's contract: which contract applies.

A route without a schema takes the request's (policy `flag`). A route with one always has vLLM
decode with its own; a request schema the route's can keep (a *compatible* one) changes
nothing, and one it cannot keep is refused (`request_schema: reject`, the default), replaced
with only the headers saying so (`ignore`), or held as a second check on every answer
(`enforce_both`), so a client is never told its own contract held when it did not.

Compatible means every answer the route's schema accepts, the request's accepts too. The rule
is sound (it never calls a conflict compatible) and deliberately small:
- the two are the same schema once key order, annotations (`title`, `description`, ...) and
  local `$ref`s (inlined) are normalised away;
- the request's accepts anything (`{}`);
- the request's only names types (`{"type": "object"}`, which is what `json_object` asks for)
  and every value the route's schema accepts has one of them.
Each distinct pair of schemas is decided once and remembered (a bounded cache).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from gateway.contracts.contract import Contract
from gateway.errors import SchemaConflict

# Keywords that never change what a schema accepts (draft 2020-12's annotation vocabulary).
ANNOTATIONS = frozenset(
    {
        "$comment",
        "$schema",
        "default",
        "deprecated",
        "description",
        "examples",
        "readOnly",
        "title",
        "writeOnly",
    }
)
_ONE_SCHEMA = frozenset(
    {
        "additionalItems",
        "additionalProperties",
        "contains",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_SCHEMA_LISTS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAPS = frozenset(
    {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}
)
_DEFINITIONS = ("$defs", "definitions")
# These change what a `$ref` points at (a new base, a named anchor): such a schema is compared
# as written rather than have a reference inlined from the wrong place.
_SCOPES = frozenset(
    {"$anchor", "$dynamicAnchor", "$dynamicRef", "$id", "$recursiveAnchor", "$recursiveRef"}
)
# Inlining `$ref`s can multiply a schema's size; past this many nodes it is compared as written.
MAX_NORMAL_NODES = 5_000
CACHE_SIZE = 1024


class _AsWritten(Exception):
    """The schema is too large once inlined, or its references are not plain pointers."""


class _Normaliser:
    """One schema's normal form: annotations dropped, local `$ref`s inlined where they end,
    and (with `drop_definitions`) the definitions nothing reads any more dropped."""

    def __init__(self, root: Any, drop_definitions: bool) -> None:
        self.root = root
        self.drop_definitions = drop_definitions
        self.nodes_left = MAX_NORMAL_NODES
        self.kept_refs = False  # a recursive or unresolvable `$ref` stays, and so must `$defs`

    def schema(self, node: Any, resolving: frozenset[str]) -> Any:
        if not isinstance(node, dict):
            return node  # a boolean schema, or something the meta-schema check refused
        self.nodes_left -= 1
        if self.nodes_left < 0 or not _SCOPES.isdisjoint(node):
            raise _AsWritten
        ref = node.get("$ref")
        target = _pointer(self.root, ref) if isinstance(ref, str) else None
        if isinstance(ref, str) and (target is None or ref in resolving):
            self.kept_refs = True
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ANNOTATIONS or (self.drop_definitions and key in _DEFINITIONS):
                continue
            if key == "$ref" and target is not None and ref not in resolving:
                assert isinstance(ref, str)
                out[key] = self.schema(target, resolving | {ref})
            elif key in _ONE_SCHEMA:
                out[key] = self.schema(value, resolving)
            elif key in _SCHEMA_LISTS and isinstance(value, list):
                out[key] = [self.schema(item, resolving) for item in value]
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                out[key] = {name: self.schema(sub, resolving) for name, sub in value.items()}
            else:
                out[key] = value
        inlined = out.get("$ref")
        if isinstance(inlined, dict | bool) and len(out) == 1:
            return inlined  # `{"$ref": X}` alone is X
        return out


def _pointer(root: Any, ref: str) -> Any:
    """What a local JSON Pointer reference (`#`, `#/$defs/x`) points at, or None."""
    if not ref.startswith("#"):
        return None
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None  # an `$anchor` name: compared as written
    node = root
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def normal_form(schema: Any) -> Any:
    """The schema with annotations and local `$ref`s normalised away (as far as it safely can:
    a recursive `$ref` stays, and so do the definitions it needs); key order is the caller's."""
    try:
        normaliser = _Normaliser(schema, drop_definitions=True)
        normal = normaliser.schema(schema, frozenset())
        if normaliser.kept_refs:
            normal = _Normaliser(schema, drop_definitions=False).schema(schema, frozenset())
    except _AsWritten:
        return schema
    return normal


@lru_cache(maxsize=CACHE_SIZE)
def _normal_json(schema_json: bytes) -> bytes:
    return orjson.dumps(normal_form(orjson.loads(schema_json)), option=orjson.OPT_SORT_KEYS)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "null"


def value_types(schema: Any) -> frozenset[str] | None:
    """The JSON types every value the (normalised) schema accepts has one of; None: any."""
    if schema is False:
        return frozenset()
    if not isinstance(schema, dict):
        return None
    known: list[frozenset[str]] = []
    kind = schema.get("type")
    if isinstance(kind, str):
        known.append(frozenset({kind}))
    elif isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        known.append(frozenset(kind))
    if "const" in schema:
        known.append(frozenset({_json_type(schema["const"])}))
    if isinstance(schema.get("enum"), list):
        known.append(frozenset(_json_type(member) for member in schema["enum"]))
    every = schema.get("allOf")
    parts = [*(every if isinstance(every, list) else []), schema.get("$ref")]
    for part in parts:  # an inlined `$ref` applies beside the other keywords, as allOf does
        types = value_types(part) if isinstance(part, dict | bool) else None
        if types is not None:
            known.append(types)
    for keyword in ("anyOf", "oneOf"):
        branches = schema.get(keyword)
        if isinstance(branches, list) and branches:
            each = [value_types(branch) for branch in branches]
            if all(types is not None for types in each):
                known.append(frozenset().union(*(t for t in each if t is not None)))
    if not known:
        return None
    return frozenset.intersection(*known) if len(known) > 1 else known[0]


def _names_only_types(schema: Any) -> frozenset[str] | None:
    """The types a schema asks for when that is all it asks (`{"type": "object"}`), else None."""
    if not isinstance(schema, dict) or set(schema) != {"type"}:
        return None
    kind = schema["type"]
    names = [kind] if isinstance(kind, str) else kind
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    allowed = set(names)
    if "number" in allowed:
        allowed.add("integer")  # every integer is a number
    return frozenset(allowed)


@lru_cache(maxsize=CACHE_SIZE)
def compatible(route_schema_json: bytes, request_schema_json: bytes) -> bool:
    """Whether every answer the route's schema accepts, the request's accepts too (both given
    as canonical JSON); decided once per distinct pair."""
    requested = _normal_json(request_schema_json)
    if requested in (b"{}", b"true") or requested == _normal_json(route_schema_json):
        return True
    wanted = _names_only_types(orjson.loads(requested))
    if wanted is None:
        return False
    produced = value_types(orjson.loads(_normal_json(route_schema_json)))
    return produced is not None and produced <= wanted


def conflict_message(route: str) -> str:
    return (
        f"`response_format` asks for a JSON Schema that the route `{route}` does not keep: "
        f"answers are decoded with the route's own schema. Omit `response_format`, or send "
        f"the route's schema (GET /v1/models/{route} shows it)."
    )


def contract_for(route: Contract | None, requested: Contract | None, name: str) -> Contract | None:
    """The contract one request is held to: its route's, its own, or both; a request schema
    the route cannot keep is refused unless the route's `request_schema` says otherwise."""
    if route is None:
        return requested
    if requested is None or compatible(route.schema_json, requested.schema_json):
        return route
    if route.request_schema == "ignore":
        return route
    if route.request_schema == "enforce_both":
        return route.enforcing(requested)
    raise SchemaConflict(conflict_message(name), param="response_format")

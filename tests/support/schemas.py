"""The triage schemas the contract tests share: the route's, and a client's own it does not keep."""

from __future__ import annotations

from typing import Any

# The `triage-json` route's output contract.
TRIAGE: dict[str, Any] = {
    "type": "object",
    "properties": {"label": {"enum": ["billing", "bug", "account"]}},
    "required": ["label"],
    "additionalProperties": False,
}
# The example: what a client wanted from that route (no `priority` in the route's).
CLIENT_TRIAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["bug", "feature", "question"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["label", "priority"],
}

"""Rollout fixtures' data: a canary rollout, and a gateway config with an admin key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.protection.auth import hash_api_key
from gateway.rollouts.model import Rollout
from tests.support.demo import gateway_config

CANARY = Rollout(
    route="triage",
    stable="triage@v1",
    rollout_id="r1",
    candidate="triage@v2",
    weight_percent=5.0,
    steps=(5.0, 50.0, 100.0),
    revision=1,
)

ADMIN_KEY = "tk-admin-for-tests"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
SPLIT = {"stable": "support-triage@v1", "candidate": "summarize@v1", "mode": "ab", "weight": 50}
SPLIT_ROUTES = {name: SPLIT for name in ("sticky", "rollback", "forced", "restart")}


def config_for(vllm_url: str, demo_model: Path, state: Path, **routes: Any) -> dict[str, Any]:
    """`store_config` over the demo model's adapter store."""
    return store_config(vllm_url, demo_model / "adapters", state, **routes)


def store_config(backend: str, store: Path, state: Path, **routes: Any) -> dict[str, Any]:
    """The demo routes' config over `store` (or `routes`, else four 50/50 splits) with
    `ADMIN_KEY` an admin key and rollout state kept in `state`, whose config file is polled
    every 0.2 s."""
    state.mkdir(parents=True, exist_ok=True)
    admins = state.parent / "admin-keys.yaml"
    admins.write_text(yaml.safe_dump({"admins": {"ops": [{"sha256": hash_api_key(ADMIN_KEY)}]}}))
    return gateway_config(
        [backend],
        store,
        routes=routes or SPLIT_ROUTES,
        auth={"admin_keys_file": str(admins)},
        state={"dir": str(state), "config_poll_s": 0.2},
    )

"""One retraining cycle for a route: captures -> dataset -> QLoRA -> gate -> registry -> canary.

`turnout flywheel run --route R` (and the chart's retraining CronJob, and `flywheel watch` when
a signal goes bad) runs `retrain`. Everything comes from the gateway's config file: the capture
store, the adapter registry, the route's schema and stable version, the vLLM that gates. It
trains with the training config recorded in the stable version's provenance (or the one given),
gates the candidate against the stable version, and only when the gate passes pushes the
candidate with its provenance and starts a canary through the admin API. Too little data or a
failed gate raises `RetrainRefused` before anything reaches the registry; a push is published by
its manifest in one step (adapters/registry.py), so no half-pushed version is ever visible.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.names import next_version, parse_ref
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import TurnoutConfig
from gateway.errors import ConfigError, TurnoutError
from training.dataset import DatasetConfig, DatasetError, DatasetInputs
from training.evaluate import GateConfig, Probe
from training.qlora import TrainConfig

log = logging.getLogger("turnout.retrain")
CREATED_BY = "turnout flywheel run"


class RetrainRefused(TurnoutError):
    """The cycle stopped on purpose: too little data, or the gate refused the candidate."""

    code = "retrain_refused"


@dataclass(frozen=True)
class RetrainInputs:
    """What one cycle needs beyond the gateway's config file."""

    route: str
    base_model: str  # the base model's weights (a folder or a hub id) for training
    work: Path
    vllm_url: str | None = None  # default: the config's first backend
    admin_url: str | None = None
    admin_key: str | None = None
    seed_file: Path | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig | None = None  # default: the stable version's recorded config
    gate: GateConfig = field(default_factory=GateConfig)
    suite: Sequence[Probe] = ()
    min_train_examples: int = 50
    canary: dict[str, Any] | None = None  # the canary request's steps etc.; None: route's own


@dataclass(frozen=True)
class RetrainResult:
    """The pushed version and the rollout the admin API started."""

    ref: str
    report: dict[str, Any]
    rollout: dict[str, Any]


@dataclass(frozen=True)
class _Plan:
    """Everything checked before the first slow step."""

    adapter: str
    stable: str | None
    schema: dict[str, Any] | None
    captures: Path
    registry: AdapterRegistry
    vllm_url: str
    admin_url: str
    admin_key: str
    stable_folder: Path | None
    recorded_train: dict[str, Any] | None


def _plan(config: TurnoutConfig, inputs: RetrainInputs) -> _Plan:
    route = config.routes.get(inputs.route)
    if route is None:
        raise ConfigError(f"routes: no route {inputs.route!r} to retrain")
    if not inputs.admin_url or not inputs.admin_key:
        raise ConfigError(
            "the canary starts through the admin API: give --admin-url and --admin-key "
            "(or TURNOUT_ADMIN_URL and TURNOUT_ADMIN_KEY)"
        )
    vllm_url = inputs.vllm_url or (config.backends[0].url if config.backends else None)
    if not vllm_url:
        raise ConfigError("the gate needs a vLLM: give --vllm or list a backend in the config")
    captures = Path(config.capture.path)
    if not captures.is_file():
        raise RetrainRefused(f"no captures for {inputs.route}: {captures} does not exist")
    registry = AdapterRegistry(config.adapters.store)
    registry.base(config.base_model)  # the push checks against it: fail now, not after training
    stable = route.stable
    adapter, stable_folder, recorded = inputs.route, None, None
    if stable is not None:
        adapter, version = parse_ref(stable)
        manifest = registry.manifest(adapter, version)
        recorded = manifest.provenance.get("training", {}).get("config")
        seen_by_vllm = config.adapters.backend_path or registry.local_folder(adapter, version)
        if seen_by_vllm is None:
            raise ConfigError(
                "adapters.backend_path: the gate loads the stable version into vLLM from the "
                "store's folder as vLLM sees it"
            )
        stable_folder = (
            Path(seen_by_vllm) / adapter / version
            if config.adapters.backend_path
            else Path(seen_by_vllm)
        )
    return _Plan(
        adapter, stable, route.json_schema, captures, registry, vllm_url.rstrip("/"),
        inputs.admin_url.rstrip("/"), inputs.admin_key, stable_folder, recorded,
    )  # fmt: skip


def _train_config(inputs: RetrainInputs, plan: _Plan) -> TrainConfig:
    if inputs.train is not None:
        return inputs.train
    if plan.recorded_train is not None:
        log.info("training with %s's recorded training config", plan.stable)
        return TrainConfig.model_validate(plan.recorded_train)
    log.info("no recorded training config on %s: the defaults", plan.stable or inputs.route)
    return TrainConfig()


def _start_canary(plan: _Plan, route: str, ref: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{plan.admin_url}/admin/routes/{route}/canary",
        data=json.dumps({"version": ref, **body}).encode(),
        method="POST",
        headers={"authorization": f"Bearer {plan.admin_key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            rollout: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        raise TurnoutError(
            f"{ref} is pushed, but the admin API refused its canary ({error.code}):"
            f" {error.read().decode(errors='replace')[:500]}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise TurnoutError(
            f"{ref} is pushed, but the admin API at {plan.admin_url} is unreachable: {error}"
        ) from None
    return rollout


def retrain(config: TurnoutConfig, inputs: RetrainInputs) -> RetrainResult:
    """Run the cycle; `RetrainRefused` when data is short or the gate says no."""
    from training.dataset import build_dataset
    from training.evaluate import AdapterUnderTest, evaluate, write_report
    from training.provenance import attachments, provenance
    from training.qlora import train

    plan = _plan(config, inputs)
    inputs.work.mkdir(parents=True, exist_ok=True)
    dataset = inputs.work / "dataset"
    try:
        card = build_dataset(
            DatasetInputs(inputs.route, plan.captures, inputs.seed_file, plan.schema),
            dataset,
            inputs.dataset,
        )
    except DatasetError as error:
        raise RetrainRefused(f"too little data for {inputs.route}: {error.message}") from None
    examples = card["splits"]["train"]["examples"]
    if examples < inputs.min_train_examples or not card["splits"]["test"]["examples"]:
        raise RetrainRefused(
            f"too little data for {inputs.route}: {examples} training examples "
            f"({inputs.min_train_examples} needed) and {card['splits']['test']['examples']} "
            "held out; nothing was trained or pushed"
        )
    log.info("dataset %s: %s", card["sha256"], card["splits"])

    run = inputs.work / "run"
    trained = train(inputs.base_model, dataset, run, _train_config(inputs, plan), progress=False)
    version = next_version(m.version for m in plan.registry.list(plan.adapter))
    ref = f"{plan.adapter}@{version}"
    candidate = AdapterUnderTest(ref, trained.adapter_dir.resolve())
    stable = (
        AdapterUnderTest(plan.stable, plan.stable_folder)
        if plan.stable and plan.stable_folder
        else None
    )
    report = asyncio.run(
        evaluate(
            plan.vllm_url, inputs.route, candidate, stable, dataset, plan.schema or {},
            list(inputs.suite), inputs.gate,
        )
    )  # fmt: skip
    write_report(report, inputs.work / "report")
    if not report["passed"]:
        raise RetrainRefused(
            f"the gate refused {ref}: {'; '.join(report['reasons'])}; nothing was pushed "
            f"(report: {inputs.work / 'report'})"
        )

    base = plan.registry.base(config.base_model)
    log.info("the gate passed %s: pushing it", ref)
    manifest = plan.registry.push(
        trained.adapter_dir,
        plan.adapter,
        base,
        AdapterLimits(max_lora_rank=config.adapters.max_lora_rank),
        version=version,
        provenance=provenance(dataset, run, report),
        created_by=CREATED_BY,
        attachments=attachments(run),
    )
    body = {"reason": "flywheel run: the gate passed", **(inputs.canary or {})}
    rollout = _start_canary(plan, inputs.route, manifest.ref, body)
    return RetrainResult(manifest.ref, report, rollout)

"""The flywheel's `turnout` commands: `dataset build`, `train`, `eval`, `flywheel run|watch`,
`flywheel-demo`, `captures delete`.

`add_commands` registers them on the main parser's subcommands; model code is imported inside
the command functions, so registering them costs the gateway nothing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.cli import captures as captures_cli
from gateway.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def load_yaml_model(path: Path | None, model: type[Model]) -> Model:
    """`model` from a YAML file (defaults when `path` is None); errors name the key."""
    if path is None:
        return model()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return model.model_validate(raw)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, p['loc'])) or '(top level)'}: {p['msg']}" for p in error.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def _read_schema(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a readable JSON Schema: {error}") from None
    return schema


def _adapter(text: str) -> tuple[str, Path]:
    # Parsed without training.evaluate: argparse runs this before the extras check can.
    ref, separator, folder = text.partition("=")
    if not separator or "@" not in ref:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME@VERSION=FOLDER")
    return ref, Path(folder).resolve()


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from training.dataset import DatasetConfig, DatasetInputs, build_dataset

    config = load_yaml_model(args.config, DatasetConfig)
    denied: frozenset[str] = frozenset()
    if args.keys_file is not None:
        from gateway.protection.auth import load_tenant_keyring

        denied = load_tenant_keyring(args.keys_file).training_denied()
    inputs = DatasetInputs(
        args.route, args.captures, args.seed_file, _read_schema(args.schema), denied
    )
    card = build_dataset(inputs, args.out, config)
    splits = ", ".join(f"{name}: {split['examples']}" for name, split in card["splits"].items())
    print(f"Wrote {args.out} ({splits}; removed {card['removed']}; sha256 {card['sha256']})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.qlora import TrainConfig, train

    config = load_yaml_model(args.config, TrainConfig)
    result = train(args.base_model, args.dataset, args.out, config, progress=not args.no_progress)
    metrics = result.metrics
    print(
        f"Adapter for {args.route}: {result.adapter_dir} (best validation loss"
        f" {metrics['best_val_loss']:.4f} at step {metrics['best_step']} of {metrics['steps']},"
        f" {metrics['tokens_per_second']:.0f} tokens/s)"
    )
    try:  # the semantic-drift reference window, beside the adapter (provenance records it)
        from training.drift_reference import record_with_default_encoder

        reference = record_with_default_encoder(args.dataset, args.out)
        print(f"Drift reference: {reference}")
    except ImportError as error:
        print(f"No drift reference recorded: {error}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import asyncio

    from training.evaluate import (
        AdapterUnderTest,
        GateConfig,
        evaluate,
        markdown_summary,
        read_suite,
        write_report,
    )

    gate = load_yaml_model(args.gate, GateConfig)
    schema = _read_schema(args.schema)
    if schema is None:
        raise ConfigError("eval: --schema is required")
    suite = read_suite(args.suite) if args.suite else []
    report = asyncio.run(
        evaluate(
            args.vllm,
            args.route,
            AdapterUnderTest(*args.candidate),
            AdapterUnderTest(*args.stable) if args.stable else None,
            args.dataset,
            schema,
            suite,
            gate,
        )
    )
    write_report(report, args.report)
    print(markdown_summary(report))
    return 0 if report["passed"] else 1


def cmd_flywheel_demo(args: argparse.Namespace) -> int:
    from gateway.cli.flywheel_demo import main

    return main([*(["--work", str(args.work)] if args.work else []), "--seed", str(args.seed)])


def cmd_flywheel_run(args: argparse.Namespace) -> int:
    from gateway.config import load_config, with_environment
    from gateway.environment import Environment
    from training.dataset import DatasetConfig
    from training.evaluate import GateConfig, read_suite
    from training.qlora import TrainConfig
    from training.retrain import RetrainInputs, RetrainRefused, retrain

    config = with_environment(load_config(args.config))
    env = Environment.read()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    inputs = RetrainInputs(
        route=args.route,
        base_model=args.base_model,
        work=args.work or args.work_root / args.route / stamp,
        vllm_url=args.vllm,
        admin_url=args.admin_url or env.admin_url,
        admin_key=args.admin_key or env.admin_key,
        seed_file=args.seed_file,
        dataset=load_yaml_model(args.dataset_config, DatasetConfig),
        train=load_yaml_model(args.train_config, TrainConfig) if args.train_config else None,
        gate=load_yaml_model(args.gate_config, GateConfig),
        suite=read_suite(args.suite) if args.suite else (),
        min_train_examples=args.min_train_examples,
        canary={"steps": [float(s) for s in args.canary_steps.split(",")]}
        if args.canary_steps
        else None,
    )
    try:
        result = retrain(config, inputs)
    except RetrainRefused as refused:
        print(f"turnout: flywheel run: {refused.message}", file=sys.stderr)
        return 1
    print(
        f"pushed {result.ref} (gate passed on {result.report['test_examples']} held-out examples)"
        f" and started its canary on {args.route}: {json.dumps(result.rollout)}",
        flush=True,
    )
    return 0


def _default_retrain_command(args: argparse.Namespace) -> str:
    if not args.base_model:
        raise ConfigError("flywheel watch: give --command, or --base-model for `flywheel run`")
    return shlex.join(
        [sys.executable, "-m", "gateway.cli", "flywheel", "run", "--route", args.route,
         "--config", str(args.config), "--base-model", args.base_model]
    )  # fmt: skip


def cmd_flywheel_watch(args: argparse.Namespace) -> int:
    from training.trigger import TriggerConfig, watch

    config = TriggerConfig(
        schema_invalid_rate=args.schema_invalid_rate,
        refusal_rate=args.refusal_rate,
        drift_psi=args.drift_psi,
        min_new_failures=args.min_new_failures,
    )
    for decision in watch(
        args.gateway,
        args.route,
        args.captures,
        args.on_retrain or _default_retrain_command(args),
        config,
        args.interval,
        args.rounds,
    ):
        print(("retrain: " if decision.retrain else "wait: ") + decision.reason, flush=True)
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `dataset build`, `train`, `eval` and `flywheel-demo` on `subparsers`."""
    dataset = subparsers.add_parser("dataset", help="training datasets from captures")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True)
    build = dataset_commands.add_parser(
        "build", help="captures + corrections + seed file -> chat JSONL splits and a card"
    )
    build.add_argument("route")
    build.add_argument("--captures", type=Path, help="capture SQLite file")
    build.add_argument("--seed-file", type=Path, help="chat JSONL with the answers to learn")
    build.add_argument("--schema", type=Path, help="the route's JSON Schema (labels, validity)")
    build.add_argument("--config", type=Path, help="dataset.yaml (DatasetConfig)")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument(
        "--keys-file", type=Path, help="tenants' keys file: leave out tenants with training: deny"
    )
    build.set_defaults(run=cmd_dataset_build)
    captures_cli.add_commands(subparsers)

    train = subparsers.add_parser("train", help="train a QLoRA adapter for a route")
    train.add_argument("route")
    train.add_argument("--dataset", type=Path, required=True, help="a `dataset build` folder")
    train.add_argument("--base-model", required=True, help="the base model's folder")
    train.add_argument("--config", type=Path, help="train.yaml (TrainConfig)")
    train.add_argument("--out", type=Path, required=True, help="resumes if it has checkpoints")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=cmd_train)

    gate = subparsers.add_parser("eval", help="gate a candidate adapter against the stable one")
    gate.add_argument("route")
    gate.add_argument("--vllm", required=True, help="vLLM origin (runtime LoRA loading on)")
    gate.add_argument("--candidate", type=_adapter, required=True, help="NAME@VERSION=FOLDER")
    gate.add_argument("--stable", type=_adapter, help="NAME@VERSION=FOLDER")
    gate.add_argument("--dataset", type=Path, required=True)
    gate.add_argument("--schema", type=Path, required=True)
    gate.add_argument("--suite", type=Path, help="regression suite JSONL")
    gate.add_argument("--gate", type=Path, help="gate.yaml (GateConfig)")
    gate.add_argument("--report", type=Path, required=True, help="folder for report.json/.md")
    gate.set_defaults(run=cmd_eval)

    demo = subparsers.add_parser(
        "flywheel-demo", help="capture -> dataset -> train -> gate on the demo model (CPU)"
    )
    demo.add_argument("--work", type=Path)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_flywheel_demo)

    flywheel = subparsers.add_parser("flywheel", help="retrain automatically on bad signals")
    flywheel_commands = flywheel.add_subparsers(dest="flywheel_command", required=True)
    watcher = flywheel_commands.add_parser(
        "watch", help="watch a route's signals; run the training command when they go bad"
    )
    watcher.add_argument("route")
    watcher.add_argument("--gateway", required=True, help="the gateway's origin (/metrics)")
    watcher.add_argument("--captures", type=Path, required=True, help="the capture SQLite file")
    watcher.add_argument(
        "--command",
        dest="on_retrain",
        help="what retraining runs (a process); default: `turnout flywheel run` for the route",
    )
    watcher.add_argument("--config", type=Path, default=Path("turnout.yaml"), help="for run")
    watcher.add_argument("--base-model", help="for `flywheel run`: the base model's weights")
    watcher.add_argument("--schema-invalid-rate", type=float, default=0.2)
    watcher.add_argument("--refusal-rate", type=float, default=0.2)
    watcher.add_argument("--drift-psi", type=float, default=0.25)
    watcher.add_argument("--min-new-failures", type=int, default=200)
    watcher.add_argument("--interval", type=float, default=60.0, help="seconds between reads")
    watcher.add_argument("--rounds", type=int, help="stop after this many reads")
    watcher.set_defaults(run=cmd_flywheel_watch)

    cycle = flywheel_commands.add_parser(
        "run",
        help="one retraining cycle: captures -> dataset -> train -> gate -> push -> canary",
    )
    cycle.add_argument("--route", required=True)
    cycle.add_argument("--config", type=Path, default=Path("turnout.yaml"), help="the gateway's")
    cycle.add_argument("--base-model", required=True, help="the base model's weights (folder)")
    cycle.add_argument("--work", type=Path, help="the run's folder (default: under --work-root)")
    cycle.add_argument(
        "--work-root", type=Path, default=Path(".turnout/retrain"), help="ROUTE/TIME under it"
    )
    cycle.add_argument("--vllm", help="the vLLM that gates (default: the first backend)")
    cycle.add_argument("--admin-url", help="the gateway's admin API (env TURNOUT_ADMIN_URL)")
    cycle.add_argument("--admin-key", help="an admin key (env TURNOUT_ADMIN_KEY)")
    cycle.add_argument("--seed-file", type=Path, help="chat JSONL added to the captures")
    cycle.add_argument("--dataset-config", type=Path, help="dataset.yaml (DatasetConfig)")
    cycle.add_argument(
        "--train-config", type=Path, help="train.yaml (default: the stable version's recorded)"
    )
    cycle.add_argument("--gate-config", type=Path, help="gate.yaml (GateConfig)")
    cycle.add_argument("--suite", type=Path, help="regression suite JSONL")
    cycle.add_argument("--min-train-examples", type=int, default=50)
    cycle.add_argument("--canary-steps", help="comma-separated weights (default: the route's)")
    cycle.set_defaults(run=cmd_flywheel_run)

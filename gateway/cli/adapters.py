"""`turnout adapters push|list|show|verify|rm`: the registry from the command line."""

from __future__ import annotations

import argparse
import asyncio
import zipfile
from pathlib import Path
from typing import Any

from adapters.base_model import BaseModelProfile, profile_base_model
from adapters.errors import AdapterInUse, AdapterNotFound, AdapterRefused
from adapters.names import parse_ref
from adapters.registry import AdapterRegistry
from adapters.validate import AdapterLimits
from gateway.config import TurnoutConfig, load_config
from gateway.environment import STORE, Environment
from gateway.errors import ConfigError
from gateway.rollouts.state import stored_rollouts


def _config(args: argparse.Namespace) -> TurnoutConfig | None:
    path: Path = args.config
    return load_config(path) if path.is_file() else None


def _registry(args: argparse.Namespace, config: TurnoutConfig | None) -> AdapterRegistry:
    """The store from --store, else the config file, else $TURNOUT_STORE."""
    store = args.store or (config.adapters.store if config else Environment.read().store)
    if not store:
        raise ConfigError(f"no adapter store: pass --store, set {STORE}, or use --config")
    return AdapterRegistry(store)


def _limits(config: TurnoutConfig | None) -> AdapterLimits:
    return AdapterLimits(max_lora_rank=(config or TurnoutConfig()).adapters.max_lora_rank)


def _base(
    args: argparse.Namespace, registry: AdapterRegistry, config: TurnoutConfig | None
) -> BaseModelProfile:
    """The base to check against: --base-model DIR (recorded in the store), else the store's."""
    name = args.base_name or (config or TurnoutConfig()).base_model
    if args.base_model is not None:
        profile = profile_base_model(args.base_model, name)
        registry.save_base(profile)
        return profile
    try:
        return registry.base(name)
    except AdapterNotFound:
        if config is not None and Path(config.embedded.model).is_dir():
            profile = profile_base_model(Path(config.embedded.model), name)
            registry.save_base(profile)
            return profile
        raise


def _summary(manifest: Any) -> str:
    return (
        f"{manifest.ref:<32} rank {manifest.rank:<3} {manifest.size_bytes / 1e6:8.2f} MB  "
        f"{manifest.created_at:%Y-%m-%d %H:%M} by {manifest.created_by}"
    )


def _drift_reference(args: argparse.Namespace) -> Path | None:
    """The semantic-drift window to attach: --drift-reference FILE, else the one `turnout
    train` writes beside the adapter folder (RUN/drift_reference.npz next to RUN/adapter)."""
    from training.drift_reference import REFERENCE_FILE

    if args.no_drift_reference:
        return None
    if args.drift_reference is not None:
        if not args.drift_reference.is_file():
            raise AdapterRefused("layout", f"no drift reference at {args.drift_reference}")
        return Path(args.drift_reference)
    beside = args.dir.resolve().parent / REFERENCE_FILE
    return beside if beside.is_file() else None


def _reference_attachment(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The attachment and the provenance record for the reference window in `path`."""
    from training.drift_reference import REFERENCE_FILE, file_provenance

    try:
        record = file_provenance(path)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise AdapterRefused("layout", f"{path} is not a drift reference window: {error}") from None
    return {REFERENCE_FILE: path.read_bytes()}, {"drift_reference": record}


def cmd_push(args: argparse.Namespace) -> int:
    config = _config(args)
    registry = _registry(args, config)
    reference = _drift_reference(args)
    attachments, provenance = _reference_attachment(reference) if reference else ({}, {})
    manifest = registry.push(
        args.dir, args.name, _base(args, registry, config), _limits(config), version=args.version,
        provenance=provenance, attachments=attachments,
    )  # fmt: skip
    print(f"pushed {manifest.ref} to {registry.url}")
    if reference is not None:
        print(f"with the drift reference {reference}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    config = _config(args)
    for manifest in _registry(args, config).list(args.name):
        print(_summary(manifest))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = _config(args)
    manifest = _registry(args, config).manifest(*parse_ref(args.ref))
    print(manifest.model_dump_json(indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    config = _config(args)
    registry = _registry(args, config)
    name, version = parse_ref(args.ref)
    manifest = registry.verify(name, version, _base(args, registry, config), _limits(config))
    print(f"{manifest.ref}: OK ({len(manifest.files)} files, checksums and checks pass)")
    return 0


def _routes_using(ref: str, config: TurnoutConfig, config_path: Path) -> list[str]:
    """Where `ref` may take traffic: routes of the config file, as stable or candidate, and
    rollouts the gateways run now (a canary started through the admin API is in no file)."""
    running = dict(sorted(asyncio.run(stored_rollouts(config.state)).items()))
    sources = ((str(config_path), config.routes), ("running rollout", running))
    return [
        f"{route} ({arm}, {where})"
        for where, routes in sources
        for route, r in routes.items()
        for arm, version in (("stable", r.stable), ("candidate", r.candidate))
        if version == ref
    ]


def cmd_rm(args: argparse.Namespace) -> int:
    config = _config(args)
    name, version = parse_ref(args.ref)
    ref = f"{name}@{version}"
    if config is not None:
        users = _routes_using(ref, config, args.config)
        if users:
            raise AdapterInUse(f"{ref} is routed by {', '.join(users)}")
    _registry(args, config).remove(name, version)
    print(f"removed {ref}")
    return 0


def add_commands(commands: Any) -> None:
    """Register `adapters ...` on the `turnout` parser's subcommands."""
    adapters = commands.add_parser("adapters", help="the adapter registry")
    sub = adapters.add_subparsers(dest="adapters_command", required=True)

    def command(name: str, run: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        parser.add_argument("--config", type=Path, default=Path("turnout.yaml"))
        parser.add_argument("--store", help=f"a folder or fsspec URL (default: config, ${STORE})")
        parser.set_defaults(run=run)
        return parser

    push = command("push", cmd_push, "validate a PEFT adapter folder and store it as a version")
    push.add_argument("dir", type=Path)
    push.add_argument("--name", required=True)
    push.add_argument("--version", help="default: the next vN")
    push.add_argument("--base-model", type=Path, help="the base model folder to check against")
    push.add_argument("--base-name", help="the base's served name (default: config base_model)")
    push.add_argument(
        "--drift-reference",
        type=Path,
        help="the semantic-drift window to attach (default: drift_reference.npz beside DIR)",
    )
    push.add_argument("--no-drift-reference", action="store_true", help="attach no drift reference")
    listing = command("list", cmd_list, "list versions")
    listing.add_argument("name", nargs="?")
    show = command("show", cmd_show, "print a version's manifest")
    show.add_argument("ref", metavar="NAME@VERSION")
    verify = command("verify", cmd_verify, "check a version's files against its manifest")
    verify.add_argument("ref", metavar="NAME@VERSION")
    verify.add_argument("--base-model", type=Path)
    verify.add_argument("--base-name")
    rm = command("rm", cmd_rm, "remove a version no route uses")
    rm.add_argument("ref", metavar="NAME@VERSION")
    from gateway.cli.placement import add_arguments as placement_arguments

    placement_arguments(
        sub.add_parser("placement", help="which backend holds which version, and why (admin API)")
    )

"""`turnout captures delete --tenant T`: remove a tenant's captured traffic from a capture file.

Deletes every capture and feedback row of the tenant, writes an audit record into the file,
and prints the counts and the datasets built earlier that hold the tenant's data. Run against
a file a gateway is writing, records still in that gateway's queue are written after the
deletion; `DELETE /admin/tenants/{tenant}/captures` on the gateway deletes after them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError


def _captures_path(args: argparse.Namespace) -> Path:
    if args.captures is not None:
        return Path(args.captures)
    from gateway.config import load_config

    return Path(load_config(args.config).capture.path)


def cmd_captures_delete(args: argparse.Namespace) -> int:
    from training.capture_store import connect, delete_tenant

    path = _captures_path(args)
    if not path.is_file():
        raise ConfigError(f"{path}: no capture file there")
    connection = connect(path)
    try:
        deletion = delete_tenant(connection, args.tenant, args.actor)
    finally:
        connection.close()
    print(json.dumps(deletion.as_dict(), indent=2))
    if deletion.datasets:
        print(
            f"{len(deletion.datasets)} dataset(s) built earlier hold {args.tenant}'s data:"
            " rebuild them (and retrain what they trained) to leave it out."
        )
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `captures delete` on the top-level subcommands."""
    captures = subparsers.add_parser("captures", help="the capture file's data, by tenant")
    commands = captures.add_subparsers(dest="captures_command", required=True)
    delete = commands.add_parser(
        "delete", help="delete every capture and feedback row of a tenant (audited)"
    )
    delete.add_argument("--tenant", required=True, help="the tenant, as the keys file names it")
    where = delete.add_mutually_exclusive_group()
    where.add_argument("--captures", type=Path, help="the capture SQLite file")
    where.add_argument(
        "--config", type=Path, default=Path("turnout.yaml"), help="read capture.path from it"
    )
    delete.add_argument("--actor", default="cli", help="who asked, for the audit record")
    delete.set_defaults(run=cmd_captures_delete)

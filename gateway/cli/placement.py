"""`turnout adapters placement`: which backend holds which version, and why (the admin API)."""

from __future__ import annotations

import argparse

from gateway.cli.rollouts import DEFAULT_ADMIN_URL


def cmd_placement(args: argparse.Namespace) -> int:
    from gateway.cli.rollouts import _call

    return _call(args, "GET", "placement", None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help=f"the gateway's admin URL (env TURNOUT_ADMIN_URL, else {DEFAULT_ADMIN_URL})"
    )
    parser.add_argument("--key", help="admin key (env TURNOUT_ADMIN_KEY)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds")
    parser.set_defaults(run=cmd_placement)

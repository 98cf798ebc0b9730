"""`turnout rollout status|start|promote|rollback|pause|resume`: the admin API from a shell.

The admin URL and key come from `--url`/`--key` or `TURNOUT_ADMIN_URL`/`TURNOUT_ADMIN_KEY`.
Each command prints the answer as JSON; an error prints the API's message and exits with 1.
It speaks HTTP with the standard library, so the base install (no extras) runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.environment import Environment

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None) -> int:
    env = Environment.read()
    url = (args.url or env.admin_url or DEFAULT_ADMIN_URL).rstrip("/")
    key = args.key or env.admin_key
    if not key:
        print("turnout: an admin key is needed: --key or TURNOUT_ADMIN_KEY", file=sys.stderr)
        return 2
    request = urllib.request.Request(
        f"{url}/admin/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            answer = response.read()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text
        print(f"turnout: {error.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as error:
        print(f"turnout: cannot reach the admin API at {url}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(answer), indent=2))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _call(args, "GET", f"routes/{args.route}" if args.route else "routes", None)


def cmd_start(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"version": args.version, "mode": args.mode, "reason": args.reason}
    if args.weight is not None:
        body["weight"] = args.weight
    if args.steps is not None:
        body["steps"] = [float(s) for s in args.steps.split(",")]
    if args.shadow_percent is not None:
        body["shadow_percent"] = args.shadow_percent
    return _call(args, "POST", f"routes/{args.route}/canary", body)


def cmd_operation(args: argparse.Namespace) -> int:
    path = args.operation.replace("_", "-")
    return _call(args, "POST", f"routes/{args.route}/{path}", {"reason": args.reason})


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `rollout ...` on the `turnout` command's subparsers."""
    rollout = subparsers.add_parser("rollout", help="inspect and steer rollouts (admin API)")
    rollout.add_argument(
        "--url", help=f"admin API origin (env TURNOUT_ADMIN_URL, {DEFAULT_ADMIN_URL})"
    )
    rollout.add_argument("--key", help="admin key (env TURNOUT_ADMIN_KEY)")
    rollout.add_argument("--timeout", type=float, default=10.0, help="seconds")
    commands = rollout.add_subparsers(dest="rollout_command", required=True)

    status = commands.add_parser("status", help="every route, or one route, with its rollout")
    status.add_argument("route", nargs="?")
    status.set_defaults(run=cmd_status)

    start = commands.add_parser("start", help="start a canary, an A/B split or a shadow")
    start.add_argument("route")
    start.add_argument("--version", required=True, help="`v2` or `name@v2`")
    start.add_argument("--mode", choices=["canary", "ab", "shadow"], default="canary")
    start.add_argument("--shadow-percent", type=float, help="shadow: share copied, in percent")
    split = start.add_mutually_exclusive_group()
    split.add_argument("--weight", type=float, help="one fixed weight in percent")
    split.add_argument("--steps", help="comma-separated weights, e.g. 5,25,50,100")
    start.add_argument("--reason", default="")
    start.set_defaults(run=cmd_start)

    for operation, text in (
        ("promote", "make the candidate stable now"),
        ("rollback", "send no more traffic to the candidate"),
        ("pause", "hold the current weight; no automatic decisions"),
        ("resume", "let a paused rollout go on"),
        ("promote_to_canary", "a shadow's candidate starts serving as a canary"),
    ):
        command = commands.add_parser(operation.replace("_", "-"), help=text)
        command.add_argument("route")
        command.add_argument("--reason", default="")
        command.set_defaults(run=cmd_operation, operation=operation)

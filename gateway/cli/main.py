"""The `turnout` command: demo model, serving, config checks and benchmarks."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from gateway.bench import fleet as fleet_bench
from gateway.bench import rollback as rollback_bench
from gateway.bench import shadow as shadow_bench
from gateway.bench import soak as soak_bench
from gateway.bench import streaming as streaming_bench
from gateway.cli import adapters as adapters_cli
from gateway.cli import rollouts as rollout_cli
from gateway.cli import training as training_cli
from gateway.cli.extras import missing_extra_message
from gateway.config import (
    BackendConfig,
    TurnoutConfig,
    config_json_schema,
    load_config,
    with_environment,
)
from gateway.environment import Environment
from gateway.errors import ConfigError, TurnoutError
from gateway.protection import auth
from monitoring import bench as signals_bench
from monitoring import signals_cli
from training import bench as train_bench

DEFAULT_CONFIG = Path("turnout.yaml")
DEFAULT_LOG_DIR = Path(".turnout/logs")


def _with_overrides(
    config: TurnoutConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
) -> TurnoutConfig:
    overrides = {"host": host, "port": port, "workers": workers}
    server = config.server.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return config.model_copy(update={"server": server})


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.serving import startup
    from gateway.serving.embedded_vllm import EmbeddedVllm, VllmSupervisor, free_port, vllm_command
    from gateway.serving.server import serve

    config = _with_overrides(with_environment(load_config(args.config)), port=args.port)
    with startup.reported_as_start_failure():
        if config.server.workers > 1:
            raise ConfigError(
                f"server.workers is {config.server.workers}: `turnout up` runs one gateway "
                "process; `turnout serve --workers N` runs several."
            )
        # Everything that can be found out in a second is, before vLLM takes its minute.
        startup.check_adapters(config, verify=True)
        startup.check_embedded_model(config)
        startup.check_key_files(config)
        port = free_port()
        vllm = EmbeddedVllm(
            vllm_command(config.embedded, config.adapters, config.base_model, port),
            port,
            args.log_dir / "vllm.log",
        )
        serving = config.model_copy(update={"backends": [BackendConfig(url=vllm.url)]})
        listeners = startup.bind_listeners(serving.server)
        supervisor = VllmSupervisor(vllm, config.embedded.startup_timeout_s)
        try:
            if config.state.redis_url:
                startup.check_redis(config.state.redis_url)
            _say(f"Starting vLLM on port {port} (log: {vllm.log_path}) ...")
            vllm.start()
            vllm.wait_ready(config.embedded.startup_timeout_s)
            supervisor.start()
            ready = startup.banner(
                serving,
                listeners.port,
                f"vLLM at {vllm.url}, log: {vllm.log_path}",
                "Ctrl-C stops the gateway and vLLM.",
            )
            serve(serving, args.config, listeners, _say, ready)
        except KeyboardInterrupt:
            pass
        finally:
            listeners.close()
            if vllm.pid is not None:
                _say("Stopping vLLM ...")
            supervisor.stop()
            vllm.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serving import startup, workers
    from gateway.serving.server import serve

    config = _with_overrides(
        with_environment(load_config(args.config)),
        host=args.host,
        port=args.port,
        workers=args.workers,
    )
    if not config.backends:
        raise TurnoutError(f"{args.config}: backends: `turnout serve` needs at least one backend.")
    if not 1 <= config.server.workers <= 64:
        raise ConfigError(f"--workers: {config.server.workers} is not between 1 and 64.")
    if args.worker_index is not None:  # one of several, started by the command below
        with startup.reported_as_start_failure():
            workers.run_worker(
                config, args.config, args.worker_index, args.worker_fds,
                Path(args.metrics_dir), _say,
            )  # fmt: skip
        return 0
    with startup.reported_as_start_failure():
        startup.check_adapters(config, verify=False)  # verified as they load
        workers.check_workers(config)
        several = config.server.workers > 1
        sets = (
            startup.bind_worker_listeners(config.server)
            if several
            else [startup.bind_listeners(config.server)]
        )
        listeners = sets[0]
        try:
            if config.state.redis_url:
                startup.check_redis(config.state.redis_url)
            backends = ", ".join(backend.url for backend in config.backends)
            ready = startup.banner(
                config, listeners.port, f"backends: {backends}", "Ctrl-C stops the gateway."
            )
            if several:
                command = workers.worker_command(
                    ["--config", str(args.config), "--host", config.server.host,
                     "--port", str(listeners.port), "--workers", str(config.server.workers)]
                    + (["--debug"] if args.debug else [])
                )  # fmt: skip
                return workers.serve_workers(command, config, sets, _say, ready)
            serve(config, args.config, listeners, _say, ready)
        except KeyboardInterrupt:
            pass
        finally:
            for bound in sets:
                bound.close()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.serving import startup

    config = load_config(args.file)
    try:
        skipped = startup.check_adapters_from_here(config)
    except TurnoutError as error:
        raise startup.startup_failure(error, prefix=f"{args.file}: ") from error
    if skipped is not None:
        print(f"{args.file}: {skipped}", file=sys.stderr)
    print(f"{args.file}: OK ({len(config.routes)} routes, {len(config.backends)} backends)")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2))
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from adapters.demo import DEMO_ADAPTERS, DEMO_VERSION, DemoModelSpec, write_demo_model

    write_demo_model(args.dir, DemoModelSpec(seed=args.seed))
    names = ", ".join(f"{name}@{DEMO_VERSION}" for name in DEMO_ADAPTERS)
    print(f"Wrote the demo base model to {args.dir / 'base'} and adapters {names}")
    return 0


def cmd_bench_overhead(args: argparse.Namespace) -> int:
    from gateway.bench.overhead import run_overhead_benchmark

    report = run_overhead_benchmark(
        upstream=args.upstream,
        duration_s=args.duration,
        config_path=args.config,
    )
    if args.json:
        for level in report:
            print(json.dumps(level))
    else:
        for level in report:
            print(json.dumps(level, indent=2))
    return 0


def cmd_bench_lora(args: argparse.Namespace) -> int:
    from gateway.bench.lora import run_lora_benchmark

    report = run_lora_benchmark(args.config, args.duration)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


def cmd_bench_contracts(args: argparse.Namespace) -> int:
    from gateway.bench.contracts import run_contracts_benchmark

    report = run_contracts_benchmark()
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


DEBUG_HELP = "show the traceback of an error (also TURNOUT_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="start a local vLLM and the gateway in front of it")
    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    up.add_argument("--port", type=int, help="gateway port (default: server.port)")
    up.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR)
    up.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    up.set_defaults(run=cmd_up)

    serve = commands.add_parser("serve", help="run the gateway against the configured backends")
    serve.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers", type=int, help="gateway processes sharing the ports (server.workers)"
    )
    # How the command above starts each of its workers (not for people).
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fds", help=argparse.SUPPRESS)
    serve.add_argument("--metrics-dir", help=argparse.SUPPRESS)
    serve.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    serve.set_defaults(run=cmd_serve)

    config = commands.add_parser("config", help="check a config file or print its JSON Schema")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file", type=Path)
    check.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    check.set_defaults(run=cmd_config_check)
    schema = config_commands.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(run=cmd_config_schema)

    demo = commands.add_parser("demo-model", help="write the tiny demo model and adapters")
    demo.add_argument("dir", type=Path)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=cmd_demo_model)

    adapters_cli.add_commands(commands)
    rollout_cli.add_commands(commands)
    auth.add_commands(commands)
    training_cli.add_commands(commands)

    bench = commands.add_parser("bench", help="benchmarks that print JSON")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    overhead = bench_commands.add_parser(
        "overhead", help="gateway cost against the same upstream called directly"
    )
    overhead.add_argument("--upstream", choices=["stub", "vllm"], default="stub")
    overhead.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    overhead.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="for --upstream vllm: the model"
    )
    overhead.add_argument("--json", action="store_true", help="one JSON object per line")
    overhead.set_defaults(run=cmd_bench_overhead)
    lora = bench_commands.add_parser(
        "lora", help="tokens/s on the base and over 1, 3 and 8 adapters; adapter cold load"
    )
    lora.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the demo model")
    lora.add_argument("--duration", type=float, default=20.0, help="seconds per spread")
    lora.add_argument("--json", action="store_true", help="one JSON object")
    lora.set_defaults(run=cmd_bench_lora)
    contracts = bench_commands.add_parser(
        "contracts", help="cost of judging an answer against a ten-field JSON Schema"
    )
    contracts.add_argument("--json", action="store_true", help="one JSON object")
    contracts.set_defaults(run=cmd_bench_contracts)
    rollback_bench.add_commands(bench_commands)
    fleet_bench.add_commands(bench_commands)
    shadow_bench.add_commands(bench_commands)
    soak_bench.add_commands(bench_commands)
    streaming_bench.add_commands(bench_commands)
    signals_bench.add_commands(bench_commands)
    signals_cli.add_commands(commands)
    train_bench.add_commands(bench_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or Environment.read().debug
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every request at INFO: a refusal judge's calls (one per new answer) would
    # drown the gateway's own lines. Its warnings and errors still show.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        code: int = args.run(args)
    except TurnoutError as error:
        if debug:
            traceback.print_exception(error)
        print(f"turnout: {error.message}", file=sys.stderr)
        status: int = getattr(error, "exit_status", 2)  # a start-up failure knows its own
        return status
    except FileExistsError as error:
        print(f"turnout: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        message = missing_extra_message(error, " ".join(_command_words(args)))
        if message is None:
            return _unexpected(error, debug)
        print(f"turnout: {message}", file=sys.stderr)
        return 2
    except Exception as error:
        return _unexpected(error, debug)
    return code


def _unexpected(error: Exception, debug: bool) -> int:
    """An error nothing expected: one line (the traceback with --debug), exit 1."""
    if debug:
        traceback.print_exception(error)
    hint = "" if debug else " (--debug or TURNOUT_DEBUG=1 shows the traceback)"
    print(f"turnout: {type(error).__name__}: {error}{hint}", file=sys.stderr)
    return 1


def _command_words(args: argparse.Namespace) -> list[str]:
    """The subcommand as typed (`flywheel run`), from argparse's `dest`s."""
    names = ["command", *(k for k in vars(args) if k.endswith("_command") and k != "command")]
    return [str(getattr(args, name)) for name in names if getattr(args, name, None)]


if __name__ == "__main__":
    sys.exit(main())

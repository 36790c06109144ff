"""The `envoy-config` and `demo` subcommands; extproc.cli registers them and hands over the loaded config."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from extproc.config import Config, ConfigError
from extproc.deploy import demo_bundle
from extproc.deploy import envoy_config as ec

COMMANDS: Final = ("envoy-config", "demo")
LOCAL_DEMO_CONFIG: Final = Path(demo_bundle.CONFIG)
# Envoy's own listeners in a generated bootstrap.
_LISTEN: Final = "127.0.0.1:10000"
_ADMIN: Final = "127.0.0.1:9901"


def add_commands(commands: Any) -> None:
    """Add the subcommands to ``commands``, the result of ``ArgumentParser.add_subparsers()``."""
    gen: argparse.ArgumentParser = commands.add_parser(
        "envoy-config",
        help="print Envoy configuration for the plugin set",
        description="Print the ext_proc filter, routes and cluster for the config's plugins (or, with "
        "--bootstrap, a complete Envoy bootstrap). Routes no plugin can match bypass the server.",
    )
    gen.add_argument("--config", required=True, type=Path, help="the server's YAML config file")
    gen.add_argument("--bootstrap", action="store_true", help="print a complete bootstrap (needs --upstream)")
    gen.add_argument("--upstream", help="HOST:PORT of the service behind Envoy (--bootstrap only)")
    gen.add_argument("--listen", help=f"Envoy's HTTP listener (--bootstrap only; default {_LISTEN})")
    gen.add_argument("--admin", help=f"Envoy's admin listener (--bootstrap only; default {_ADMIN})")
    gen.add_argument(
        "--server",
        action="append",
        help="HOST:PORT where Envoy reaches the ext_proc server; repeat for several (default: server.listen)",
    )
    gen.add_argument(
        "--route-cluster",
        help=f"cluster of yours the routes forward to (not with --bootstrap; default {ec.UPSTREAM_CLUSTER})",
    )
    gen.add_argument("--failure-mode-allow", action="store_true", help="let requests through when the server fails")
    gen.add_argument("--no-mode-override", action="store_true", help="ignore the server's per-request mode override")
    gen.add_argument("--message-timeout-ms", type=int, help="default: derived from the plugins' timeout_ms")
    gen.add_argument("--no-health-check", action="store_true", help="leave out the grpc.health.v1 health check")
    gen.add_argument(
        "--route-values",
        action="append",
        metavar="PREFIX=JSON",
        help='plugin values for requests under PREFIX, e.g. \'/premium={"rate-limit": {"rps": 100}}\' '
        "(plugin name -> values, which the plugin sees as `route`); repeatable",
    )
    gen.add_argument("--format", choices=ec.FORMATS, default="yaml")

    demo: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run Envoy, this server and a demo upstream on loopback and show what the plugins do",
    )
    demo.add_argument(
        "--config",
        type=Path,
        help=f"the plugin set (default: {LOCAL_DEMO_CONFIG} when run from a checkout's root, else the demo's "
        "files installed with the package)",
    )
    for name, port, what in (
        ("port", 10000, "Envoy's HTTP listener"),
        ("admin-port", 9901, "Envoy's admin"),
        ("server-port", 50051, "the ext_proc server"),
        ("upstream-port", 8080, "the demo upstream"),
    ):
        demo.add_argument(f"--{name}", type=int, default=port, help=f"{what} (default %(default)s)")


def config_path(args: argparse.Namespace) -> Path:
    """The config file a subcommand loads: --config, or for the demo the checkout's plugin set when run from
    its root (so local edits show), else the copy the wheel ships."""
    if args.config is not None:
        return Path(args.config)
    if LOCAL_DEMO_CONFIG.is_file():
        return LOCAL_DEMO_CONFIG
    bundled = demo_bundle.bundled_config()
    if not bundled.is_file():
        raise ConfigError(
            bundled,
            "",
            "this installation has no demo files (an editable install?): run the demo from the repository root, "
            "or give --config",
        )
    return bundled


def run(args: argparse.Namespace, config: Config, argv: Sequence[str]) -> int:
    if args.command == "demo":
        from extproc.deploy.demo import DemoPorts, run_demo

        ports = DemoPorts(args.port, args.admin_port, args.server_port, args.upstream_port)
        return run_demo(config, ports, sys.stdout)
    return _envoy_config(args, config, argv)


def _envoy_config(args: argparse.Namespace, config: Config, argv: Sequence[str]) -> int:
    misused = _misused_options(args)
    if misused is not None:
        print(f"extproc envoy-config: error: {misused}", file=sys.stderr)
        return 2
    servers = tuple(ec.Endpoint.parse(text, "--server") for text in args.server or ())
    if not servers:
        servers = (ec.Endpoint(config.server.listen_host, config.server.listen_port).dialable(),)
    options = ec.Options(
        servers=servers,
        failure_mode_allow=args.failure_mode_allow,
        allow_mode_override=not args.no_mode_override,
        message_timeout_ms=_positive(args.message_timeout_ms, "--message-timeout-ms"),
        health_check=not args.no_health_check,
        route_cluster=args.route_cluster or ec.UPSTREAM_CLUSTER,
        route_values=tuple(
            ec.RouteValues.parse(text, (p.name for p in config.plugins if p.enabled))
            for text in args.route_values or ()
        ),
    )
    needs = ec.phase_needs(config)
    plan = ec.plan_routes(config.plugins)
    header = [
        f"Generated by: extproc {shlex.join(argv)}",
        "Regenerate it whenever the plugins or their match rules change.",
    ]
    if plan.everything:
        header.append(f"Every path goes through ext_proc: {plan.reason}.")
    if options.message_timeout_ms is None:
        worst = ec.worst_message(needs.plugins)
        margin = worst.envoy_timeout_ms - worst.ms
        header.append(
            f"message_timeout {worst.envoy_timeout_ms} ms: {margin} ms more than the slowest message: {worst}."
        )
    if args.bootstrap:
        proxy = ec.Proxy(
            listen=ec.Endpoint.parse(args.listen or _LISTEN, "--listen"),
            admin=ec.Endpoint.parse(args.admin or _ADMIN, "--admin"),
            upstream=ec.Endpoint.parse(args.upstream, "--upstream"),
        )
        document = ec.bootstrap(config, needs, options, proxy)
    else:
        document = ec.fragment(config, needs, options)
        header.append("Add http_filters ahead of your router, routes to your virtual host, clusters to yours.")
        if config.server.outcome_metadata:
            header.append("access_log shows each plugin's outcome (server.outcome_metadata): put it in your manager.")
        header.append(
            "Set server_header_transformation: PASS_THROUGH in your http_connection_manager, or Envoy "
            "replaces any server header a plugin sets."
        )
    sys.stdout.write(ec.render(document, args.format, header))
    return 0


def _misused_options(args: argparse.Namespace) -> str | None:
    """Why the options do not go together, or None. An option that would be ignored is refused instead."""
    if args.bootstrap:
        if not args.upstream:
            return "--bootstrap needs --upstream HOST:PORT"
        if args.route_cluster is not None:
            return "--route-cluster does not apply with --bootstrap, whose routes forward to --upstream"
        return None
    given = [f"--{name}" for name in ("upstream", "listen", "admin") if getattr(args, name) is not None]
    if given:
        return (
            f"{', '.join(given)} applies only with --bootstrap; without it, the routes forward to "
            f"--route-cluster (a cluster of yours, default {ec.UPSTREAM_CLUSTER!r})"
        )
    return None


def _positive(value: int | None, option: str) -> int | None:
    if value is not None and value <= 0:
        raise ConfigError(Path("command line"), option, f"must be a positive number of milliseconds, got {value}")
    return value

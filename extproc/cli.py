"""The `extproc` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from extproc import __version__, plugin_tools, recording
from extproc.config import (
    LOG_LEVELS,
    Config,
    ConfigError,
    ListenAddress,
    default_memory_limit_mb,
    load_config,
    parse_listen_address,
)
from extproc.deploy import commands as deploy_commands
from extproc.deploy import envoy_config as ec
from extproc.errors import ExtprocError
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.redaction import redact_url
from extproc.tls import PlaintextRefused, check_plaintext


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extproc", description="Envoy ext_proc server running Extism plugins")
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve Envoy's ext_proc streams")
    serve.add_argument("--config", required=True, type=Path, help="YAML config file")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="overrides server.log_level")
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (one core each); worker i listens on the listen port + i",
    )
    serve.add_argument("--admin-listen", help="HOST:PORT of the admin HTTP endpoint (overrides server.admin_listen)")
    recording.add_arguments(serve, _positive)

    check = commands.add_parser("check", help="validate the config and load every plugin, then exit")
    check.add_argument("--config", required=True, type=Path, help="YAML config file")
    check.add_argument(
        "--envoy-config",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="an Envoy config with the ext_proc filter: warn if its message_timeout is shorter than the "
        "slowest plugin chain can take (repeat for several)",
    )

    deploy_commands.add_commands(commands)
    plugin_tools.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        # Here rather than at exit, so that a closed stdout is met by the handler below.
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`extproc check ... | head -1`): end quietly, with the status of a process
        # SIGPIPE ended. Python flushes stdout again at exit, so it must point somewhere that takes the rest.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plugin":
        # No server config: a plugin is tested or measured on its own.
        return plugin_tools.main(args)
    try:
        config = load_config(deploy_commands.config_path(args))
        if args.command == "check":
            return _check(config, args.envoy_config)
        if args.command in deploy_commands.COMMANDS:
            return deploy_commands.run(args, config, sys.argv[1:] if argv is None else argv)
        return _serve(config, args)
    except BrokenPipeError:
        raise  # not an error of the command: main() handles it
    except (ExtprocError, OSError) as exc:
        print(f"extproc: error: {exc}", file=sys.stderr)
        return 1


def _check(config: Config, envoy_configs: Sequence[Path]) -> int:
    plugins = PluginSet.load(config, PluginThreads(config.server.plugin_threads))
    try:
        # Read before printing anything: a file that cannot be read is an error, not half a report.
        envoy = [(path, ec.read_filter_timeouts(path)) for path in envoy_configs]
        listen = config.server.listen_address
        print(f"{config.source}: ok, {len(config.plugins)} plugin(s), server listens on {listen}")
        state = config.state
        if state.url is not None:
            print(f"  state: {state.backend.value} at {redact_url(state.url)}, key_prefix {state.key_prefix!r}")
        tracing = config.tracing
        if tracing is not None:
            print(
                f"  tracing: OTLP {tracing.protocol} to {redact_url(tracing.endpoint)}, service.name "
                f"{tracing.service_name!r}, sample_ratio {tracing.sample_ratio:g}"
            )
        loaded = {plugin.name: plugin for plugin in plugins.plugins}
        for index, spec in enumerate(config.plugins):
            plugin = loaded.get(spec.name)
            if plugin is None:
                print(f"  {spec.name}: disabled ({spec.path})")
                continue
            source = plugin.phase_source.value
            print(f"  {spec.name}: {spec.path} sha256:{plugin.sha256[:16]} calls: {_phases(plugin)} (from {source})")
            _check_body_memory(f"plugins[{index}]", plugin, config.server.max_body_bytes)
            candidate = None if plugins.rollout is None else plugins.rollout.candidates.get(spec.name)
            if candidate is not None:
                wanted = candidate.config
                print(
                    f"    candidate ({wanted.mode.value}, fraction {wanted.fraction:g}): {wanted.path} "
                    f"sha256:{candidate.plugin.sha256[:16]} calls: {_phases(candidate.plugin)}"
                )
        worst = ec.worst_message(ec.serving(plugins))
        for path, filters in envoy:
            for found in filters:
                _check_message_timeout(path, found, worst)
    finally:
        plugins.close()
    return 0


def _check_body_memory(key: str, plugin: LoadedPlugin, max_body_bytes: int) -> None:
    """Warn when a plugin that reads bodies may not have the memory for the largest body the server buffers."""
    reads_bodies = bool(plugin.request_body_phases) or any(phase.is_body for phase in plugin.exports)
    limit = plugin.spec.memory_limit(max_body_bytes)
    needs = default_memory_limit_mb(max_body_bytes)
    if not reads_bodies or limit >= needs:
        return
    print(
        f"extproc: warning: {key}.memory_limit_mb ({plugin.name}) is {limit} MiB, less than a body plugin needs for "
        f"server.max_body_bytes ({max_body_bytes} bytes): four times the body plus 8 MiB, {needs} MiB. Larger "
        "bodies would fail the plugin's calls (its on_error answers). Raise memory_limit_mb, lower "
        "server.max_body_bytes, or measure the plugin: `extproc plugin bench PLUGIN.wasm --body-size N`.",
        file=sys.stderr,
    )


def _phases(plugin: LoadedPlugin) -> str:
    return ", ".join(phase.value for phase in sorted(plugin.exports, key=list(Phase).index)) or "nothing"


def _check_message_timeout(path: Path, found: ec.FilterTimeouts, worst: ec.MessageBudget) -> None:
    """Warn when Envoy would stop waiting for a reply the server may still be working on."""
    where = f"{path}: {found.key}.message_timeout"
    if found.message_timeout_ms >= worst.ms:
        print(f"  envoy: {where} {found.message_timeout_ms} ms covers the slowest message: {worst}")
        return
    # The server never sends override_message_timeout, so max_message_timeout cannot lengthen a wait.
    unused = (
        "" if found.max_message_timeout_ms is None else " (max_message_timeout does not help: the server never asks)"
    )
    print(
        f"extproc: warning: {where} is {found.message_timeout_ms} ms, shorter than the slowest message: {worst}. "
        "Envoy would give up (504, or the request goes on unprocessed with failure_mode_allow) while the server "
        f"still works{unused}; `extproc envoy-config` derives {worst.envoy_timeout_ms} ms.",
        file=sys.stderr,
    )


def _serve(config: Config, args: argparse.Namespace) -> int:
    from extproc import logs
    from extproc.server import serve
    from extproc.workers import Supervisor

    server = config.server
    log_level = args.log_level or server.log_level
    logs.configure(log_level, server.log_format)
    listen = _address(config, args.listen, "--listen") or ListenAddress(server.listen_host, server.listen_port)
    admin = _address(config, args.admin_listen, "--admin-listen") or server.admin_listen
    record = recording.options_from(args, config)
    if args.workers > 1:
        Supervisor(config, listen, args.workers, log_level, admin, record).run()
    else:
        serve(config, listen.host, listen.port, admin, recorder=None if record is None else recording.Recorder(record))
    return 0


def _address(config: Config, flag: str | None, key: str) -> ListenAddress | None:
    """The address a flag gives, held to the same plaintext-off-loopback rule as the config."""
    if flag is None:
        return None
    address = parse_listen_address(flag, source=config.source, key=key)
    try:
        check_plaintext(config.server, address, tls_applies=key == "--listen")
    except PlaintextRefused as exc:
        raise ConfigError(config.source, key, str(exc)) from None
    return address


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value

"""The `extproc` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from extproc import __version__
from extproc.config import Config, ConfigError, ListenAddress, load_config
from extproc.errors import ExtprocError
from extproc.plugins.registry import PluginSet


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extproc", description="Envoy ext_proc server running Extism plugins")
    parser.add_argument("--version", action="version", version=f"extproc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve Envoy's ext_proc streams")
    serve.add_argument("--config", required=True, type=Path, help="YAML config file")
    serve.add_argument("--listen", help="HOST:PORT to listen on (overrides server.listen)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides server.log_level")

    check = commands.add_parser("check", help="validate the config and load every plugin, then exit")
    check.add_argument("--config", required=True, type=Path, help="YAML config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "check":
            return _check(config)
        return _serve(config, args.listen, args.log_level)
    except (ConfigError, ExtprocError, OSError) as exc:
        print(f"extproc: error: {exc}", file=sys.stderr)
        return 1


def _check(config: Config) -> int:
    plugins = PluginSet.load(config)
    try:
        listen = config.server.listen_address
        print(f"{config.source}: ok, {len(config.plugins)} plugin(s), server listens on {listen}")
        loaded = {plugin.name: plugin for plugin in plugins.plugins}
        for spec in config.plugins:
            plugin = loaded.get(spec.name)
            if plugin is None:
                print(f"  {spec.name}: disabled ({spec.path})")
                continue
            exports = ", ".join(sorted(export.value for export in plugin.exports))
            print(f"  {spec.name}: {spec.path} sha256:{plugin.sha256[:16]} calls: {exports}")
    finally:
        plugins.close()
    return 0


def _serve(config: Config, listen: str | None, log_level: str | None) -> int:
    from extproc.server import serve

    logging.basicConfig(
        level=(log_level or config.server.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    address = (
        ListenAddress.parse(listen, source=config.source, key="--listen")
        if listen
        else ListenAddress(config.server.listen_host, config.server.listen_port)
    )
    serve(config, address.host, address.port)
    return 0

"""`extproc plugin replay` and `extproc plugin cases`: a module against the calls recorded on real traffic.

Each record (recording.py) is one plugin call: replay gives its input to the module through
`LoadedPlugin.call`, as the server would, and compares what comes out with what was recorded, redacted
as the record was. The report gives, per case, the differences, the failures and the time taken; the exit
status is 0 when every case gave what was recorded, 1 when one did not, 2 when nothing could be replayed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from extproc.comparison import Difference, Plain, Result, differences, plain
from extproc.config import MatchRules, PluginConfig, ServerConfig, load_config
from extproc.errors import ExtprocError, PluginCallError
from extproc.phases import CONFIG_NAMES as PHASE_NAMES
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.runner import shared_threads
from extproc.plugins.store import MemoryStore
from extproc.recording import Record, RecordError, load_records, to_cases
from extproc.testing import plugin_config

# Exit statuses, for CI.
SAME: Final = 0
DIFFERENT: Final = 1
UNUSABLE: Final = 2


class ReplayError(ExtprocError):
    """The replay cannot run as asked."""


def add_commands(tools: Any) -> None:
    """Register `plugin replay` and `plugin cases` on the `plugin` subcommand's subparsers."""
    replay = tools.add_parser("replay", help="run a plugin against calls recorded by extproc serve --record")
    replay.add_argument("wasm", type=Path, metavar="PLUGIN.wasm")
    replay.add_argument("records", type=Path, metavar="DIR", help="the recording, or one plugin's folder of it")
    replay.add_argument("--plugin", metavar="NAME", help="whose records (needed when DIR holds several plugins')")
    settings = replay.add_mutually_exclusive_group()
    settings.add_argument(
        "--server-config",
        type=Path,
        metavar="YAML",
        help="take the plugin's settings and config from this server config",
    )
    settings.add_argument("--config", type=Path, metavar="YAML", help="plugin config: a YAML mapping, as under config:")
    replay.add_argument("--timeout-ms", type=int, default=1000, help="per-call limit without --server-config")

    cases = tools.add_parser("cases", help="turn recorded calls into a CASES.yaml for extproc plugin test")
    cases.add_argument("records", type=Path, metavar="DIR", help="the recording, or one plugin's folder of it")
    cases.add_argument("--plugin", metavar="NAME", help="whose records (needed when DIR holds several plugins')")
    cases.add_argument("--phase", choices=PHASE_NAMES, help="only the calls of this phase")
    cases.add_argument("-o", "--output", type=Path, metavar="CASES.yaml", help="default: standard output")


@dataclass(frozen=True)
class CaseResult:
    record: Record
    output: Plain  # what the module gave, redacted as the record
    differences: tuple[Difference, ...]
    latency_us: float
    reason: str  # why the replayed call failed, or ""

    @property
    def status(self) -> str:
        if not self.differences:
            return "ok"
        return "FAIL" if self.reason else "DIFF"

    def __str__(self) -> str:
        record = self.record
        timing = f"{self.latency_us:,.0f} us (recorded {record.latency_us:,} us)"
        lines = [f"{self.status:<4} {record.case} {record.phase.config_name} {timing}"]
        if self.reason:
            lines.append(f"  {self.reason}")
        lines.extend(f"  {line}" for difference in self.differences for line in difference.detail.splitlines())
        return "\n".join(lines)


@dataclass(frozen=True)
class ReplayReport:
    wasm: Path
    plugin: str
    results: tuple[CaseResult, ...]

    @property
    def ok(self) -> bool:
        return all(not result.differences for result in self.results)

    def __str__(self) -> str:
        counts = {status: sum(r.status == status for r in self.results) for status in ("ok", "DIFF", "FAIL")}
        lines = [str(result) for result in self.results]
        lines.append(
            f"replayed {len(self.results)} call(s) of plugin {self.plugin!r} against {self.wasm}: "
            f"{counts['ok']} same, {counts['DIFF']} different, {counts['FAIL']} failed"
        )
        lines.append(
            f"latency  {_quantiles([r.latency_us for r in self.results])}; "
            f"recorded {_quantiles([float(r.record.latency_us) for r in self.results])}"
        )
        return "\n".join(lines)


def _quantiles(values: Sequence[float]) -> str:
    ordered = sorted(values)
    if len(ordered) > 1:
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
        p50, p99 = cuts[49], cuts[98]
    else:
        p50 = p99 = ordered[0]
    return f"p50 {p50:,.0f} us, p99 {p99:,.0f} us, max {ordered[-1]:,.0f} us"


def replay(wasm: Path, records: Sequence[Record], spec: PluginConfig, server: ServerConfig) -> ReplayReport:
    """Call `wasm`, loaded with `spec`'s settings, on every record, in order (one key-value store for all)."""
    plugin = load_plugin(dataclasses.replace(spec, path=wasm.absolute()), server, shared_threads(), MemoryStore())
    try:
        with asyncio.Runner() as runner:
            results = tuple(runner.run(_replay_one(plugin, record)) for record in records)
    finally:
        plugin.close()
    return ReplayReport(wasm, spec.name, results)


async def _replay_one(plugin: LoadedPlugin, record: Record) -> CaseResult:
    started = time.perf_counter()
    result: Result
    reason = ""
    try:
        result = await plugin.call(record.phase, record.input)
    except PluginCallError as exc:
        result, reason = exc, str(exc)
    latency_us = (time.perf_counter() - started) * 1e6
    output = record.redact(plain(result))
    found = tuple(differences(record.output, output))
    return CaseResult(record, output, found, latency_us, reason if found else "")


def plugin_spec(wasm: Path, name: str, args: argparse.Namespace) -> tuple[PluginConfig, ServerConfig]:
    """The replayed plugin's settings: the server config's entry of that name, or the command line's."""
    if args.server_config is not None:
        config = load_config(args.server_config)
        entry = next((spec for spec in config.plugins if spec.name == name), None)
        if entry is None:
            raise ReplayError(f"{args.server_config}: no plugin is called {name!r}")
        # Every record reaches the module: the match rules chose them already.
        return dataclasses.replace(entry, match=MatchRules(), candidate=None), config.server
    plugin_settings: Mapping[str, Any] | None = None
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text())
        if not isinstance(loaded, dict):
            raise ReplayError(f"{args.config}: must hold a YAML mapping (the plugin's config:)")
        plugin_settings = loaded
    config = plugin_config(wasm, name=name, config=plugin_settings, timeout_ms=args.timeout_ms)
    return config.plugins[0], config.server


def main(args: argparse.Namespace) -> int:
    try:
        if args.plugin_command == "cases":
            return _cases(args)
        records = load_records(args.records, args.plugin)
        report = replay(args.wasm, records, *plugin_spec(args.wasm, records[0].plugin, args))
    except (ExtprocError, OSError, yaml.YAMLError) as exc:
        print(f"extproc: error: {exc}", file=sys.stderr)
        return UNUSABLE
    print(report)
    return SAME if report.ok else DIFFERENT


def _cases(args: argparse.Namespace) -> int:
    records = load_records(args.records, args.plugin)
    if args.phase is not None:
        records = [record for record in records if record.phase is Phase.named(args.phase)]
        if not records:
            raise RecordError(f"{args.records}: no records of phase {args.phase!r}")
    text = yaml.safe_dump(to_cases(records), sort_keys=False, allow_unicode=True, width=120)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return SAME

"""Investigation tools: where the server's time goes, beyond what the bench suite (bench/run.py) reports.

Run from the repository root, each as a module (docs/performance.md shows the commands):

- ``python -m bench.lab.grpc_stacks``: the suite's no-op floor on other Python gRPC stacks (grpc.aio,
  grpclib), with the same measurements as the suite.
- ``python -m bench.lab.noop_timings``: where the no-op's ext_proc call spends its time at half peak.
- ``python -m bench.lab.profile``: py-spy and perf profiles of a case under load.
- ``python -m bench.lab.instructions``: instructions per request under valgrind's callgrind.
- ``python -m bench.lab.inprocess``: our request path without gRPC, CPU per request.

Unlike the suite, these install what they need on first use, none of it a project dependency: Debian's
valgrind and linux-perf with apt-get (so they run as root), py-spy and grpclib with pip.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import loadgen, run
from bench.cases import Case
from support.processes import REPO_ROOT


def pip_install(package: str, present: bool) -> None:
    """Install ``package`` into this interpreter's environment unless it is ``present`` already."""
    if not present:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)


def case_settings(argv: Sequence[str] | None, description: str, duration_help: str) -> run.Settings:
    """The options of a tool that runs one case (--duration, --out), as the suite's settings."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help=f"{duration_help} (default 10)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    loadgen.ensure_tools()
    return run.new_settings(args.out, args.duration)


@contextlib.contextmanager
def serving(case: Case, settings: run.Settings) -> Iterator[tuple[run.Running, int]]:
    """The suite's upstream and ``case``'s stack in front of it, with the pid of the case's server."""
    with run.upstream(settings.work) as (upstream_port, _), run.stack(case, settings, upstream_port) as running:
        if running.server is None:
            raise ValueError(f"case {case.name} has no ext_proc server")
        yield running, run.pid_of(running.server)

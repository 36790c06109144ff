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

import subprocess
import sys


def pip_install(package: str, present: bool) -> None:
    """Install ``package`` into this interpreter's environment unless it is ``present`` already."""
    if not present:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)

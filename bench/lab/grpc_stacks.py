"""The bench suite with its no-op floor also on other Python gRPC stacks: what the stack alone costs.

``python -m bench.lab.grpc_stacks [bench.run options]``, e.g. ``--cases noop,noop_aio,noop_grpclib
--no-memory``: bench/run.py's cases and measurements, plus the no-op served by grpc.aio and by grpclib on
uvloop (bench/lab/noop_servers.py). Reported for comparison; the suite's targets do not use them.
"""

from __future__ import annotations

import argparse
import importlib.util

from bench import run
from bench.cases import CASES
from bench.lab import pip_install
from bench.lab.noop_servers import COMPARED_STACKS, STACK_PACKAGES, stack_case

STACK_CASES = {stack: stack_case(f"noop_{stack}", stack) for stack in COMPARED_STACKS}


def main() -> int:
    # Only the packages of the stacks this run measures (bench.run reads --cases the same way).
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--cases")
    wanted = peek.parse_known_args()[0].cases
    for stack, case in STACK_CASES.items():
        if wanted is None or case.name in wanted.split(","):
            for package in STACK_PACKAGES[stack]:
                pip_install(package, importlib.util.find_spec(package) is not None)
    return run.main(cases=(*CASES, *STACK_CASES.values()), module=__spec__.name)


if __name__ == "__main__":
    raise SystemExit(main())

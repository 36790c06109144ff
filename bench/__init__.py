"""Benchmark suite: Envoy + ext_proc servers on loopback under a real load generator.

Run from the repository root as modules: ``python -m bench.run`` (the cases, their targets and a memory
run) and ``python -m bench.capacity`` (concurrency: slow upstream, slow clients, CPU against a baseline
revision); see docs/performance.md. Investigation tools (other gRPC stacks, stream timings, profiles,
instruction counts) are in bench/lab. The test suite runs none of this, only the pure result and parser
code (tests/test_bench_*.py).
"""

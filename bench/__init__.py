"""Benchmark suite: Envoy + ext_proc servers on loopback under a real load generator.

Run it with ``python bench/run.py``; see docs/performance.md. Nothing here runs in the test suite
except the pure result/ratio code (tests/test_bench_report.py).
"""

"""bench/lab: the no-op's other stacks and stream timings, and the profile's parsers (no load is run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from bench.cases import CASES
from bench.envoy_configs import CallRecord
from bench.lab import noop_servers
from bench.lab.grpc_stacks import STACK_CASES
from bench.lab.noop_timings import render, span_percentiles
from bench.lab.profile import OTHER_LAYER, layer_of, parse_collapsed, parse_perf_report
from support.processes import REPO_ROOT, ManagedProcess, free_port, wait_for_port, wait_until
from tests.test_bench_noop_server import request_headers


def test_timings_are_recorded_between_the_signals_and_written_whole(tmp_path: Path) -> None:
    port, timings = free_port(), tmp_path / "timings.txt"
    argv = [sys.executable, "-m", "bench.lab.noop_servers", "--port", str(port), "--stack", "timed"]
    argv += ["--timings", str(timings)]
    with ManagedProcess("noop timed", argv, tmp_path / "server.log", cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, 30.0, process=server)
        assert server.pid is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            list(stub.Process(iter([request_headers()]), timeout=30))  # before recording: not counted
            timings.write_text("stale 1 2 3 4 5\n")  # an earlier recording's file is replaced
            os.kill(server.pid, signal.SIGUSR1)
            wait_until(noop_servers.recording_marker(timings).exists, 10.0, "recording to start")
            assert not timings.exists()
            for number in (1, 2, 3):
                assert len(list(stub.Process(iter([request_headers(f"req-{number}")]), timeout=30))) == 1
            os.kill(server.pid, signal.SIGUSR2)
            wait_until(timings.exists, 10.0, "the timings file")
    assert not noop_servers.recording_marker(timings).exists()
    rows = noop_servers.read_timings(timings.read_text())
    assert len(rows) == 3
    assert all(
        len(row.moments) == len(noop_servers.MOMENTS) and list(row.moments) == sorted(row.moments) for row in rows
    )
    assert [row.request_id for row in rows] == ["req-1", "req-2", "req-3"]


def test_spans_inside_the_server_and_around_it_from_envoys_log() -> None:
    us = 1000  # the moments are in ns
    rows = [
        noop_servers.StreamRow("a", (100_000 * us, 100_200 * us, 100_500 * us, 100_550 * us, 101_000 * us)),
        noop_servers.StreamRow("b", (200_000 * us, 200_100 * us, 200_200 * us, 200_250 * us, 200_300 * us)),
    ]
    # Envoy began request "a" 400 us before the dispatch and had the reply 1450 us after it was
    # yielded; request "b" is not in Envoy's log (e.g. it started before the window).
    found = noop_servers.spans(rows, {"a": (99_600 / 1e6, 3000)})
    assert list(found.values()) == [
        [pytest.approx(400)],
        [200, 100],
        [300, 100],
        [50, 50],
        [pytest.approx(2050)],
        [450, 50],
    ]
    assert list(found) == [name for name, _, _ in noop_servers.SPANS]


@pytest.mark.parametrize("line", ["a 1 2 3 4", "a 1 2 3 4 5 6", "a 1 2 x 4 5", "1 2 3 4 5"])
def test_a_malformed_timings_line_is_an_error(line: str) -> None:
    with pytest.raises(ValueError, match="expected a request id and 5 timestamps"):
        noop_servers.read_timings(line)


@pytest.mark.parametrize("stack", ["aio", "grpclib", "timed"])
def test_timings_go_with_the_timed_stack_only(stack: str, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.lab.noop_servers", "--port", "1", "--stack", stack]
    if stack != "timed":
        argv += ["--timings", str(tmp_path / "t")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--timings goes with --stack timed, and only with it" in proc.stderr


def test_the_noop_timings_table_puts_each_span_beside_envoys_view_of_the_call() -> None:
    calls = [CallRecord(99_600 / 1e6, 3000, "a"), CallRecord(99.7, None, "b")]
    rows = "a 100000000 100200000 100500000 100550000 101000000\n"  # ns; Envoy began "a" 400 us before
    percentiles = span_percentiles(rows, calls)
    assert percentiles[noop_servers.SPANS[0][0]] == pytest.approx((400, 400))
    table = render({"handler start -> reply sent": (570.0, 3300.0)}, 9200.0)
    assert "| handler start -> reply sent | 0.57 | 3.30 |" in table
    assert table.endswith("| ext_proc call as Envoy timed it | - | 9.20 |\n")


def test_the_grpc_stacks_lab_adds_the_noop_on_each_compared_stack() -> None:
    assert [(case.name, case.title) for case in STACK_CASES.values()] == [
        ("noop_aio", "no-op on grpc.aio"),
        ("noop_grpclib", "no-op on grpclib + uvloop"),
    ]
    assert {case.name for case in STACK_CASES.values()}.isdisjoint(case.name for case in CASES)


def test_profile_drops_waits_and_charges_innermost_layer() -> None:
    lines = [
        "_worker (concurrent/futures/thread.py:81) 50",
        "_run_module_as_main (<frozen runpy>:198);serve (extproc/server.py:172) 10",
        "Process (extproc/server.py:61);call (extism/extism.py:619) 30",
        "_serve (grpc/_server.py:1320);Condition.notify (threading.py:382) 15",
        "Process (extproc/server.py:61);encode_json (extproc/contract.py:90) 5",
    ]
    profile = parse_collapsed(lines, drop_waiting=True)
    assert (profile.samples, profile.waiting) == (50, 60)
    layers = dict(profile.layers)
    assert layers["extism (Python wrapper + the wasm call)"] == 30
    assert layers["threading / concurrent.futures (locks, handoff)"] == 15
    assert layers["extproc.contract (plugin input/output JSON)"] == 5
    assert layer_of(["0x7f00 (libc.so.6)"]) == OTHER_LAYER


def test_parse_perf_report() -> None:
    text = "# comment\n\n    42.52%  libpython3.11.so.1.0  [.] _PyEval_EvalFrameDefault\n     3.17%  libextism_sys.so\n"
    assert parse_perf_report(text) == [
        ("libpython3.11.so.1.0 [.] _PyEval_EvalFrameDefault", 42.52),
        ("libextism_sys.so", 3.17),
    ]

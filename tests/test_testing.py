"""extproc.testing (the harness behind `extproc plugin test`) and the `extproc plugin` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from extproc.plugin_tools import BenchError, bench
from extproc.testing import CasesError, PluginHarness, load_cases, request, response
from support.plugins import scripted
from tests.examples_build import example_wasm


def scripted_harness(plugin_dir: Path, **outputs: Any) -> PluginHarness:
    """The scripted test plugin, on its own, answering each export given with that output."""
    entry = scripted(plugin_dir, **outputs)
    return PluginHarness(Path(entry["path"]), config=entry["config"], execution_points=entry["execution_points"])


def test_request_builder_puts_pseudo_headers_first_and_adds_content_length() -> None:
    req = request("post", "/x", {"a": ["1", "2"]}, json_body={"k": 1})
    assert req.headers == (
        (":authority", "example.com"),
        (":path", "/x"),
        (":method", "POST"),
        (":scheme", "http"),
        ("a", "1"),
        ("a", "2"),
        ("content-type", "application/json"),
        ("content-length", "8"),
    )
    assert req.json() == {"k": 1}
    assert response(404).status == 404


def test_body_change_goes_through_the_server_which_fixes_content_length(plugin_dir: Path) -> None:
    output = {"body": {"text": "a much longer body"}}
    with scripted_harness(plugin_dir, process_request_body=output) as harness:
        result = harness.run(request("POST", "/", body="short"))
    assert result.upstream is not None
    assert result.upstream.body == b"a much longer body"
    assert result.upstream.header("content-length") == "18"
    assert result.phases == ("request_headers", "request_body")


def test_response_phases_run_only_with_a_response(plugin_dir: Path) -> None:
    output = {"headers": {"set": [{"name": "x-r", "value": "1"}]}, "dynamic_metadata": {"seen": True}}
    with scripted_harness(plugin_dir, process_response_headers=output) as harness:
        without = harness.run(request())
        with_response = harness.run(request(), response(201, {"x-up": "1"}))
    assert without.response is None and without.phases == ("request_headers",)
    assert with_response.response is not None
    assert with_response.status == 201
    assert with_response.response.header("x-r") == "1"
    assert with_response.metadata == {"plugin": {"seen": True}}


def test_immediate_response_stops_before_the_upstream(plugin_dir: Path) -> None:
    output = {"immediate_response": {"status": 418, "body": {"text": "teapot"}, "details": "tea"}}
    with scripted_harness(plugin_dir, process_request_headers=output) as harness:
        result = harness.run(request())
    assert result.immediate and result.upstream is None
    assert result.status == 418 and result.response is not None and result.response.text == "teapot"
    assert result.immediate_details == "tea"


def test_contract_violations_are_the_servers_failure_reply(plugin_dir: Path) -> None:
    output = {"headers": {"set": [{"name": "bad name", "value": "x"}]}}
    with scripted_harness(plugin_dir, process_request_headers=output) as harness:
        result = harness.run(request())
    assert result.immediate and result.status == 503


def test_cases_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    cases = tmp_path / "CASES.yaml"
    cases.write_text("cases:\n  - name: x\n    request: {path: /}\n    expect: {upstrem: {}}\n")
    with pytest.raises(CasesError, match=r"CASES\.yaml: cases\[0\]\.expect\.upstrem: unknown key"):
        load_cases(cases)
    cases.write_text("cases: []\n")
    with pytest.raises(CasesError, match="cases: must be a non-empty list"):
        load_cases(cases)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc", "plugin", *args], capture_output=True, text=True, check=False
    )


def test_cli_plugin_test_passes_and_fails(tmp_path: Path) -> None:
    wasm = example_wasm("api-key")
    ok = run_cli("test", str(wasm), str(wasm.with_name("CASES.yaml")))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "4 passed, 0 failed" in ok.stdout
    cases = tmp_path / "CASES.yaml"
    cases.write_text(
        "plugin: {config: {keys: {k: a}}}\n"
        "cases:\n  - name: no key\n    request: {path: /}\n    expect: {status: 200}\n"
    )
    failed = run_cli("test", str(wasm), str(cases))
    assert failed.returncode == 1
    assert "FAIL no key (cases[0])" in failed.stdout
    assert "status: expected 200, got 401" in failed.stdout
    missing = run_cli("test", str(tmp_path / "nope.wasm"), str(cases))
    assert missing.returncode == 1
    assert "nope.wasm" in missing.stderr


def test_cli_plugin_bench_reports_rate_latency_and_memory(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("request: {redact: [ssn]}\n")
    wasm = example_wasm("json-transform")
    args = ("bench", str(wasm), "--phase", "request_body", "--body-size", "4096", "--seconds", "0.2")
    result = run_cli(*args, "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["export"] == "process_request_body"
    assert report["body_bytes"] == 4096
    assert report["calls"] > 0
    assert 0 < report["p50_us"] <= report["p99_us"] <= report["max_us"]
    # The server's limits, not the bench's own: a plugin passes here only if it passes there.
    assert (report["timeout_ms"], report["memory_limit_bytes"]) == (100, 40 * 1024 * 1024)
    assert 1 <= report["call_memory_mb"] <= 40


def test_bench_refuses_what_the_server_would_refuse() -> None:
    wasm = example_wasm("json-transform")
    config = {"request": {"redact": ["ssn"]}}
    with pytest.raises(BenchError, match=r"needs memory_limit_mb >= \d+, more than the limit of 2 MiB"):
        bench(wasm, phase="request_body", body_size=1024 * 1024, config=config, memory_limit_mb=2, seconds=0.01)
    with pytest.raises(BenchError, match="is over max_body_bytes"):
        bench(wasm, phase="request_body", body_size=2048, config=config, max_body_bytes=1024, seconds=0.01)


def test_bench_refuses_a_phase_the_plugin_lacks() -> None:
    with pytest.raises(BenchError, match="does not export process_response_body"):
        bench(example_wasm("api-key"), phase="response_body", seconds=0.01)


def test_bench_measures_a_plugin_whose_config_declares_no_phase() -> None:
    # header-rewrite with no rules declares nothing; benching it measures its first export all the same.
    result = bench(example_wasm("header-rewrite"), seconds=0.05)
    assert result.export == "process_request_headers" and result.calls > 0

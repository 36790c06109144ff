"""`extproc check`: validates the config and loads every plugin, failing on the first problem."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extproc.cli import main
from extproc.deploy import envoy_config as ec


@pytest.fixture
def workdir(tmp_path: Path, plugin_dir: Path) -> Path:
    for name in ("scripted", "echo", "noexports", "transform"):
        shutil.copy(plugin_dir / f"{name}.wasm", tmp_path / f"{name}.wasm")
    (tmp_path / "not-wasm.wasm").write_text("hello")
    return tmp_path


def run_check(workdir: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    config = workdir / "extproc.yaml"
    config.write_text(text)
    code = main(["check", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_config_lists_plugins(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
plugins:
  - name: hdr
    path: scripted.wasm
    execution_points: [request_headers]
  - name: gen
    path: echo.wasm
  - name: spare
    path: scripted.wasm
    enabled: false
"""
    code, out, err = run_check(workdir, text, capsys)
    assert code == 0, err
    assert "ok, 3 plugin(s)" in out
    assert "hdr:" in out and "calls: process_request_headers" in out
    assert "gen:" in out and "calls: generate_response" in out
    assert "spare: disabled" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plugins: [\n  - name: a\n    path: x.wasm\n  bad", "invalid YAML"),
        ("plugins: []\nbogus: 1\n", "unknown key 'bogus'"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout: 5\n", "plugins[0].timeout: unknown key"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout_ms: fast\n", "plugins[0].timeout_ms"),
        ("plugins:\n  - name: a\n    path: missing.wasm\n", "plugins[0].path: file not found"),
        ("plugins:\n  - name: a\n    path: not-wasm.wasm\n", "not a WebAssembly module"),
        ("plugins:\n  - name: a\n    path: noexports.wasm\n", "exports none of the plugin functions"),
        (
            "plugins:\n  - name: a\n    path: scripted.wasm\n    execution_points: [request_header]\n",
            "plugins[0].execution_points[0]",
        ),
        (
            "plugins:\n  - name: a\n    path: echo.wasm\n    execution_points: [response_body]\n",
            "needs export 'process_response_body'",
        ),
        (
            "plugins:\n  - name: a\n    path: scripted.wasm\n  - name: a\n    path: echo.wasm\n",
            "plugins[1].name",
        ),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout_ms: -5\n", "plugins[0].timeout_ms"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    memory_limit_mb: -1\n", "plugins[0].memory_limit_mb"),
    ],
    ids=[
        "yaml-syntax",
        "unknown-top-key",
        "unknown-plugin-key",
        "wrong-type",
        "missing-wasm",
        "not-wasm",
        "no-exports",
        "unknown-execution-point",
        "point-without-export",
        "duplicate-name",
        "negative-timeout",
        "negative-memory",
    ],
)
def test_bad_config_is_rejected(workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    code, _, err = run_check(workdir, text, capsys)
    assert code != 0
    assert expected in err
    assert "extproc.yaml" in err or "wasm" in err  # names the file at fault
    assert "Traceback" not in err


def test_the_tracing_export_is_listed_without_credentials(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = "tracing: {endpoint: 'https://u:secret@otel.example:4317', sample_ratio: 0.25}\nplugins: []\n"
    code, out, err = run_check(workdir, text, capsys)
    assert code == 0, err
    assert "  tracing: OTLP grpc to https://u:***@otel.example:4317, service.name 'extproc', sample_ratio 0.25" in out
    assert "secret" not in out


def test_check_runs_as_a_command(workdir: Path) -> None:
    config = workdir / "extproc.yaml"
    config.write_text("plugins:\n  - name: a\n    path: noexports.wasm\n")
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "check", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "plugin 'a'" in result.stderr and "noexports.wasm" in result.stderr


# --- --envoy-config: does Envoy wait as long as the plugins may take? ---------------------------------

# transform.wasm runs once per message; 3 attempts of a wait plus a run of 100 ms: 600 ms.
SLOW_CHAIN = "plugins:\n  - name: slow\n    path: transform.wasm\n    timeout_ms: 100\n    retries: 2\n"
EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def envoy_fragment(**timeouts: object) -> str:
    typed = {"@type": EXT_PROC, "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}}, **timeouts}
    return yaml.safe_dump({"http_filters": [{"name": "envoy.filters.http.ext_proc", "typed_config": typed}]})


def run_check_with_envoy(
    workdir: Path, envoy_text: str, capsys: pytest.CaptureFixture[str], config_text: str = SLOW_CHAIN
) -> tuple[int, str, str]:
    envoy = workdir / "envoy.yaml"
    envoy.write_text(envoy_text)
    config = workdir / "extproc.yaml"
    config.write_text(config_text)
    code = main(["check", "--config", str(config), "--envoy-config", str(envoy)])
    out, err = capsys.readouterr()
    return code, out, err


KEY = "http_filters[0].typed_config.message_timeout"


@pytest.mark.parametrize(
    ("timeouts", "shown"),
    [
        ({"message_timeout": "0.250s"}, "250 ms"),
        ({}, "200 ms"),  # Envoy's default
        ({"message_timeout": {"seconds": 0, "nanos": 599_000_000}}, "599 ms"),
        ({"message_timeout": "0.3s", "max_message_timeout": "10s"}, "max_message_timeout does not help"),
    ],
    ids=["short", "unset", "seconds-nanos", "max-does-not-help"],
)
def test_a_message_timeout_shorter_than_the_chain_warns(
    workdir: Path, capsys: pytest.CaptureFixture[str], timeouts: dict[str, object], shown: str
) -> None:
    code, out, err = run_check_with_envoy(workdir, envoy_fragment(**timeouts), capsys)
    assert code == 0  # a warning, not a failure
    assert "ok, 1 plugin(s)" in out
    assert f"extproc: warning: {workdir / 'envoy.yaml'}: {KEY} is" in err
    assert "shorter than the slowest message: request headers, 600 ms (slow)" in err
    assert "derives 850 ms" in err
    assert shown in err


@pytest.mark.parametrize("timeout", ["0.600s", "0.6s", "0.600000000s", "2s", {"seconds": 1}, {"nanos": 600_000_000}])
def test_a_message_timeout_covering_the_chain_says_so(
    workdir: Path, capsys: pytest.CaptureFixture[str], timeout: object
) -> None:
    code, out, err = run_check_with_envoy(workdir, envoy_fragment(message_timeout=timeout), capsys)
    assert (code, err) == (0, "")
    assert f"{KEY} " in out and "covers the slowest message: request headers, 600 ms (slow)" in out


def test_every_filter_of_every_document_is_checked(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    istio_like = {"kind": "EnvoyFilter", "spec": {"patch": {"value": {"typed_config": {"@type": EXT_PROC}}}}}
    text = envoy_fragment(message_timeout="1s") + "---\n" + yaml.safe_dump(istio_like)
    code, out, err = run_check_with_envoy(workdir, text, capsys)
    assert code == 0
    assert f"(document 1) {KEY} 1000 ms covers" in out
    assert "(document 2) spec.patch.value.typed_config.message_timeout is 200 ms" in err


@pytest.mark.parametrize(
    ("envoy_text", "expected"),
    [
        (None, "cannot read the Envoy config"),
        ("static_resources: {listeners: [}\n", "invalid YAML"),
        ("static_resources: {}\n", "no ext_proc filter in it"),
        (envoy_fragment(message_timeout="fast"), f"{KEY}: must be a duration"),
        (envoy_fragment(message_timeout="-1s"), f"{KEY}: must be a duration"),
        (envoy_fragment(max_message_timeout={"seconds": "1"}), "typed_config.max_message_timeout: must be a duration"),
    ],
    ids=["missing", "bad-yaml", "no-filter", "bad-duration", "negative", "bad-max"],
)
def test_a_bad_envoy_config_is_an_error(
    workdir: Path, capsys: pytest.CaptureFixture[str], envoy_text: str | None, expected: str
) -> None:
    config = workdir / "extproc.yaml"
    config.write_text(SLOW_CHAIN)
    envoy = workdir / "envoy.yaml"
    if envoy_text is not None:
        envoy.write_text(envoy_text)
    code = main(["check", "--config", str(config), "--envoy-config", str(envoy)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert f"extproc: error: {envoy}" in err and expected in err


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--config", "envoy/demo/extproc.yaml"],
        ["envoy-config", "--config", "envoy/demo/extproc.yaml", "--bootstrap", "--upstream", "127.0.0.1:80"],
    ],
    ids=["check", "envoy-config"],
)
def test_a_closed_stdout_ends_the_command_quietly(args: list[str]) -> None:
    # What `extproc check ... | head -1` leaves: a pipe nobody reads any more.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "extproc", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


@pytest.mark.parametrize(
    ("timeout", "ms"),
    [("2.007s", 2007), ("0.0001s", 1), ("1.5s", 1500), ({"seconds": 2, "nanos": 7_000_000}, 2007), ("0s", 0)],
)
def test_durations_are_read_exactly(tmp_path: Path, timeout: object, ms: int) -> None:
    envoy = tmp_path / "envoy.yaml"
    envoy.write_text(envoy_fragment(message_timeout=timeout))
    assert [found.message_timeout_ms for found in ec.read_filter_timeouts(envoy)] == [ms]


BODY_MEMORY_CASES = {
    # (server settings, the plugin's entry, whether check warns)
    "body-plugin-below-the-need": ("", "path: transform.wasm\n    memory_limit_mb: 39", True),
    "body-plugin-default": ("", "path: transform.wasm", False),
    "body-plugin-at-the-need": ("", "path: transform.wasm\n    memory_limit_mb: 40", False),
    "smaller-bodies-need-less": (
        "server: {max_body_bytes: 1048576}\n",
        "path: transform.wasm\n    memory_limit_mb: 12",
        False,
    ),
    "header-plugin": (
        "",
        "path: transform.wasm\n    memory_limit_mb: 1\n    execution_points: [request_headers]",
        False,
    ),
    "generate-response-with-the-body": (
        "",
        "path: echo.wasm\n    memory_limit_mb: 16\n    execution_points: [request_body]",
        True,
    ),
}


@pytest.mark.parametrize(("server", "entry", "warns"), BODY_MEMORY_CASES.values(), ids=BODY_MEMORY_CASES)
def test_a_body_plugin_with_too_little_memory_for_max_body_bytes_warns(
    workdir: Path, capsys: pytest.CaptureFixture[str], server: str, entry: str, warns: bool
) -> None:
    code, out, err = run_check(
        workdir, f"{server}plugins:\n  - name: other\n    path: scripted.wasm\n  - name: body\n    {entry}\n", capsys
    )
    assert code == 0, err
    assert "ok, 2 plugin(s)" in out
    if not warns:
        assert "warning" not in err
        return
    assert "extproc: warning: plugins[1].memory_limit_mb (body) is" in err
    assert "four times the body plus 8 MiB, 40 MiB" in err


def test_a_candidate_is_listed_under_its_plugin(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
plugins:
  - name: hdr
    path: scripted.wasm
    execution_points: [request_headers]
    candidate: {path: transform.wasm, mode: canary, fraction: 0.05}
"""
    code, out, err = run_check(workdir, text, capsys)
    assert code == 0, err
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("  hdr: "))
    assert lines[index + 1].startswith(f"    candidate (canary, fraction 0.05): {workdir / 'transform.wasm'} sha256:")
    assert lines[index + 1].endswith("calls: process_request_headers")


def test_a_candidate_that_does_not_load_fails_the_check(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
plugins:
  - name: hdr
    path: scripted.wasm
    candidate: {path: not-wasm.wasm, fraction: 0.5}
"""
    code, _, err = run_check(workdir, text, capsys)
    assert code == 1
    assert f"plugin 'hdr' ({workdir / 'not-wasm.wasm'}): not a WebAssembly module" in err

"""The Rust and C SDKs (sdk/rust, sdk/c): their example plugins pass their AssemblyScript twins' CASES and declare
the same phases, the committed .wasm files are fresh, the host functions work on the server's, and the Rust
crate's own tests pass with every Rust toolchain on the machine. Test ids name the SDK (rust_sdk, c_sdk)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from extproc.plugins.host import NAMESPACE
from extproc.plugins.loader import PhaseSource
from extproc.plugins.wasm import imports
from extproc.testing import PluginHarness, assert_cases, request
from scripts import sdk_build
from tests.examples_build import example_wasm

EXAMPLES = [(language, name) for language in ("rust", "c") for name in sdk_build.example_names(language)]
EXAMPLE_IDS = [f"{language}_sdk-{name}" for language, name in EXAMPLES]


def test_both_sdks_have_the_header_rewrite_and_json_transform_examples() -> None:
    assert EXAMPLES == [
        ("rust", "header-rewrite"),
        ("rust", "json-transform"),
        ("c", "header-rewrite"),
        ("c", "json-transform"),
    ]


@pytest.mark.parametrize(("language", "name"), EXAMPLES, ids=EXAMPLE_IDS)
def test_example_cases_are_the_assemblyscript_twins(language: str, name: str) -> None:
    cases = sdk_build.EXAMPLES / language / name / "CASES.yaml"
    # One file for the three languages: the twins must behave the same.
    assert cases.resolve() == (sdk_build.EXAMPLES / name / "CASES.yaml").resolve()
    assert_cases(sdk_build.example_wasm(language, name), cases)


@pytest.mark.parametrize("config", [{"request": {}}, {"response": {}}, {"request": {}, "response": {}}, {}], ids=str)
@pytest.mark.parametrize(("language", "name"), EXAMPLES, ids=EXAMPLE_IDS)
def test_examples_declare_the_phases_of_their_assemblyscript_twins(
    language: str, name: str, config: dict[str, Any]
) -> None:
    with PluginHarness(sdk_build.example_wasm(language, name), config=config) as plugin:
        declared = (plugin.plugin.exports, plugin.plugin.phase_source)
    with PluginHarness(example_wasm(name), config=config) as twin:
        assert declared == (twin.plugin.exports, PhaseSource.DECLARED)


@pytest.mark.parametrize(("language", "name"), EXAMPLES, ids=EXAMPLE_IDS)
def test_committed_example_wasm_is_fresh(language: str, name: str, tmp_path: Path) -> None:
    rebuilt = sdk_build.build_example(language, name, tmp_path / f"{name}.wasm")
    committed = sdk_build.example_wasm(language, name)
    assert rebuilt.read_bytes() == committed.read_bytes(), (
        f"{committed.relative_to(sdk_build.REPO_ROOT)} is stale: run `make examples` and commit the result"
    )
    # Kernel and extproc host functions only: no WASI, which the server refuses to load.
    assert {module for module, _ in imports(committed.read_bytes())} <= {"extism:host/env", NAMESPACE}


@pytest.mark.parametrize("language", ["rust", "c"], ids=["rust_sdk", "c_sdk"])
def test_key_value_clock_and_log_on_the_servers_host_functions(language: str, caplog: pytest.LogCaptureFixture) -> None:
    wasm = sdk_build.probe_wasm(language, "host")
    with PluginHarness(wasm, execution_points=["request_headers"]) as plugin:
        result = plugin.run(request("GET", "/"))
    seen = result.metadata["plugin"]
    assert seen["results"] == [True, "v\u00e9", 5, 7, True, True, False, True, "2", True, False, None, True, 2]
    assert seen["now_ms"] > 1.7e12
    assert "host probe: state done" in caplog.text


def rust_toolchains() -> list[tuple[str, str]]:
    """(id, how to run its cargo) of each Rust toolchain to try: Debian's 1.63, and rustup's stable when present."""
    found = [("rust_sdk-debian-1.63", "debian")]
    if shutil.which("rustup") is not None:
        found.append(("rust_sdk-rustup-stable", "rustup"))
    return found


@pytest.mark.parametrize("toolchain", [t[1] for t in rust_toolchains()], ids=[t[0] for t in rust_toolchains()])
def test_the_rust_crate_builds_and_passes_its_tests(toolchain: str, tmp_path: Path) -> None:
    if toolchain == "debian":
        cargo_path, rustc = sdk_build.rust_toolchain()
        cargo, env = [str(cargo_path)], sdk_build.cargo_env(rustc)
    else:
        cargo = ["rustup", "run", "stable", "cargo"]
        env = {k: v for k, v in os.environ.items() if k not in ("RUSTC", "CARGO")}
    # On the build machine the SDK runs against its in-process host (extproc_sdk::testing).
    args = [*cargo, "test", "--offline", "-q", "-p", "extproc-sdk", "--target-dir", str(tmp_path)]
    proc = subprocess.run(args, cwd=sdk_build.REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test result: ok. 4 passed" in proc.stdout


def test_c_sdk_examples_compile_as_c_and_cxx_without_warnings(tmp_path: Path) -> None:
    for language in ("c", "c++"):
        for _, name in (e for e in EXAMPLES if e[0] == "c"):
            (source,) = (sdk_build.EXAMPLES / "c" / name).glob("*.c")
            flags = ["-Werror", "-Wall", "-Wextra", "-x", language]
            sdk_build.build_c([source], tmp_path / f"{name}-{language}.wasm", *flags)


def test_c_sdk_export_names_are_checked_at_compile_time(tmp_path: Path) -> None:
    source = tmp_path / "typo.c"
    source.write_text(
        '#include "extproc.h"\nstatic int h(const xp_input *i, xp_output *o) { (void)i; (void)o; return 0; }\n'
        "XP_EXPORT(process_request_header, h)\n"
    )
    with pytest.raises(RuntimeError, match="XP__PHASE_process_request_header"):
        sdk_build.build_c([source], tmp_path / "typo.wasm")

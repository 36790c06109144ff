"""bench/lab/instructions.py's callgrind parsing, grouping, plugin-call check and report, on hand-written
samples (no valgrind here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.cases import CASES, Kind, server_config
from bench.lab.instructions import (
    NOOP_STACKS,
    OTHER_ROLE,
    UNKNOWN_OBJECT,
    UNKNOWN_ROLE,
    Measured,
    Profile,
    attribute_unknown,
    counter_delta,
    expected_plugin_calls,
    object_role,
    parse_callgrind,
    parse_cases,
    parse_maps,
    parse_noop_stacks,
    per_request,
    plugin_calls,
    render,
    targets,
    to_json,
)
from bench.loadgen import LoadResult
from extproc.config import Config, parse_config

PYTHON = "/opt/python/lib/libpython3.11.so.1.0"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"

# Compressed names, a recursion level ('2), an inlined file (fi/fe), relative positions and a call
# whose following cost line (the callee's inclusive cost, 999) is not the caller's own cost.
SAMPLE = f"""\
# callgrind format
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
summary: 1

ob=(1) {PYTHON}
fl=(1) Python/ceval.c
fn=(1) _PyEval_EvalFrameDefault
10 100
+2 50
fi=(2) Include/object.h
3 5
fe=(1)
cob=(2) {LIBC}
cfi=(3) malloc/malloc.c
cfn=(2) malloc
calls=3 20
12 999
* 1

fn=(3) _PyEval_EvalFrameDefault'2
-1 40

ob=(2)
fl=(3)
fn=(2)
20 30

ob=(3) ???
fl=(4) ???
fn=(4) 0x0000000004936728
0 7
fn=(5) 0x0000000009442000
0 11

totals: 244
"""


def test_self_cost_by_object_and_function() -> None:
    profile = parse_callgrind(SAMPLE.splitlines())
    assert profile.total == 244
    assert profile.by_object == {PYTHON: 196, LIBC: 30, UNKNOWN_OBJECT: 18}
    # The recursion level is merged into its function; the callee's inclusive 999 is nobody's self cost.
    assert profile.by_function == {
        (PYTHON, "_PyEval_EvalFrameDefault"): 196,
        (LIBC, "malloc"): 30,
        (UNKNOWN_OBJECT, "0x0000000004936728"): 7,
        (UNKNOWN_OBJECT, "0x0000000009442000"): 11,
    }


def test_totals_line_must_match_the_cost_lines() -> None:
    with pytest.raises(ValueError, match="totals line says 245"):
        parse_callgrind(SAMPLE.replace("totals: 244", "totals: 245").splitlines())


def test_ir_is_picked_among_several_events_and_positions() -> None:
    # Two position columns, Ir second of two events; counts missing at the end of a line are zero.
    text = f"positions: instr line\nevents: Dr Ir\nob={LIBC}\nfn=memcpy\n0x10 4 9 2\n+3 5 1\n0x20 6\n"
    assert parse_callgrind(text.splitlines()).by_object == {LIBC: 2}


def test_jump_data_is_refused() -> None:
    with pytest.raises(ValueError, match="collect-jumps"):
        parse_callgrind(["events: Ir", "fn=f", "jump=3 12", "10 4"])


MAPS = f"""\
04931000-04b6d000 r-xp 000f5000 fe:00 26933                              {PYTHON}
09442000-09446000 r-xp 00000000 00:00 0
7ffd4c1f0000-7ffd4c1f2000 r-xp 00000000 00:00 0                          [vdso]
"""


def test_unknown_code_in_a_library_mapping_goes_to_the_library() -> None:
    mappings = parse_maps(MAPS)
    assert mappings[1] == (0x9442000, 0x9446000, "")
    profile = attribute_unknown(parse_callgrind(SAMPLE.splitlines()), mappings)
    # The PLT stub at 0x4936728 lies in libpython's text; 0x9442000 is anonymous memory (JIT code).
    assert profile.by_object == {PYTHON: 203, LIBC: 30, UNKNOWN_OBJECT: 11}
    assert profile.by_function[(PYTHON, "0x0000000004936728")] == 7
    assert profile.total == 244


def test_per_request_groups_by_file_name_most_first() -> None:
    profile = Profile(
        total=600,
        by_object={"/a/libc.so.6": 100, "/b/libc.so.6": 100, PYTHON: 300, UNKNOWN_OBJECT: 100},
        by_function={},
    )
    assert list(per_request(profile, 100).items()) == [
        ("libpython3.11.so.1.0", 3.0),
        ("libc.so.6", 2.0),
        (UNKNOWN_OBJECT, 1.0),
    ]


@pytest.mark.parametrize(
    ("path", "role"),
    [
        (PYTHON, "Python interpreter"),
        ("/site-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so", "grpcio: gRPC C core + Cython glue"),
        ("/site-packages/google/_upb/_message.abi3.so", "protobuf (upb)"),
        ("/site-packages/extism_sys/libextism_sys.so", "Extism + wasmtime runtime (Rust)"),
        (LIBC, "libc (malloc, locks, memcpy)"),
        (UNKNOWN_OBJECT, UNKNOWN_ROLE),
        ("/usr/lib/libfoo.so", OTHER_ROLE),
    ],
)
def test_object_roles(path: str, role: str) -> None:
    assert object_role(path) == role


# --- cases and the plugin-call check ------------------------------------------------------------------


def test_cases_are_the_bodiless_single_process_server_cases() -> None:
    assert [case.name for case in parse_cases("header, generate,header,")] == ["header", "generate"]
    assert [case.name for case in parse_cases("header3,nomatch")] == ["header3", "nomatch"]


@pytest.mark.parametrize("text", ["", "noop", "lua", "req_body_1k", "resp_body_64k", "workers2", "nomatch_bypass", "x"])
def test_other_cases_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="choose from header, header3, generate, nomatch"):
        parse_cases(text)


def test_noop_stacks_are_no_op_variants_named_after_their_stack() -> None:
    variants = parse_noop_stacks("grpclib, aio,grpclib,")
    assert [case.name for case in variants] == ["noop-grpclib", "noop-aio"]
    assert {case.kind for case in variants} == {Kind.NOOP}
    # Each variant runs bench/lab/noop_servers.py with its own --stack; the baseline keeps the sync server.
    assert [case.noop_command for case in variants] == [
        ("bench.lab.noop_servers", "--stack", "grpclib"),
        ("bench.lab.noop_servers", "--stack", "aio"),
    ]
    assert NOOP_STACKS == {"noop": "sync", "noop-aio": "aio", "noop-grpclib": "grpclib"}
    assert parse_noop_stacks("") == ()


@pytest.mark.parametrize("text", ["sync", "noop-aio", "asyncio", "aio,x"])
def test_other_noop_stacks_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"choose from aio, grpclib"):
        parse_noop_stacks(text)


def _config(tmp_path: Path, roles: tuple[str, ...], **plugin_keys: Any) -> Config:
    """The bench's server config for ``roles`` over empty stand-ins for the .wasm files.

    ``plugin_keys`` are set on every plugin; a None value removes the key.
    """
    for wasm in ("scripted.wasm", "transform.wasm"):
        (tmp_path / wasm).touch()
    data = server_config(roles, tmp_path)
    for entry in data["plugins"]:
        for key, value in plugin_keys.items():
            if value is None:
                del entry[key]
            else:
                entry[key] = value
    return parse_config(data, tmp_path / "extproc.yaml")


@pytest.mark.parametrize(
    ("case", "calls"),
    [
        ("header", {("0-header", "process_request_headers"): 1}),
        (
            "header3",
            {
                ("0-header", "process_request_headers"): 1,
                ("1-header2", "process_request_headers"): 1,
                ("2-header3", "process_request_headers"): 1,
            },
        ),
        ("generate", {("0-generate", "generate_response"): 1}),
        ("nomatch", {}),
    ],
    ids=["header", "header3", "generate", "nomatch"],
)
def test_expected_plugin_calls_per_request_follow_the_config(tmp_path: Path, case: str, calls: dict[Any, int]) -> None:
    chosen = next(c for c in CASES if c.name == case)
    assert expected_plugin_calls(_config(tmp_path, chosen.plugins), chosen.load.path) == calls


def test_a_matched_path_calls_the_matching_plugin(tmp_path: Path) -> None:
    config = _config(tmp_path, ("header_matched",))
    assert expected_plugin_calls(config, "/matched/x?q=1") == {("0-header_matched", "process_request_headers"): 1}


def test_a_disabled_plugin_is_never_called(tmp_path: Path) -> None:
    assert expected_plugin_calls(_config(tmp_path, ("header",), enabled=False), "/") == {}


@pytest.mark.parametrize(
    ("roles", "keys", "reason"),
    [
        # Response phases do not run after a generated reply, body phases not on a GET.
        (("response_body",), {}, "execution points response_body"),
        (("header",), {"execution_points": ["request_headers", "response_headers"]}, "response_headers"),
        # Without execution points the plugin's exports decide, which the config does not show.
        (("header",), {"execution_points": None}, "every export"),
        (("header",), {"match": {"headers": [{"name": "x-a", "present": True}]}}, "host or header"),
        (("header",), {"match": {"hosts": ["example.com"]}}, "host or header"),
        # The first generated reply ends the exchange: the second plugin would not run.
        (("generate", "generate"), {}, "more than one generate_response"),
    ],
    ids=["response-body", "response-headers", "no-execution-points", "header-match", "host-match", "two-generates"],
)
def test_configs_the_check_cannot_count_are_refused(
    tmp_path: Path, roles: tuple[str, ...], keys: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        expected_plugin_calls(_config(tmp_path, roles, **keys), "/")


def test_plugin_calls_sum_the_call_counters_by_plugin_and_export() -> None:
    def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
        return name, frozenset(labels.items())

    samples = {
        key("extproc_plugin_calls_total", plugin="a", phase="process_request_headers"): 2000.0,
        key("extproc_plugin_calls_total", plugin="b", phase="generate_response"): 5.0,
        key("extproc_plugin_failures_total", plugin="a", phase="process_request_headers", kind="timeout"): 1.0,
        key("extproc_streams_total"): 2005.0,
    }
    assert plugin_calls(samples) == {("a", "process_request_headers"): 2000, ("b", "generate_response"): 5}


def test_counter_delta_keeps_what_moved() -> None:
    # "b" first appears after the warm-up; "c" did not move.
    assert counter_delta({"a": 300, "c": 7}, {"a": 2300, "b": 4, "c": 7}) == {"a": 2000, "b": 4}


# --- targets and the report ---------------------------------------------------------------------------


def test_targets_are_the_ratios_whose_variants_ran() -> None:
    found = targets({"noop": 400.0, "header": 400.0, "generate": 404.0})
    assert [(t.name, t.ratio, t.limit, t.passed) for t in found] == [
        ("header/noop", 1.0, 1.0, True),  # the limit itself passes
        ("generate/header", 1.01, 1.0, False),
    ]
    assert [t.name for t in targets({"noop": 1.0, "header3": 1.25})] == ["header3/noop"]
    assert targets({"noop": 1.0, "nomatch": 0.5}) == []


LIBEXTISM = "/site-packages/extism_sys/libextism_sys.so"


def _measured(variant: str, by_function: dict[tuple[str, str], int], calls: dict[str, int] | None) -> Measured:
    by_object: dict[str, int] = {}
    for (ob, _), cost in by_function.items():
        by_object[ob] = by_object.get(ob, 0) + cost
    profile = Profile(sum(by_function.values()), by_object, by_function)
    load = LoadResult(requests=100, duration_s=2.0, p50_us=1.0, p99_us=2.0, errors=0)
    failures = None if calls is None else 0
    envoy = {"streams_started": 100}
    return Measured(variant, 100, load, envoy, calls, failures, Path(f"/w/{variant}/callgrind.out.1"), profile)


@pytest.fixture
def results() -> dict[str, Measured]:
    eval_frame = (PYTHON, "_PyEval_EvalFrameDefault")
    return {
        "noop": _measured("noop", {eval_frame: 400_000, (LIBC, "malloc"): 100_000}, None),
        "header": _measured(
            "header",
            {eval_frame: 600_000, (LIBC, "malloc"): 120_000, (LIBEXTISM, "wasm_call"): 80_000},
            {"0-header process_request_headers": 100},
        ),
        "header3": _measured("header3", {eval_frame: 1_000_000, (LIBEXTISM, "wasm_call"): 240_000}, {"a": 300}),
        "nomatch": _measured("nomatch", {eval_frame: 450_000}, {}),
    }


def test_report_totals_targets_and_differences(results: dict[str, Measured]) -> None:
    text = render(results, "# head\n")
    assert "| noop | 5,000 | 1.00x |" in text
    assert "| header | 8,000 | 1.60x |" in text
    assert "| nomatch | 4,500 | 0.90x |" in text
    # generate/header is left out: generate did not run.
    assert "| header / noop | 8,000 | 5,000 | 1.600x | <= 1.00x | MISS |" in text
    assert "| header3 / noop | 12,400 | 5,000 | 2.480x | <= 1.25x | MISS |" in text
    assert "generate /" not in text
    # One by-object table per case against the no-op; shares are of the case's difference (3,000 Ir).
    assert "## By shared object: header vs noop" in text
    assert "| `libextism_sys.so` | Extism + wasmtime runtime (Rust) | 0 | 800 | +800 | 26.7 % |" in text
    assert "| `libc.so.6` | libc (malloc, locks, memcpy) | 1,000 | 1,200 | +200 | 6.7 % |" in text
    assert "## By shared object: nomatch vs noop" in text
    # The no-op's top functions alone, each case's with the no-op's cost of the same function.
    assert "## Top 15 functions: noop (self Ir per request)" in text
    assert "| 1 | `_PyEval_EvalFrameDefault` | `libpython3.11.so.1.0` | 6,000 | 75.0 | 4,000 | +2,000 |" in text
    assert "| 2 | `wasm_call` | `libextism_sys.so` | 2,400 | 19.4 | 0 | +2,400 |" in text
    assert "| header | 100 | 0 | 100 | 100 | 1 | 2.0 |" in text
    assert "| nomatch | 100 | 0 | 100 | 0 | 0 | 2.0 |" in text
    assert "| noop | 100 | 0 | 100 | - | - | 2.0 |" in text


def test_report_targets_pass(results: dict[str, Measured]) -> None:
    cheap = {"noop": results["noop"], "header": _measured("header", {(PYTHON, "f"): 450_000}, {})}
    assert "| header / noop | 4,500 | 5,000 | 0.900x | <= 1.00x | PASS |" in render(cheap, "")
    assert "## Targets" not in render({"noop": results["noop"]}, "")


def test_json_has_every_variant_and_the_targets(results: dict[str, Measured]) -> None:
    data = to_json(results, {"nproc": "2"}, "python -m bench.lab.instructions")
    assert list(data["variants"]) == ["noop", "header", "header3", "nomatch"]
    header = data["variants"]["header"]
    assert (header["ir_per_request"], header["vs_noop"]) == (8000.0, 1.6)
    assert header["plugin_calls"] == {"0-header process_request_headers": 100}
    assert header["top_functions"][0]["noop_ir_per_request"] == 4000.0
    assert "noop_ir_per_request" not in data["variants"]["noop"]["top_functions"][0]
    assert [(t["name"], t["ratio"], t["limit"], t["passed"]) for t in data["targets"]] == [
        ("header/noop", 1.6, 1.0, False),
        ("header3/noop", 2.48, 1.25, False),
    ]


def test_other_noop_stacks_are_in_the_totals_and_json_against_the_sync_noop(results: dict[str, Measured]) -> None:
    eval_frame = (PYTHON, "_PyEval_EvalFrameDefault")
    with_stacks = {
        "noop": results["noop"],
        "noop-aio": _measured("noop-aio", {eval_frame: 650_000}, None),
        "header": results["header"],
    }
    text = render(with_stacks, "")
    assert "| noop-aio | 6,500 | 1.30x |" in text
    # No by-object or function tables for it, and the cases' tables stay against the sync no-op.
    assert "noop-aio vs noop" not in text
    assert "Top 15 functions: noop-aio" not in text
    assert "## By shared object: header vs noop" in text
    data = to_json(with_stacks, {}, "")
    assert list(data["variants"]) == ["noop", "noop-aio", "header"]
    assert data["variants"]["noop-aio"]["vs_noop"] == 1.3

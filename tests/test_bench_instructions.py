"""bench/instructions.py's callgrind parsing and grouping, on hand-written samples (no valgrind here)."""

from __future__ import annotations

import pytest

from bench.instructions import (
    OTHER_ROLE,
    UNKNOWN_OBJECT,
    UNKNOWN_ROLE,
    Profile,
    attribute_unknown,
    object_role,
    parse_callgrind,
    parse_maps,
    per_request,
)

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

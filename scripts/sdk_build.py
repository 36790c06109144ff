"""Build plugins written with the Rust and C SDKs (sdk/rust, sdk/c): the toolchains and the commands.

The committed example .wasm files are checked byte for byte against a fresh build (tests/test_sdk_examples.py),
so each language builds with one pinned toolchain, the one CI installs from Debian 12:

- Rust: Debian's rustc 1.63 with `libstd-rust-dev-wasm32`, run as /usr/bin/cargo with RUSTC=/usr/bin/rustc. A
  rustup toolchain earlier on PATH (rustup's stable has no wasm32 standard library unless `rustup target add`
  put one there) is bypassed on purpose: another rustc builds the same SDK into different bytes. The Cargo
  workspace at the repository root keeps the checkout's location out of the module.
- C: Debian's clang 14 with lld, wasi-libc and the wasm32 compiler-rt builtins, through sdk/c/extproc-cc.

`python scripts/sdk_build.py examples` (run by `make examples`) rebuilds every committed example of both SDKs,
`... probes` (run by `make plugins`) the probe plugins of the SDK tests; a language whose toolchain is missing is
skipped with a note.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUST_SDK = REPO_ROOT / "sdk" / "rust"
C_SDK = REPO_ROOT / "sdk" / "c"
EXAMPLES = REPO_ROOT / "examples"
PROBE_DIR = REPO_ROOT / "tests" / "plugins" / "build"

RUST_PACKAGES = ("rustc", "cargo", "libstd-rust-dev-wasm32")
C_PACKAGES = ("clang", "lld", "wasi-libc", "libclang-rt-dev-wasm32")
DEBIAN_RUSTC = Path("/usr/bin/rustc")
DEBIAN_CARGO = Path("/usr/bin/cargo")
RUST_TARGET = "wasm32-unknown-unknown"
RUST_WASM_STD = Path("/usr/lib/rustlib") / RUST_TARGET
CLANG = "clang"
EXTPROC_CC = C_SDK / "extproc-cc"


class ToolchainMissing(RuntimeError):
    """A language's pinned toolchain is not installed; the message says which Debian packages bring it."""


def _missing(language: str, packages: tuple[str, ...]) -> ToolchainMissing:
    return ToolchainMissing(
        f"the {language} SDK's toolchain is missing: install Debian's {' '.join(packages)} "
        "(`make setup` does it when run as root)"
    )


def rust_toolchain() -> tuple[Path, Path]:
    """(cargo, rustc) of the pinned Rust toolchain."""
    if not (DEBIAN_CARGO.is_file() and DEBIAN_RUSTC.is_file() and RUST_WASM_STD.is_dir()):
        raise _missing("Rust", RUST_PACKAGES)
    return DEBIAN_CARGO, DEBIAN_RUSTC


def c_toolchain() -> str:
    """The clang that builds C plugins; ToolchainMissing without it or without wasi-libc."""
    clang = shutil.which(CLANG)
    if clang is None or not Path("/usr/include/wasm32-wasi/stdlib.h").is_file():
        raise _missing("C", C_PACKAGES)
    return clang


def _run(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, args))}` in {cwd} exited with {proc.returncode}:\n{proc.stdout}")


def cargo_env(rustc: Path) -> dict[str, str]:
    """The environment for the pinned cargo: its own rustc, no rustup or build settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUSTUP_", "CARGO_", "RUSTFLAGS"))}
    env["RUSTC"] = str(rustc)
    return env


def cargo_package(package_dir: Path) -> str:
    """The package name in `package_dir`/Cargo.toml."""
    manifest = tomllib.loads((package_dir / "Cargo.toml").read_text())
    name: str = manifest["package"]["name"]
    return name


def build_rust(package_dir: Path, out: Path) -> Path:
    """`cargo build --release` of the cdylib package in `package_dir` (a member of the repository's Cargo
    workspace) for wasm32, copied to `out`."""
    cargo, rustc = rust_toolchain()
    package = cargo_package(package_dir)
    # Outside the work tree; cargo locks it, so concurrent builds wait for each other instead of failing. One per
    # checkout: two checkouts' builds of the same package write the same output file, and one would copy the other's.
    checkout = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"extproc-cargo-{checkout}"
    _run(
        [
            cargo,
            "build",
            "--release",
            "--offline",
            "--quiet",
            "-p",
            package,
            "--target",
            RUST_TARGET,
            "--target-dir",
            target,
        ],
        REPO_ROOT,
        cargo_env(rustc),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(target / RUST_TARGET / "release" / f"{package.replace('-', '_')}.wasm", out)
    return out


def build_c(sources: list[Path], out: Path, *flags: str) -> Path:
    """sdk/c/extproc-cc on `sources`, writing `out`."""
    env = {**os.environ, "EXTPROC_CC": c_toolchain()}
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([EXTPROC_CC, *flags, "-o", out, *sources], REPO_ROOT, env)
    return out


# --- the committed examples and the probes ----------------------------------------------------------------


def example_names(language: str) -> list[str]:
    """The examples of one SDK: examples/<language>/<name>/ with a source."""
    marker = "Cargo.toml" if language == "rust" else "*.c"
    return sorted({p.parent.name for p in (EXAMPLES / language).glob(f"*/{marker}")})


def example_wasm(language: str, name: str) -> Path:
    """The committed build of an example."""
    return EXAMPLES / language / name / f"{name}.wasm"


def build_example(language: str, name: str, out: Path) -> Path:
    folder = EXAMPLES / language / name
    if language == "rust":
        return build_rust(folder, out)
    return build_c(sorted(folder.glob("*.c")), out)


def probe_sources(language: str) -> list[Path]:
    """Every file the probe of `language` is built from (the SDK and the probe itself)."""
    if language == "rust":
        return sorted([*RUST_SDK.rglob("*.rs"), *RUST_SDK.rglob("Cargo.toml"), REPO_ROOT / "Cargo.toml"])
    return sorted(p for p in C_SDK.rglob("*") if p.is_file() and p.suffix in (".h", ".c", ""))


# Each probe's Rust package folder (in sdk/rust) and C source (in sdk/c/tests).
PROBES = {
    "json": ("probe", "probe.c"),
    "host": ("host-probe", "host_probe.c"),
    "stream": ("stream-probe", "stream_probe.c"),
}


def probe_wasm(language: str, probe: str = "json") -> Path:
    """An SDK's probe plugin, rebuilt when any of its sources is newer: `json` (tests/test_sdk_json.py), `host`
    (its host functions, tests/test_http_calls.py and tests/test_sdk_examples.py) or `stream` (chunks, trailers,
    state, route values and declared phases, tests/test_sdk_streaming.py)."""
    out = PROBE_DIR / f"{language}_sdk_{probe}_probe.wasm"
    PROBE_DIR.mkdir(parents=True, exist_ok=True)
    with (PROBE_DIR / f".{out.stem}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        newest = max(p.stat().st_mtime for p in probe_sources(language))
        if not out.is_file() or out.stat().st_mtime < newest:
            tmp = out.with_suffix(".tmp")
            package, source = PROBES[probe]
            if language == "rust":
                build_rust(RUST_SDK / package, tmp)
            else:
                # The JSON probe is compiled as C++: the header must stay valid in both languages.
                build_c([C_SDK / "tests" / source], tmp, *(("-x", "c++") if probe == "json" else ()))
            tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what not in ("examples", "probes"):
        print("usage: sdk_build.py examples|probes", file=sys.stderr)
        return 2
    toolchains = {"rust": rust_toolchain, "c": c_toolchain}
    for language, check in toolchains.items():
        try:
            check()
        except ToolchainMissing as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        built = (
            [build_example(language, name, example_wasm(language, name)) for name in example_names(language)]
            if what == "examples"
            else [probe_wasm(language, probe) for probe in PROBES]
        )
        for wasm in built:
            print(f"built {wasm.relative_to(REPO_ROOT)} ({wasm.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""docs/writing-plugins.md, followed word for word in an empty folder, gives a working plugin, in each of
its three languages.

The steps are the guide's own blocks: `<!-- guide: run -->` before a shell block runs it,
`<!-- guide: file PATH -->` before a code block writes that file; `guide-rust:` and `guide-c:` mark the
Rust and C sections' steps the same way. Nothing here is copied from the guide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from scripts import sdk_build
from support.envoy import envoy_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
GUIDE = REPO_ROOT / "docs" / "writing-plugins.md"
_STEP = re.compile(r"<!-- guide(-[a-z]+)?: (run|file (\S+)) -->\n```[a-z]*\n(.*?)```", re.DOTALL)


def guide_script(markdown: str, language: str = "") -> str:
    """The steps of the AssemblyScript guide, or with `language` ("rust", "c") of that section."""
    lines = ["set -euxo pipefail"]
    for match in _STEP.finditer(markdown):
        if (match.group(1) or "") != (f"-{language}" if language else ""):
            continue
        path, body = match.group(3), match.group(4)
        if path is None:
            lines.append(body)
        else:
            lines.append(f"cat > {path} <<'GUIDE_EOF'\n{body}GUIDE_EOF")
    return "\n".join(lines) + "\n"


def test_guide_has_the_steps() -> None:
    script = guide_script(GUIDE.read_text())
    for step in ("npm install", "npm run build", "extproc plugin test", "extproc plugin bench", "extproc check"):
        assert step in script


def follow(tmp_path: Path, language: str = "", first_on_path: str = "") -> str:
    """Runs the guide's steps for `language` in `tmp_path`; their output."""
    script = tmp_path / "guide.sh"
    script.write_text(guide_script(GUIDE.read_text(), language))
    # The `extproc` command of this checkout, as `pip install -e .` provides it.
    path = [str(Path(sys.executable).parent), *([first_on_path] if first_on_path else []), os.environ.get("PATH", "")]
    env = {
        **os.environ,
        "EXTPROC": str(REPO_ROOT),
        "PATH": os.pathsep.join(path),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    proc = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "CASES.yaml: 2 passed, 0 failed" in proc.stdout, output
    assert "calls/s" in proc.stdout
    return proc.stdout


def test_following_the_guide_word_for_word_gives_a_working_plugin(tmp_path: Path) -> None:
    follow(tmp_path)
    plugin = tmp_path / "hello-plugin"
    assert (plugin / "hello.wasm").read_bytes().startswith(b"\0asm")
    check = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(plugin / "envoy.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_rust_sdk_section_of_the_guide_gives_a_working_plugin(tmp_path: Path) -> None:
    # The guide's `cargo` is whichever the reader has; here Debian's (a rustup cargo earlier on PATH may lack
    # the wasm32 standard library).
    cargo, _ = sdk_build.rust_toolchain()
    follow(tmp_path, "rust", str(cargo.parent))
    assert (tmp_path / "hello-rust" / "hello.wasm").read_bytes().startswith(b"\0asm")


def test_c_sdk_section_of_the_guide_gives_a_working_plugin(tmp_path: Path) -> None:
    sdk_build.c_toolchain()
    follow(tmp_path, "c")
    assert (tmp_path / "hello-c" / "hello.wasm").read_bytes().startswith(b"\0asm")

"""docs/writing-plugins.md, followed word for word in an empty folder, gives a working plugin.

The steps are the guide's own blocks: `<!-- guide: run -->` before a shell block runs it,
`<!-- guide: file PATH -->` before a code block writes that file. Nothing here is copied from the guide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import envoy_binary

REPO_ROOT = Path(__file__).resolve().parents[1]
GUIDE = REPO_ROOT / "docs" / "writing-plugins.md"
_STEP = re.compile(r"<!-- guide: (run|file (\S+)) -->\n```[a-z]*\n(.*?)```", re.DOTALL)


def guide_script(markdown: str) -> str:
    lines = ["set -euxo pipefail"]
    for match in _STEP.finditer(markdown):
        path, body = match.group(2), match.group(3)
        if path is None:
            lines.append(body)
        else:
            lines.append(f"cat > {path} <<'GUIDE_EOF'\n{body}GUIDE_EOF")
    return "\n".join(lines) + "\n"


def test_guide_has_the_steps() -> None:
    script = guide_script(GUIDE.read_text())
    for step in ("npm install", "npm run build", "extproc plugin test", "extproc plugin bench", "extproc check"):
        assert step in script


def test_following_the_guide_word_for_word_gives_a_working_plugin(tmp_path: Path) -> None:
    script = tmp_path / "guide.sh"
    script.write_text(guide_script(GUIDE.read_text()))
    env = {
        **os.environ,
        "EXTPROC": str(REPO_ROOT),
        # The `extproc` command of this checkout, as `pip install -e .` provides it.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
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
    plugin = tmp_path / "hello-plugin"
    assert (plugin / "hello.wasm").read_bytes().startswith(b"\0asm")
    check = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(plugin / "envoy.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr

"""The files `extproc demo` needs besides code: the plugin set, the showcase and the plugin modules.

setup.py copies them into the wheel (beside this module, under BUNDLE_DIR) and the demo reads them from
there when no local config is given, so an installed package runs its demo without a checkout. The wheel
keeps the repository's layout below BUNDLE_DIR, so the config's relative plugin paths hold in both places.
setup.py runs this file on its own, before the package is installed: it imports nothing from extproc.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Final

import yaml

CONFIG: Final = PurePosixPath("envoy/demo/extproc.yaml")  # relative to the repository root
SHOWCASE_FILE: Final = "showcase.yaml"  # next to the config
BUNDLE_DIR: Final = "demo_files"


def bundled_config() -> Path:
    """Where the installed package keeps the demo's config (absent in a checkout or an editable install)."""
    return Path(__file__).resolve().parent / BUNDLE_DIR / CONFIG


def bundle_files(root: Path) -> list[PurePosixPath]:
    """The config, its showcase and every plugin module the config names, relative to the repository `root`."""
    data = yaml.safe_load((root / CONFIG).read_text(encoding="utf-8"))
    found = [CONFIG, CONFIG.with_name(SHOWCASE_FILE)]
    for i, plugin in enumerate(data["plugins"]):
        path = PurePosixPath(os.path.normpath(CONFIG.parent / plugin["path"]))
        # A module outside the repository would not be in an sdist, and its relative path would not hold.
        if path.is_absolute() or path.parts[0] == "..":
            raise ValueError(f"{CONFIG}: plugins[{i}].path must be inside the repository, got {plugin['path']!r}")
        found.append(path)
    return found

"""One error hierarchy: every exception class the package defines derives from ExtprocError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import extproc
from extproc.errors import ExtprocError

# Not imported: the entry point runs the CLI, and the generated protobuf code defines no errors of ours.
_SKIPPED = ("extproc.__main__", "extproc._pb")


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(extproc.__path__, "extproc."):
        if module_info.name.startswith(_SKIPPED):
            continue
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_of_the_package_derives_from_extproc_error() -> None:
    classes = _exception_classes()
    # The walk must reach the modules that define errors, or the check below proves nothing.
    assert {"extproc.errors.ConfigError", "extproc.plugins.pool.PoolExhausted", "extproc.testing.CasesError"} <= set(
        classes
    )
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, ExtprocError))
    assert outside == []

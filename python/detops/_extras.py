"""Optional dependencies, grouped as the package's extras (``detops[bench]``,
``detops[eval]``). A command that lacks one says which extra to install and
carries on with what it can do."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def missing_message(module: str, extra: str, purpose: str) -> str:
    return f"{purpose} needs {module}, which is not installed: pip install 'detops[{extra}]'"


def optional_import(module: str, extra: str, purpose: str) -> ModuleType | None:
    """The module, or None after a note on stderr naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"note: {missing_message(module, extra, purpose)}; skipped", file=sys.stderr, flush=True)
        return None


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """The module, or an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(missing_message(module, extra, purpose)) from exc

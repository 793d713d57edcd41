"""Names a module re-exports but imports only when first asked for (PEP 562).

A package such as ``zflash.protocol.zdl`` offers its host and device engines alike, yet a
host never uses the device's; each such name maps to the module that defines it, imported
on first access, so ``import zflash.protocol.zdl.constants`` stays cheap.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping


def lazy_getattr(module: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``module``: each of ``names`` (name -> defining module)
    is imported when first asked for, then kept in ``module``; any other name is the usual
    AttributeError."""

    def __getattr__(name: str) -> object:
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__

"""zflash: a host-side flashing tool for devices in download mode.

Also home to ``lazy_getattr``, the one helper every sub-package's lazy re-exports share (a
module of its own would be one more top-level module for a dozen lines).
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Mapping

__version__ = "0.1.0"


def lazy_getattr(module: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A PEP 562 module ``__getattr__`` for ``module``: each of ``names`` (name -> the module
    that defines it) is imported when first asked for, then kept in ``module``; any other
    name is the usual AttributeError. Why: a package such as ``zflash.protocol.zdl`` offers
    the host and device engines alike, and a host never needs the device's."""

    def __getattr__(name: str) -> object:
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    return __getattr__

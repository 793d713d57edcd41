"""One rule every engine keeps: after its first protocol error a session stays broken.

A byte stream that broke the protocol once cannot be trusted to be back in step, so every
later call fails the same way instead of reading on from a wrong offset.
"""

from __future__ import annotations

import functools
from enum import Enum
from typing import Any, Callable, TypeVar

from zflash.errors import Code, ZflashError

_Method = TypeVar("_Method", bound=Callable[..., Any])


def breaks_for_good(session: str, broken: Enum) -> Callable[[_Method], _Method]:
    """Decorate an engine's receiving method: a ZflashError it raises sets ``self.state``
    to ``broken``, and a call once broken raises PROTOCOL naming ``session``."""

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self.state is broken:
                raise ZflashError(Code.PROTOCOL, f"the {session} session failed earlier")
            try:
                return method(self, *args, **kwargs)
            except ZflashError:
                self.state = broken
                raise

        return guarded  # type: ignore[return-value]

    return decorate

"""Shared rules of the fuzz suite: the Hypothesis profiles and the one property every parser has.

The property: fed anything, a parser returns or raises a coded ``ZflashError``; never another
exception, never a hang, never memory out of proportion to its input. ``make test`` runs the
short profile; ``make fuzz`` sets ``ZFLASH_FUZZ_PROFILE=long``.

The time bound is a hang detector (a generous alarm per example), not a speed assertion; the
memory bound is tracemalloc's peak for the one call.
"""

from __future__ import annotations

import os
import signal
import tracemalloc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from hypothesis import HealthCheck, settings

from zflash.errors import ZflashError

settings.register_profile(
    "short", max_examples=30, deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(
    "long", max_examples=3000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])

PROFILE_NAME = os.environ.get("ZFLASH_FUZZ_PROFILE", "short")
FUZZ = settings(settings.get_profile(PROFILE_NAME))

HANG_SECONDS = 20.0  # far above any parser's real time on these inputs
MEMORY_LIMIT = 64 << 20  # bytes allocated at peak by one call, inputs of at most a few MiB


class Hang(Exception):
    """Raised by the alarm: the call ran past HANG_SECONDS."""


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def coded_or_ok(call: Callable[[], Any], memory: int = MEMORY_LIMIT,
                allowed: set[int] | None = None) -> ZflashError | None:
    """Run ``call``; return the ZflashError it raised (if any). Anything else fails the test.

    ``allowed`` restricts the codes the parser may use.
    """
    tracemalloc.start()
    error: ZflashError | None = None
    try:
        with _alarm(HANG_SECONDS):
            call()
    except ZflashError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= memory, f"peak allocation {peak} bytes > {memory}"
    if error is not None:
        assert 9001 < error.code < 9100, f"not a coded error: {error!r}"
        if allowed is not None:
            assert error.code in allowed, f"unexpected code {error.code}: {error.detail}"
    return error


def mutate(data: bytes, draw: Callable[[Any], Any], strategies: Any) -> bytes:
    """A few random byte edits, insertions, deletions or a truncation of ``data``."""
    st = strategies
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        if not buf:
            break
        op = draw(st.sampled_from(("set", "insert", "delete", "cut")))
        pos = draw(st.integers(0, len(buf) - 1))
        if op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 8))]
        else:
            del buf[pos:]
    return bytes(buf)

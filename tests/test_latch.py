"""The shared rule of the sans-IO engines: after one protocol error, a session stays broken."""

from __future__ import annotations

from enum import Enum

import pytest

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good


class State(Enum):
    OK = "ok"
    BROKEN = "broken"


class Toy:
    def __init__(self) -> None:
        self.state = State.OK
        self.calls = 0

    @breaks_for_good("toy", State.BROKEN)
    def receive(self, data: bytes) -> bytes:
        self.calls += 1
        if data == b"bad":
            raise ZflashError(Code.PROTOCOL, "bad bytes")
        return data


def test_an_error_breaks_the_session_for_good() -> None:
    toy = Toy()
    assert toy.receive(b"fine") == b"fine" and toy.state is State.OK
    with pytest.raises(ZflashError, match="bad bytes"):
        toy.receive(b"bad")
    assert toy.state is State.BROKEN
    with pytest.raises(ZflashError) as info:
        toy.receive(b"fine")
    assert info.value.code == Code.PROTOCOL and "toy session failed earlier" in info.value.detail
    assert toy.calls == 2  # a broken session never reaches the engine again

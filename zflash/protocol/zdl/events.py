"""Engine events that are not wire messages: session changes, link repair, read results.

Responses and requests themselves surface as the message dataclasses of ``messages``; these
classes cover what the engines conclude from several frames.
"""

from __future__ import annotations

from dataclasses import dataclass


class NeedData:
    """``HostEngine.next_event()`` has nothing more until ``receive_data`` is called.

    Compare with ``is NEED_DATA``; there is only that one instance.
    """

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


@dataclass(frozen=True)
class Session:
    """The values both sides agreed on in the handshake (zdl.md 6)."""

    version: int
    max_data: int
    window: int
    codecs: tuple[str, ...]
    baud: int | None = None


@dataclass(frozen=True)
class SessionStarted:
    """Handshake done (both sides). With ``session.baud`` set, a baud switch follows."""

    session: Session


@dataclass(frozen=True)
class SwitchBaud:
    """Device: write out ``data_to_send()`` at the current rate, drain, then switch to ``baud``
    and start the 1 s timer that ends in ``ping_timeout()`` unless a PING arrives."""

    baud: int


@dataclass(frozen=True)
class BaudSwitched:
    """Host: the device answered at the new rate; the switch is complete."""

    baud: int


@dataclass(frozen=True)
class Retransmitted:
    """Host: ``frames`` frames were queued again (``reason``: "nak", "timeout" or "gap")."""

    frames: int
    reason: str


@dataclass(frozen=True)
class BlockRejected:
    """Host: the device refused one block (e.g. 9012, hash mismatch)."""

    partition: int
    block: int
    code: int
    message: str


@dataclass(frozen=True)
class ReadDone:
    """Host: a READ ended. ``received`` bytes from ``offset`` were delivered as Data events.

    ``complete``: all ``length`` bytes arrived; ``verified``: and their SHA-256 matched the
    device's. When not complete, READ the rest from ``offset + received``.
    """

    offset: int
    length: int
    received: int
    sha256: str
    complete: bool
    verified: bool

    @property
    def ok(self) -> bool:
        return self.complete and self.verified

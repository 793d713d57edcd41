"""A minimum-progress rule for one HTTP exchange: a trickling server cannot hang a fetch.

Why: the socket timeout bounds one ``recv`` only, so a server that sends one byte every few
seconds (headers or body) never trips it and a fetch waits for ever. The watchdog gives each
window of ``window`` seconds a quota of ``min_bytes``; a window that passes short of it shuts
the socket down, which ends the blocked read at once, and the exchange turns that into a
coded error. The header phase is one window during which the whole response head must
arrive.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

MIN_PROGRESS = 32 << 10  # bytes per window; a window is the configured network timeout


class Watchdog:
    """Shuts ``get_socket()`` down when a window passes with less than ``min_bytes``."""

    def __init__(self, get_socket: Callable[[], socket.socket | None], window: float,
                 min_bytes: int = MIN_PROGRESS) -> None:
        self._get_socket = get_socket
        self.window = window
        self.min_bytes = min_bytes
        self.fired: str | None = None  # what was too slow, once it fired
        self._phase = "the response headers"
        self._count = 0
        self._deadline = time.monotonic() + window
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fetch-watchdog", daemon=True)
        self._thread.start()

    def body_started(self) -> None:
        """The head arrived: from now on the body must keep up with the quota."""
        self._phase = "the body"
        self._count = 0
        self._deadline = time.monotonic() + self.window

    def progress(self, count: int) -> None:
        """``count`` more bytes arrived; a full quota opens a new window."""
        self._count += count
        if self._count >= self.min_bytes:
            self._count = 0
            self._deadline = time.monotonic() + self.window

    def describe(self) -> str:
        return (f"server too slow: {self.fired} brought less than {self.min_bytes} bytes in "
                f"{self.window:g} s")

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._deadline - time.monotonic())):
            if time.monotonic() >= self._deadline:
                self.fired = self._phase
                sock = self._get_socket()
                if sock is not None:
                    _interrupt(sock)
                return


def _interrupt(sock: socket.socket) -> None:
    """End the reading thread's blocked read and make every later read fail at once.

    Linux still delivers data that arrives after ``shutdown(SHUT_RD)``, and a buffered read
    loops until its buffer is full, so a trickle would keep it going: the tiny timeout makes
    the next read raise instead. The plain socket's shutdown is used, not SSLSocket's (which
    would unwrap the TLS state under the reading thread).
    """
    try:
        sock.settimeout(0.001)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass

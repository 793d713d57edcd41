"""Run an emulated device: state directory, links (pty, TCP), shaping and faults, threads.

``EmulatorRunner`` is what ``zflash emulate`` and the tests start. Each listener gets a
thread that accepts one host at a time and hands the connection, wrapped in the configured
shaping and faults, to the ZDL server loop.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from zflash.emulator.device import EmulatedDevice, PowerLoss
from zflash.emulator.link import (DeviceConnection, FaultyLink, PtyConnection, PtyLink,
                                  ShapedLink, TcpListener)
from zflash.emulator.storage import Profile, Storage
from zflash.emulator.zdl_server import ServerOptions, ZdlServer
from zflash.errors import Code, ZflashError
from zflash.package.keys import load_public_key

if TYPE_CHECKING:
    from zflash.emulator.fastboot_server import FastbootOptions

ACCEPT_POLL = 0.2


@dataclass
class LinkFaults:
    bytes_per_second: float | None = None
    latency: float | None = None
    drop_after_bytes: int | None = None
    stall_after_bytes: int | None = None
    corrupt_fraction: float = 0.0
    seed: int = 0
    #: emulate a UART: pace at baud/10 and let the host switch to one of ``baud_rates``
    serial_baud: int | None = None
    baud_rates: tuple[int, ...] = (230400, 460800, 921600, 2000000)
    #: the new rate does not work (a cable or adapter that cannot keep up): garbled bytes
    baud_switch_fails: bool = False

    @property
    def any_fault(self) -> bool:
        return bool(self.drop_after_bytes is not None or self.stall_after_bytes is not None
                    or self.corrupt_fraction)


class LinkWrapper:
    """Puts a host connection behind the emulator's shaping (rate or UART pacing, latency)
    and faults. One FaultyLink lives across connections, so a byte count such as
    --drop-after counts over the device's whole life, not per session."""

    def __init__(self, faults: LinkFaults) -> None:
        self.faults = faults
        #: the fault wrapper, once a connection needed one (its counters are the faults')
        self.faulty: FaultyLink | None = None

    def wrap(self, conn: DeviceConnection) -> DeviceConnection:
        f = self.faults
        rate = f.serial_baud / 10 if f.serial_baud else f.bytes_per_second
        if rate or f.latency:
            conn = ShapedLink(conn, rate, f.latency)
        if f.serial_baud:
            conn = SerialLine(conn, f.serial_baud, f.baud_switch_fails)
        if not f.any_fault:
            return conn
        if self.faulty is None:
            self.faulty = FaultyLink(conn, f.drop_after_bytes, f.corrupt_fraction, f.seed,
                                     f.stall_after_bytes)
        else:
            self.faulty.attach(conn)
        return self.faulty


class SerialLine:
    """A UART between host and device: both ends must use the same rate.

    The ZDL server calls ``set_baud`` after an agreed switch (0 = back to the first rate).
    With ``switch_fails`` the new rate does not work and every byte arrives garbled, which
    is what a USB-serial adapter that cannot do the rate looks like; the baud-switch ping
    then fails and both sides fall back.
    """

    def __init__(self, inner: DeviceConnection, baud: int, switch_fails: bool) -> None:
        self.inner, self.base_baud, self.baud = inner, baud, baud
        self._switch_fails = switch_fails
        self._garbled = False

    @property
    def alive(self) -> bool:
        return self.inner.alive

    def set_baud(self, baud: int) -> None:
        self.baud = baud or self.base_baud
        self._garbled = bool(baud) and self._switch_fails
        if isinstance(self.inner, ShapedLink):
            self.inner.set_rate(self.baud / 10)

    def _mangle(self, data: bytes) -> bytes:
        return bytes(b ^ 0x55 for b in data) if self._garbled else data

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._mangle(self.inner.read(max_bytes, timeout))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.inner.write(self._mangle(bytes(data)) if self._garbled else data)

    def close(self) -> None:
        self.inner.close()


def _end_session(conn: DeviceConnection) -> None:
    """After a session: a pty keeps its name (``end``), a TCP connection is dropped."""
    if isinstance(conn, PtyConnection):
        conn.end()
    else:
        conn.close()


def load_profile(path: Path | None, trusted_key_files: list[Path]) -> Profile:
    profile = Profile()
    if path is not None:
        try:
            profile = Profile.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ZflashError(Code.USAGE, f"cannot read profile {path}: {exc}") from None
    for key in trusted_key_files:
        load_public_key(Path(key))  # a public key PEM, never a private key (9006)
        try:
            profile.trusted_keys.append(Path(key).read_text())
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{key}: {exc.strerror}") from None
    return profile


def serve_until_stopped(stop_event: threading.Event) -> None:
    """Block until ``stop_event`` is set, SIGTERM arrives or Ctrl-C: the life of every
    `zflash emulate` process (one device, a fleet, an EDL device). The caller stops its
    servers afterwards."""
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    try:
        while not stop_event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


class EmulatorRunner:
    """One emulated device served on the requested links until ``stop()``."""

    def __init__(self, state_dir: Path, profile: Profile, faults: LinkFaults | None = None,
                 power_loss_at: str | None = None, fail_next_boot: bool = False,
                 server_options: ServerOptions | None = None,
                 log: Callable[[str], None] | None = None,
                 on_power_loss: Callable[[], None] | None = None) -> None:
        self.storage = Storage.create(state_dir, profile)
        self.device = EmulatedDevice(self.storage, power_loss_at=power_loss_at,
                                     on_power_loss=on_power_loss)
        self.device.fail_next_boot = fail_next_boot
        self.faults = faults or LinkFaults()
        self.log = log or (lambda message: None)
        if server_options is None:
            server_options = ServerOptions(
                bauds=self.faults.baud_rates if self.faults.serial_baud else (),
                codecs=self.storage.profile.zdl_codecs)
        self.server = ZdlServer(self.device, server_options, log=self.log)
        self.stop_event = threading.Event()
        self.urls: list[str] = []
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], None]] = []
        self._links = LinkWrapper(self.faults)
        self.power_lost = threading.Event()

    def _wrap(self, conn: DeviceConnection) -> DeviceConnection:
        return self._links.wrap(conn)

    @property
    def faulty(self) -> FaultyLink | None:
        """The link's fault wrapper (None until a faulty link carried a session)."""
        return self._links.faulty

    def _serve_listener(self, accept: Callable[[float], DeviceConnection | None]) -> None:
        while not self.stop_event.is_set():
            conn = accept(ACCEPT_POLL)
            if conn is None:
                continue
            link = self._wrap(conn)
            set_baud = link.set_baud if isinstance(link, SerialLine) else None
            try:
                self.server.serve(link, self.stop_event, set_baud)
            except PowerLoss:
                self.power_lost.set()
                self.stop_event.set()
            except ZflashError as exc:
                self.log(f"session ended: {exc}")
            finally:
                _end_session(conn)

    def start_pty(self, link_path: str | None = None, *,
                  write_timeout: float | None = None) -> str:
        """Serve on a pty; its name (the URL) holds for the runner's life (see PtyLink).
        ``write_timeout``: how long the device waits for a host that stopped reading."""
        pty = PtyLink(link_path) if write_timeout is None else \
            PtyLink(link_path, write_timeout=write_timeout)
        self._closers.append(pty.close)
        self._start(pty.accept)
        self.urls.append(pty.url)
        return pty.url

    def start_tcp(self, port: int = 0) -> str:
        listener = TcpListener(port)
        self._closers.append(listener.close)
        self._start(listener.accept)
        self.urls.append(listener.url)
        return listener.url

    def start_fastboot_tcp(self, port: int = 0,
                           options: FastbootOptions | None = None) -> str:
        """Serve fastboot over TCP (port 0 picks a free one); stopped by ``stop()``."""
        from zflash.emulator.fastboot_server import FastbootTcpServer
        server = FastbootTcpServer(self.device, port=port, options=options).start()
        self._closers.append(server.stop)
        self.urls.append(server.url)
        return server.url

    def _start(self, accept: Callable[[float], DeviceConnection | None]) -> None:
        thread = threading.Thread(target=self._serve_listener, args=(accept,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def wait(self, timeout: float | None = None) -> bool:
        return self.stop_event.wait(timeout)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for close in self._closers:
            close()
        self.device.host_left()

    def __enter__(self) -> "EmulatorRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Run an emulated device: state directory, links (pty, TCP), shaping and faults, threads.

``EmulatorRunner`` is what ``zflash emulate`` and the tests start. Each listener gets a
thread that accepts one host at a time and hands the connection, wrapped in the configured
shaping and faults, to the ZDL server loop.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from zflash.emulator.device import EmulatedDevice, PowerLoss
from zflash.emulator.link import DeviceConnection, FaultyLink, PtyLink, ShapedLink, TcpListener
from zflash.emulator.storage import Profile, Storage
from zflash.emulator.zdl_server import ServerOptions, ZdlServer
from zflash.errors import Code, ZflashError

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

    @property
    def any_fault(self) -> bool:
        return bool(self.drop_after_bytes is not None or self.stall_after_bytes is not None
                    or self.corrupt_fraction)


def load_profile(path: Path | None, trusted_key_files: list[Path]) -> Profile:
    profile = Profile()
    if path is not None:
        try:
            profile = Profile.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ZflashError(Code.USAGE, f"cannot read profile {path}: {exc}") from None
    for key in trusted_key_files:
        try:
            profile.trusted_keys.append(Path(key).read_text())
        except OSError as exc:
            raise ZflashError(Code.FILE_UNREADABLE, f"{key}: {exc.strerror}") from None
    return profile


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
        self.server = ZdlServer(self.device, server_options, log=self.log)
        self.stop_event = threading.Event()
        self.urls: list[str] = []
        self._threads: list[threading.Thread] = []
        self._closers: list[Callable[[], None]] = []
        self._faulty: FaultyLink | None = None
        self.power_lost = threading.Event()

    def _wrap(self, conn: DeviceConnection) -> DeviceConnection:
        f = self.faults
        if f.bytes_per_second or f.latency:
            conn = ShapedLink(conn, f.bytes_per_second, f.latency)
        if f.any_fault:
            if self._faulty is None:
                self._faulty = FaultyLink(conn, f.drop_after_bytes, f.corrupt_fraction, f.seed,
                                          f.stall_after_bytes)
            else:
                self._faulty.attach(conn)
            return self._faulty
        return conn

    def _serve_listener(self, accept: Callable[[float], DeviceConnection | None]) -> None:
        while not self.stop_event.is_set():
            conn = accept(ACCEPT_POLL)
            if conn is None:
                continue
            try:
                self.server.serve(self._wrap(conn), self.stop_event)
            except PowerLoss:
                self.power_lost.set()
                self.stop_event.set()
            except ZflashError as exc:
                self.log(f"session ended: {exc}")
            finally:
                conn.close()

    def start_pty(self, link_path: str | None = None) -> str:
        pty = PtyLink(link_path)
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

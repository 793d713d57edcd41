"""The emulated device speaks fastboot, so the stock ``fastboot`` client can flash it.

Two layers:

* :class:`FastbootSession` is transport-agnostic: feed it host packets (``receive``), send
  back the packets it yields. It answers the variables a real bootloader reports, stages a
  download in the device's :class:`DownloadBuffer` (a bounded temp file), flashes raw and
  sparse images (split pieces included), erases, switches slots and reboots through the
  device's boot simulation. The same object can sit behind an emulated USB backend: one
  packet per bulk transfer.
* :func:`serve_fastboot_tcp` (and :class:`FastbootTcpServer`, its threaded wrapper) exposes a
  session over TCP: the ``FB01`` handshake and 8-byte length framing, one host at a time.
* :func:`serve_fastboot_usb` is the firmware of an emulated USB device with the fastboot
  interface (0xFF/0x42/0x03): one bulk OUT transfer is one packet, each answer one IN transfer.

Beyond AOSP's variables the emulator reports ``hw-revision`` (the profile's hardware
revision) and the vendor variable ``rollback-index:N`` (the stored anti-rollback index of
location N, 0..31): no standard fastboot variable carries it, and ``zflash flash`` reads it
when present (otherwise its rollback check is unverifiable). ``FastbootOptions.hidden_vars``
makes the device not report chosen variables, as a plainer bootloader would.

Written partitions are hashed into the device's committed records lazily (before
set_active, reboot and at the end of a connection), so a split image is hashed once.
"""

from __future__ import annotations

import logging
import socket
import threading
from contextlib import closing
from dataclasses import dataclass, field
from types import GeneratorType
from typing import Any, Callable, Generator, Iterator

from zflash.emulator.device import EmulatedDevice
from zflash.emulator.download_buffer import DownloadBuffer
from zflash.emulator.link import DeviceConnection, HostDisconnected
from zflash.emulator.storage import SLOTS
from zflash.errors import Code, ZflashError
from zflash.package.sparse import is_sparse
from zflash.protocol.fastboot.constants import (DEFAULT_TCP_PORT, FAIL, MAX_MESSAGE,
                                                TCP_HANDSHAKE_TIMEOUT)
from zflash.protocol.fastboot.device import DeviceEngine
from zflash.protocol.fastboot.events import (Command, DownloadData, DownloadDone, Malformed)
from zflash.protocol.fastboot.tcp import TcpFraming, encode_message, handshake, message_header
from zflash.protocol.fastboot.values import format_size, parse_slot
from zflash.protocol.fastboot.wire import encode_response

log = logging.getLogger(__name__)

UPLOAD_PIECE = 1 << 20
RECV_SIZE = 1 << 20
POLL = 0.2  # seconds between checks of the stop event
FASTBOOT_VERSION = "0.4"

# A handler returns the OKAY message, or is a generator that yields packets (INFO, DATA,
# upload data) first and returns it; returning _DEFERRED means the answer comes later.
Handler = Callable[[str], Any]
_DEFERRED = None


@dataclass
class FastbootOptions:
    """What the emulated bootloader reports beyond the device profile."""

    max_download_size: int | None = None  # None: the profile's max_download_size
    version_bootloader: str = "ZXBL-1.0"
    unlocked: bool = True
    secure: bool = True
    extra_vars: dict[str, str] = field(default_factory=dict)
    # Names (``version-baseband``) or families (``rollback-index``) the device does not
    # report: getvar FAILs and ``getvar all`` omits them.
    hidden_vars: frozenset[str] = frozenset()


class FastbootSession:
    """One host connection's fastboot conversation with an :class:`EmulatedDevice`.

    ``buffer``: the device's download buffer, shared by its connections one after another
    (the serve loops pass one); without it the session keeps its own and closes it at the
    end. Either way a new session has nothing staged."""

    def __init__(self, device: EmulatedDevice, options: FastbootOptions | None = None,
                 buffer: DownloadBuffer | None = None) -> None:
        self.device = device
        self.options = options or FastbootOptions()
        self.engine = DeviceEngine()
        self.closed = False  # the device "rebooted": the transport should drop the link
        self._own_buffer = buffer is None
        self._buffer = DownloadBuffer(device.storage.root) if buffer is None else buffer
        self._staged_size = 0  # of the download this session completed (0: none)
        self._dirty: set[tuple[str, str | None]] = set()
        self._after: list[Callable[[], None]] = []  # run after the OKAY went out
        self._handlers: dict[str, Handler] = {
            "getvar": self._getvar, "download": self._download, "upload": self._upload,
            "flash": self._flash, "erase": self._erase, "set_active": self._set_active,
            "reboot": self._reboot, "reboot-bootloader": self._reboot_to,
            "reboot-fastboot": self._reboot_to, "reboot-recovery": self._reboot_to,
            "continue": self._reboot, "oem": self._oem, "flashing": self._flashing,
        }

    @property
    def max_download_size(self) -> int:
        return self.options.max_download_size or self.device.storage.profile.max_download_size

    # --------------------------------------------------------------- packets
    def receive(self, data: bytes | memoryview, end: bool = True) -> Iterator[bytes]:
        """Feed one host packet (or a fragment, ``end=False``); yields the packets to send.

        Lazy: nothing happens until the result is iterated, so always drain it (even for
        download data, which yields nothing) before the next call. Actions that follow an
        answer (the boot simulation after ``reboot``'s OKAY) run as it is drained. Over USB,
        call it once per bulk OUT transfer and send each yielded packet as one IN transfer.
        """
        for event in self.engine.receive(data, end):
            if isinstance(event, DownloadData):
                self._write_staged(event.data)
            elif isinstance(event, DownloadDone):
                yield from self._download_done()
            elif isinstance(event, Malformed):
                yield self.engine.fail(event.reason)
            elif isinstance(event, Command):
                yield from self._dispatch(event)

    def close(self) -> None:
        """End of the connection: record what was written, forget the staged download."""
        try:
            self._commit_written()
        finally:
            self._staged_size = 0
            if self._own_buffer:
                self._buffer.close()

    def _dispatch(self, command: Command) -> Iterator[bytes]:
        verb, arg = command.split()
        handler = self._handlers.get(verb)
        if handler is None:
            yield self.engine.fail(f"unknown command {verb[:40]}")
            return
        self._after = after = []
        try:
            result = handler(arg)
            message = (yield from result) if isinstance(result, GeneratorType) else result
        except ZflashError as exc:
            yield self.engine.fail(exc.detail or exc.info.meaning)
            return
        if message is _DEFERRED:
            return
        yield self.engine.okay(message)
        for action in after:
            action()

    # --------------------------------------------------------------- getvar
    def _getvar(self, name: str) -> Generator[bytes, None, str | None]:
        if name == "all":
            for var, value in self._all_variables():
                yield self.engine.info(f"{var}: {value}")
            return ""
        return self.variable(name.strip())

    def variable(self, name: str) -> str:
        """The answer to ``getvar:NAME``; unknown -> FAIL (a ZflashError)."""
        base, _, param = name.partition(":")
        if self._hidden(name):
            raise ZflashError(Code.DEVICE_REFUSED, f"unknown variable {name[:60]}")
        simple = self._simple_variables()
        if name in simple:
            return simple[name]
        if base == "rollback-index":
            return str(self._rollback_index(param))
        if base == "has-slot":
            return "yes" if self._spec(param).slotted else "no"
        if base == "partition-size":
            return format_size(self._resolve(param, need_slot=False)[0].size)
        if base == "partition-type":
            self._resolve(param, need_slot=False)
            return "raw"
        if base == "is-logical":
            self._resolve(param, need_slot=False)
            return "no"
        if base in ("slot-successful", "slot-unbootable", "slot-retry-count"):
            state = self.device.meta["slots"][self._slot(param)]
            if base == "slot-successful":
                return "yes" if state["successful"] else "no"
            if base == "slot-unbootable":
                return "yes" if state["priority"] == 0 else "no"
            return str(state["tries_left"])
        raise ZflashError(Code.DEVICE_REFUSED, f"unknown variable {name[:60]}")

    def _hidden(self, name: str) -> bool:
        hidden = self.options.hidden_vars
        return name in hidden or name.partition(":")[0] in hidden

    def _rollback_index(self, param: str) -> int:
        """The stored index of an AVB rollback location (0..31; never written means 0)."""
        text = param.strip()
        if not text.isdigit() or int(text) > 31:
            raise ZflashError(Code.DEVICE_REFUSED, f"no rollback location {text[:20]!r} "
                                                   "(0..31)")
        return int(self.device.meta["rollback"].get(str(int(text)), 0))

    def _simple_variables(self) -> dict[str, str]:
        profile = self.device.storage.profile
        yes_no = {True: "yes", False: "no"}
        values = {
            "version": FASTBOOT_VERSION, "version-bootloader": self.options.version_bootloader,
            "version-baseband": profile.baseband, "product": profile.product,
            "serialno": profile.serial, "hw-revision": profile.hardware_revision,
            "secure": yes_no[self.options.secure], "unlocked": yes_no[self.options.unlocked],
            "max-download-size": format_size(self.max_download_size),
            "current-slot": self.device.meta["current_slot"], "slot-count": str(len(SLOTS)),
            "is-userspace": "no",
        }
        values.update(self.options.extra_vars)
        return values

    def _all_variables(self) -> Iterator[tuple[str, str]]:
        for name, value in self._every_variable():
            if not self._hidden(name):
                yield name, value

    def _every_variable(self) -> Iterator[tuple[str, str]]:
        yield from self._simple_variables().items()
        for location in sorted(self.device.meta["rollback"], key=int):
            yield f"rollback-index:{location}", str(self.device.meta["rollback"][location])
        for slot in SLOTS:
            for base in ("slot-successful", "slot-unbootable", "slot-retry-count"):
                if not self._hidden(f"{base}:{slot}"):
                    yield f"{base}:{slot}", self.variable(f"{base}:{slot}")
        for spec in self.device.storage.profile.partitions:
            yield f"has-slot:{spec.name}", "yes" if spec.slotted else "no"
            for name in ([f"{spec.name}_{s}" for s in SLOTS] if spec.slotted else [spec.name]):
                yield f"partition-size:{name}", format_size(spec.size)
                yield f"partition-type:{name}", "raw"

    # --------------------------------------------------------------- data
    def _download(self, arg: str) -> Generator[bytes, None, str | None]:
        try:
            size = int(arg.strip().removeprefix("0x"), 16)
        except ValueError:
            raise ZflashError(Code.PROTOCOL, f"bad download size {arg[:20]!r}") from None
        if not 0 < size <= self.max_download_size:
            raise ZflashError(Code.STORAGE, f"data too large: {size} bytes, max-download-size "
                                            f"is {self.max_download_size}")
        self._staged_size = 0  # until this download is complete
        self._buffer.begin()
        yield self.engine.start_download(size)
        return _DEFERRED

    def _write_staged(self, data: memoryview) -> None:
        self._buffer.write(data)

    def _download_done(self) -> Iterator[bytes]:
        self._staged_size = self._buffer.end()
        yield self.engine.okay()

    def _upload(self, arg: str) -> Generator[bytes, None, str | None]:
        if not self._staged_size:
            raise ZflashError(Code.DEVICE_REFUSED, "nothing staged to upload")
        yield self.engine.start_upload(self._staged_size)
        staged = self._buffer.reader()
        left = self._staged_size
        while left:
            data = staged.read(min(UPLOAD_PIECE, left))
            left -= len(data)
            yield self.engine.upload_data(data)
        return ""

    # --------------------------------------------------------------- partitions
    def _flash(self, arg: str) -> str:
        self._require_unlocked()
        spec, slot = self._resolve(arg, need_slot=True)
        if not self._staged_size:
            raise ZflashError(Code.DEVICE_REFUSED, "no image downloaded")
        staged = self._buffer.reader()
        sparse = is_sparse(staged.read(4))
        staged.seek(0)
        self._dirty.add((spec.name, slot))
        self.device.write_image(spec.name, slot, staged, self._staged_size, sparse)
        return ""

    def _erase(self, arg: str) -> str:
        self._require_unlocked()
        spec, slot = self._resolve(arg, need_slot=True)
        self._dirty.add((spec.name, slot))
        self.device.erase_image(spec.name, slot)
        return ""

    def _set_active(self, arg: str) -> str:
        self._commit_written()
        self.device.set_active(self._slot(arg))
        return ""

    def _reboot(self, arg: str) -> str:
        self._commit_written()
        self._after.append(self._boot)
        return ""

    def _boot(self) -> None:
        self.closed = True
        result = self.device.reboot()
        log.info("fastboot reboot: %s", result)

    def _reboot_to(self, arg: str) -> str:
        self._commit_written()
        self._after.append(lambda: setattr(self, "closed", True))
        return ""

    def _commit_written(self) -> None:
        while self._dirty:
            name, slot = self._dirty.pop()
            self.device.record_image_hash(name, slot)

    # --------------------------------------------------------------- oem and flashing
    def _oem(self, arg: str) -> Generator[bytes, None, str | None]:
        words = arg.split()
        if words == ["device-info"]:
            yield self.engine.info(f"Device unlocked: {str(self.options.unlocked).lower()}")
            yield self.engine.info(f"Current slot: {self.device.meta['current_slot']}")
            return ""
        if words == ["fail-next-boot"]:  # test hook: the next boot of the new slot fails
            self.device.fail_next_boot = True
            return ""
        raise ZflashError(Code.DEVICE_REFUSED, f"unknown oem command {arg[:40]!r}")

    def _flashing(self, arg: str) -> Generator[bytes, None, str | None]:
        word = arg.strip()
        if word in ("lock", "unlock"):
            self.options.unlocked = word == "unlock"
            return ""
        if word == "get_unlock_ability":
            yield self.engine.info("get_unlock_ability: 1")
            return ""
        raise ZflashError(Code.DEVICE_REFUSED, f"unknown flashing command {word[:40]!r}")

    # --------------------------------------------------------------- names
    def _require_unlocked(self) -> None:
        if not self.options.unlocked:
            raise ZflashError(Code.DEVICE_REFUSED, "device is locked: flashing is not allowed")

    def _spec(self, name: str) -> Any:
        return self.device.storage.spec(name.strip())

    def _resolve(self, name: str, need_slot: bool) -> tuple[Any, str | None]:
        """``boot_a`` -> (boot, a); ``logo`` -> (logo, None); ``boot`` alone needs a slot."""
        name = name.strip()
        profile = self.device.storage.profile
        for spec in profile.partitions:
            if spec.name == name and (not spec.slotted or not need_slot):
                return spec, None
            if spec.slotted and name.startswith(spec.name + "_") and \
                    name[len(spec.name) + 1:] in SLOTS:
                return spec, name[len(spec.name) + 1:]
        if any(spec.name == name for spec in profile.partitions):
            raise ZflashError(Code.SLOT, f"partition {name} has slots: name one ({name}_a)")
        raise ZflashError(Code.NO_SUCH_PARTITION, f"no partition {name[:60]!r}")

    @staticmethod
    def _slot(text: str) -> str:
        slot = parse_slot(text)
        if slot not in SLOTS:
            raise ZflashError(Code.SLOT, f"no slot {text[:20]!r}; slots are {', '.join(SLOTS)}")
        return slot


# ------------------------------------------------------------------------------ TCP
def serve_fastboot_tcp(device: EmulatedDevice, port: int = DEFAULT_TCP_PORT,
                       stop_event: threading.Event | None = None, *, host: str = "127.0.0.1",
                       options: FastbootOptions | None = None,
                       on_listening: Callable[[int], None] | None = None) -> None:
    """Serve fastboot over TCP on ``host:port`` until ``stop_event`` is set (blocking).

    One host at a time, as a real device; each connection gets a fresh
    :class:`FastbootSession` with the same ``options`` (so ``flashing lock`` sticks) and the
    same download buffer. ``port=0`` picks a free port; ``on_listening(port)`` is called
    once it listens.
    """
    stop = stop_event or threading.Event()
    options = options or FastbootOptions()
    buffer = DownloadBuffer(device.storage.root)
    with socket.create_server((host, port), reuse_port=False) as listener, \
            closing(buffer):
        listener.settimeout(POLL)
        if on_listening is not None:
            on_listening(listener.getsockname()[1])
        while not stop.is_set():
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            with conn:  # one host session at a time, ZDL or fastboot; a second is told so
                if not device.try_enter(f"fastboot over TCP from {peer[0]}:{peer[1]}"):
                    _serve_connection(conn, BusySession(device.busy_reason()), stop)
                    continue
                try:
                    _serve_connection(conn, FastbootSession(device, options, buffer), stop)
                finally:
                    device.leave()


class BusySession:
    """Stands in for a `FastbootSession` while another host holds the device: the first
    command gets FAIL with the reason (stock fastboot prints it and exits), then the
    connection ends, rather than a client left waiting on a lock."""

    def __init__(self, reason: str) -> None:
        self._reason = reason
        self.closed = False

    def receive(self, data: bytes | memoryview, end: bool = True) -> Iterator[bytes]:
        if end and not self.closed:
            self.closed = True
            yield encode_response(FAIL, self._reason[:MAX_MESSAGE])

    def close(self) -> None:
        self.closed = True


def _serve_connection(conn: socket.socket, session: FastbootSession | BusySession,
                      stop: threading.Event) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framing = TcpFraming()
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    try:
        conn.sendall(handshake())
        conn.settimeout(TCP_HANDSHAKE_TIMEOUT)
        while not framing.handshake_done:
            n = conn.recv_into(view[:4])
            if not n:
                return
            framing.receive(view[:n])
        conn.settimeout(POLL)
        while not stop.is_set() and not session.closed:
            try:
                n = conn.recv_into(view)
            except TimeoutError:
                continue
            if not n:
                return
            for fragment, last in framing.receive(view[:n]):
                for packet in session.receive(fragment, last):
                    _send_message(conn, packet)
                if session.closed:
                    break
    except ZflashError as exc:
        log.warning("fastboot connection dropped: %s", exc)
    except OSError as exc:
        log.info("fastboot connection lost: %s", exc)
    except Exception:  # one bad connection must not stop the device
        log.exception("fastboot connection failed")
    finally:
        try:
            session.close()
        except ZflashError as exc:
            log.warning("fastboot session close: %s", exc)


def _send_message(conn: socket.socket, packet: bytes | memoryview) -> None:
    if len(packet) <= 4096:
        conn.sendall(encode_message(packet))
    else:
        conn.sendall(message_header(len(packet)))
        conn.sendall(packet)


# ------------------------------------------------------------------------------ USB
def serve_fastboot_usb(device: EmulatedDevice, link: DeviceConnection,
                       options: FastbootOptions | None = None,
                       stop_event: threading.Event | None = None) -> None:
    """The firmware of an emulated USB device in fastboot mode (blocking).

    Pass it, bound to a device, as ``EmulatedUsbDevice(..., protocol="fastboot",
    server=lambda link: serve_fastboot_usb(device, link, options))``. Each bulk OUT transfer
    the link hands over is one fastboot packet (a command, or any part of a data phase, which
    may come in many transfers); each answer packet goes back as one IN transfer. The loop
    ends when the host unplugs the device, when ``stop_event`` is set, or after a reboot:
    the bootloader then stops answering, as a device leaving fastboot does (``replug()``
    brings it back in fastboot mode with a fresh session). A host that breaks the protocol
    (more data than announced) gets a fresh session, as a bootloader resets its state.
    """
    stop = stop_event or threading.Event()
    options = options or FastbootOptions()
    with device.lock, closing(DownloadBuffer(device.storage.root)) as buffer:
        # one host session at a time, ZDL or fastboot
        _serve_usb_session(device, link, options, stop, buffer)


def _serve_usb_session(device: EmulatedDevice, link: DeviceConnection,
                       options: FastbootOptions, stop: threading.Event,
                       buffer: DownloadBuffer) -> None:
    session = FastbootSession(device, options, buffer)
    try:
        while not stop.is_set() and not session.closed:
            try:
                data = link.read(RECV_SIZE, POLL)
            except HostDisconnected:
                return
            except ZflashError as exc:
                if exc.code == Code.TIMEOUT:
                    continue
                raise
            try:
                for packet in session.receive(data, True):
                    link.write(packet)
            except HostDisconnected:
                return
            except ZflashError as exc:
                log.warning("fastboot over USB: %s; starting a fresh session", exc)
                session.close()
                session = FastbootSession(device, options, buffer)
    finally:
        try:
            session.close()
        except ZflashError as exc:
            log.warning("fastboot session close: %s", exc)


class FastbootTcpServer:
    """:func:`serve_fastboot_tcp` in a background thread (tests, ``zflash emulate``).

    ``with FastbootTcpServer(device) as server: ... server.port`` (port 0 = a free one).
    """

    def __init__(self, device: EmulatedDevice, port: int = 0, host: str = "127.0.0.1",
                 options: FastbootOptions | None = None) -> None:
        self.device, self.host, self.options = device, host, options or FastbootOptions()
        self.port = port
        self.stop_event = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fastboot-tcp", daemon=True)

    def _run(self) -> None:
        try:
            serve_fastboot_tcp(self.device, self.port, self.stop_event, host=self.host,
                               options=self.options, on_listening=self._listening)
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()

    def _listening(self, port: int) -> None:
        self.port = port
        self._ready.set()

    def start(self) -> "FastbootTcpServer":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ZflashError(Code.USAGE, f"cannot serve fastboot on {self.host}:{self.port}: "
                                          f"{self._error}")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"fastboot+tcp://{self.host}:{self.port}"

    def __enter__(self) -> "FastbootTcpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

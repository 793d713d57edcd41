"""The host side of Sahara: upload a programmer, read the device's ids in command mode.

h11 style: feed what the transport read into ``receive_data``, pull ``next_event()`` until
``NEED_DATA``, write the bytes the ``send_*`` methods return (each one in its own USB
transfer: a real PBL rejects a packet split over two). No I/O, no clock: the 1 s Sahara
timeout belongs to the driver.

Flow (REFERENCE-EDL 2.5):
  Hello -> send_hello_resp(IMAGE_TX_PENDING) -> ReadData* (answer each with
  send_image_data) -> EndOfImage -> send_done() -> DoneResp;
  Hello -> send_hello_resp(COMMAND) -> CmdReady -> send_execute(c) -> ExecuteResp ->
  send_execute_data(c) -> ExecReply; ... send_switch_mode(IMAGE_TX_PENDING) -> Hello.
A HELLO is accepted whenever no answer of the host is pending: the device restarted.
"""

from __future__ import annotations

from enum import Enum
from typing import Union

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good
from zflash.protocol.sahara.constants import (
    AUTH_FAILURES,
    DEVICE_TO_HOST,
    HOST_COMPATIBLE,
    HOST_VERSION,
    MAX_EXEC_DATA,
    STATUS_SUCCESS,
    Mode,
    status_name,
)
from zflash.protocol.sahara.events import NEED_DATA, ExecReply, FirehoseRunning, NeedData
from zflash.protocol.sahara.packets import (
    CmdReady,
    Done,
    DoneResp,
    EndOfImage,
    Execute,
    ExecuteData,
    ExecuteResp,
    Hello,
    HelloResp,
    MemoryDebug,
    Packet,
    ReadData,
    Reset,
    ResetResp,
    SwitchMode,
    encode,
)
from zflash.protocol.sahara.reader import Buffer, PacketReader

HostEvent = Union[Hello, ReadData, EndOfImage, DoneResp, CmdReady, ExecuteResp, ExecReply,
                  ResetResp, MemoryDebug, FirehoseRunning]

_XML = b"<?xml"


class HostState(Enum):
    WAIT_HELLO = "wait-hello"  # the device's HELLO is due
    HELLO = "hello"  # HELLO arrived: send_hello_resp is due
    IMAGE = "image"  # programmer upload: READ_DATA or END_OF_IMAGE due
    SERVING = "serving"  # a READ_DATA arrived: send_image_data is due
    IMAGE_DONE = "image-done"  # END_OF_IMAGE(success): send_done is due
    DONE_SENT = "done-sent"  # DONE_RESP due
    COMMAND = "command"  # command mode: CMD_READY due
    COMMAND_READY = "command-ready"  # send_execute or send_switch_mode is due
    EXECUTING = "executing"  # EXECUTE_RESP (or a refusal) due
    EXEC_RESP = "exec-resp"  # send_execute_data is due
    EXEC_DATA = "exec-data"  # the raw reply is due
    MEMORY_DEBUG = "memory-debug"  # ramdump offered; zflash only resets
    RESET_SENT = "reset-sent"  # RESET_RESP due
    FINISHED = "finished"  # Sahara is over; Firehose follows
    FAILED = "failed"  # the device refused the image: send_reset
    BROKEN = "broken"  # protocol violation: send_reset (or replug)


# Which packets the device may send in each state (HELLO is handled separately).
_EXPECTED: dict[HostState, tuple[type, ...]] = {
    HostState.IMAGE: (ReadData, EndOfImage),
    HostState.DONE_SENT: (DoneResp,),
    HostState.COMMAND: (CmdReady,),
    HostState.EXECUTING: (ExecuteResp, EndOfImage),
    HostState.RESET_SENT: (ResetResp,),
    HostState.WAIT_HELLO: (),
}
# States in which a fresh HELLO (device restart, or the answer to SWITCH_MODE) is fine.
_HELLO_OK = frozenset({HostState.WAIT_HELLO, HostState.IMAGE, HostState.COMMAND,
                       HostState.RESET_SENT})


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"Sahara host engine misuse: {why}")


def end_of_image_error(event: EndOfImage) -> ZflashError:
    """The coded error for a refused image: an authentication status means a wrong programmer."""
    name = status_name(event.status)
    if event.status in AUTH_FAILURES:
        return ZflashError(Code.PROGRAMMER_REJECTED, f"the boot ROM refused image "
                                                     f"{event.image_id}: {name}")
    return ZflashError(Code.DEVICE_REFUSED, f"Sahara END_OF_IMAGE for image {event.image_id} "
                                            f"with status {name}")


class HostEngine:
    """One host-side Sahara session. Not thread-safe; one per device."""

    def __init__(self, version: int = HOST_VERSION, compatible: int = HOST_COMPATIBLE) -> None:
        self.version = version
        self.compatible = compatible
        self.state = HostState.WAIT_HELLO
        self.hello: Hello | None = None  # the device's last HELLO
        self.request: ReadData | None = None  # the READ_DATA being served
        self.bytes_served = 0
        self._reader = PacketReader(DEVICE_TO_HOST, "device")
        self._exec: ExecuteResp | None = None
        #: the host spoke first (no HELLO seen): a running programmer may answer with XML
        self._unanswered = False

    # -- receiving --------------------------------------------------------------------------
    def receive_data(self, data: Buffer) -> None:
        """Feed bytes read from the transport (any split; empty is ignored, e.g. a ZLP)."""
        self._reader.feed(data)

    @breaks_for_good("Sahara", HostState.BROKEN)
    def next_event(self) -> HostEvent | NeedData:
        """The next event or NEED_DATA; raises ZflashError(PROTOCOL) on a violation."""
        state = self.state
        if state is HostState.EXEC_DATA:
            return self._exec_data()
        if state is HostState.FINISHED or not len(self._reader):
            return NEED_DATA
        if state in (HostState.WAIT_HELLO, HostState.IMAGE) or self._unanswered:
            xml = self._reader.startswith(_XML)
            if xml is None:
                return NEED_DATA
            if xml:
                self.state = HostState.FINISHED
                return FirehoseRunning()
        packet = self._reader.packet()
        if packet is None:
            return NEED_DATA
        self._unanswered = False
        return self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> HostEvent:
        if isinstance(packet, Hello):
            if self.state not in _HELLO_OK:
                raise ZflashError(Code.PROTOCOL, f"Sahara: HELLO while {self.state.value}")
            return self._on_hello(packet)
        if isinstance(packet, MemoryDebug) and self.state is HostState.WAIT_HELLO:
            self.state = HostState.MEMORY_DEBUG
            return packet
        if not isinstance(packet, _EXPECTED.get(self.state, ())):
            raise ZflashError(Code.PROTOCOL, f"Sahara: {type(packet).__name__} while "
                                             f"{self.state.value}")
        if isinstance(packet, ReadData):
            if packet.wide and self.hello is not None and self.hello.version < 2:
                raise ZflashError(Code.PROTOCOL, "Sahara: READ_DATA_64 from a version-1 device")
            self.request = packet
            self.state = HostState.SERVING
        elif isinstance(packet, EndOfImage):
            if self.state is HostState.EXECUTING:  # the device refused the client command
                self.state = HostState.COMMAND_READY
            else:
                ok = packet.status == STATUS_SUCCESS
                self.state = HostState.IMAGE_DONE if ok else HostState.FAILED
        elif isinstance(packet, DoneResp):
            self.state = HostState.FINISHED if packet.complete else HostState.IMAGE
        elif isinstance(packet, CmdReady):
            self.state = HostState.COMMAND_READY
        elif isinstance(packet, ExecuteResp):
            self._on_execute_resp(packet)
        elif isinstance(packet, ResetResp):
            self.state = HostState.WAIT_HELLO
        return packet  # type: ignore[return-value]

    def _on_hello(self, hello: Hello) -> Hello:
        if hello.compatible > self.version or hello.version < self.compatible:
            raise ZflashError(Code.UNSUPPORTED_PROTOCOL, f"Sahara: device speaks version "
                                                         f"{hello.version} (compatible down to "
                                                         f"{hello.compatible}), zflash "
                                                         f"{self.compatible}..{self.version}")
        if hello.mode not in tuple(Mode):
            raise ZflashError(Code.PROTOCOL, f"Sahara: HELLO with unknown mode {hello.mode}")
        self.hello = hello
        self.state = HostState.HELLO
        return hello

    def _on_execute_resp(self, resp: ExecuteResp) -> None:
        if self._exec is None or resp.cmd != self._exec.cmd:
            raise ZflashError(Code.PROTOCOL, f"Sahara: EXECUTE_RESP for command {resp.cmd}, "
                                             "which was not asked")
        if resp.length > MAX_EXEC_DATA:
            raise ZflashError(Code.PROTOCOL, f"Sahara: command {resp.cmd} announces "
                                             f"{resp.length} bytes (limit {MAX_EXEC_DATA})")
        self._exec = resp
        self.state = HostState.EXEC_RESP

    def _exec_data(self) -> HostEvent | NeedData:
        assert self._exec is not None
        data = self._reader.raw(self._exec.length)
        if data is None:
            return NEED_DATA
        self.state = HostState.COMMAND_READY
        return ExecReply(self._exec.cmd, data)

    def take_unparsed(self) -> bytes:
        """Bytes received after Sahara ended (FINISHED): the start of the Firehose stream."""
        if self.state is not HostState.FINISHED:
            raise _misuse("take_unparsed before Sahara finished")
        return self._reader.take()

    # -- sending ----------------------------------------------------------------------------
    def send_hello_resp(self, mode: int = Mode.IMAGE_TX_PENDING) -> bytes:
        """Answer HELLO asking for ``mode`` (0 upload, 3 command mode).

        Allowed before any HELLO too: on the COM variant the driver may swallow the HELLO,
        so the host speaks first (as qdl does).
        """
        if self.state not in (HostState.HELLO, HostState.WAIT_HELLO):
            raise _misuse(f"HELLO_RESP while {self.state.value}")
        if mode not in (Mode.IMAGE_TX_PENDING, Mode.COMMAND, Mode.MEMORY_DEBUG):
            raise _misuse(f"HELLO_RESP mode {mode}")
        self._unanswered = self.state is HostState.WAIT_HELLO
        self.state = {Mode.IMAGE_TX_PENDING: HostState.IMAGE, Mode.COMMAND: HostState.COMMAND,
                      Mode.MEMORY_DEBUG: HostState.WAIT_HELLO}[Mode(mode)]
        return encode(HelloResp(self.version, self.compatible, STATUS_SUCCESS, mode))

    def send_image_data(self, image: Buffer) -> memoryview:
        """The bytes the pending READ_DATA asks for, sliced from ``image`` (no copy).

        A request past the end of the image is refused (as qdl does) rather than padded:
        the device is asking for a different image than the one zflash holds.
        """
        if self.state is not HostState.SERVING or self.request is None:
            raise _misuse(f"image data while {self.state.value}")
        request = self.request
        end = request.offset + request.length
        if end > len(image):
            self.state = HostState.BROKEN
            raise ZflashError(Code.PROTOCOL, f"Sahara: the device asked for bytes "
                                             f"{request.offset}..{end} of image "
                                             f"{request.image_id}, which has {len(image)}")
        self.state = HostState.IMAGE
        self.request = None
        self.bytes_served += request.length
        return memoryview(image)[request.offset:end]

    def send_done(self) -> bytes:
        """After a successful END_OF_IMAGE."""
        if self.state is not HostState.IMAGE_DONE:
            raise _misuse(f"DONE while {self.state.value}")
        self.state = HostState.DONE_SENT
        return encode(Done())

    def send_execute(self, cmd: int) -> bytes:
        """Ask for client command ``cmd`` (an ExecCmd) in command mode."""
        if self.state is not HostState.COMMAND_READY:
            raise _misuse(f"EXECUTE while {self.state.value}")
        self._exec = ExecuteResp(cmd, 0)
        self.state = HostState.EXECUTING
        return encode(Execute(cmd))

    def send_execute_data(self) -> bytes:
        """After EXECUTE_RESP: the device then sends the announced bytes (an ExecReply)."""
        if self.state is not HostState.EXEC_RESP or self._exec is None:
            raise _misuse(f"EXECUTE_DATA while {self.state.value}")
        self.state = HostState.EXEC_DATA
        return encode(ExecuteData(self._exec.cmd))

    def send_switch_mode(self, mode: int = Mode.IMAGE_TX_PENDING) -> bytes:
        """Leave command mode; the device answers with a new HELLO."""
        if self.state is not HostState.COMMAND_READY:
            raise _misuse(f"SWITCH_MODE while {self.state.value}")
        self.state = HostState.WAIT_HELLO
        return encode(SwitchMode(mode))

    def send_reset(self) -> bytes:
        """Abort: allowed in any state (qdl resets on every error); buffered input is dropped."""
        self._reader.clear()
        self.request = None
        self.state = HostState.RESET_SENT
        return encode(Reset())

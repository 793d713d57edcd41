"""The device side of Sahara (what a PBL does), for the emulator and for tests.

The engine frames and checks the host's packets; the device logic decides what to do and calls
the answer methods. Each answer method returns one packet, to be sent as its own transfer.

  hello() -> HelloResp -> read_data(...)* -> ImageData* -> end_of_image(id) -> Done ->
  done_resp() -> FINISHED (Firehose follows; ``take_unparsed`` hands over early bytes).
  hello() -> HelloResp(mode 3) -> cmd_ready() -> Execute -> execute_resp(cmd, n) ->
  ExecuteData -> execute_data(bytes) ... or refuse(status); SwitchMode -> hello() again.
"""

from __future__ import annotations

from enum import Enum
from typing import Union

from zflash.errors import Code, ZflashError
from zflash.protocol.latch import breaks_for_good
from zflash.protocol.sahara.constants import (
    DEVICE_COMPATIBLE,
    DEVICE_MAX_CMD,
    DEVICE_VERSION,
    HOST_TO_DEVICE,
    MAX_EXEC_DATA,
    STATUS_EXEC_CMD_UNSUPPORTED,
    STATUS_SUCCESS,
    Mode,
)
from zflash.protocol.sahara.events import NEED_DATA, ImageData, NeedData
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
    Packet,
    ReadData,
    Reset,
    ResetResp,
    ResetStateMachine,
    SwitchMode,
    encode,
)
from zflash.protocol.sahara.reader import Buffer, PacketReader

DeviceEvent = Union[HelloResp, ImageData, Done, Execute, ExecuteData, SwitchMode, Reset,
                    ResetStateMachine]


class DeviceState(Enum):
    START = "start"  # hello() is due
    WAIT_HELLO_RESP = "wait-hello-resp"
    ACTING = "acting"  # the device logic must answer (read_data, end_of_image, ...)
    RECEIVING = "receiving"  # image bytes for a READ_DATA are due
    WAIT_DONE = "wait-done"  # END_OF_IMAGE(success) sent
    REFUSED = "refused"  # END_OF_IMAGE(error) sent: only RESET/DONE are expected
    WAIT_EXECUTE = "wait-execute"  # command mode: EXECUTE, SWITCH_MODE or RESET
    WAIT_EXEC_DATA = "wait-exec-data"
    FINISHED = "finished"  # DONE_RESP(complete) sent: Sahara is over
    BROKEN = "broken"


_EXPECTED: dict[DeviceState, tuple[type, ...]] = {
    DeviceState.WAIT_HELLO_RESP: (HelloResp,),
    DeviceState.WAIT_DONE: (Done,),
    DeviceState.REFUSED: (Done,),
    DeviceState.WAIT_EXECUTE: (Execute, SwitchMode),
    DeviceState.WAIT_EXEC_DATA: (ExecuteData,),
}


def _misuse(why: str) -> ZflashError:
    return ZflashError(Code.INTERNAL, f"Sahara device engine misuse: {why}")


class DeviceEngine:
    """One device-side Sahara session (a HELLO v2 PBL announcing max_cmd 1024 by default)."""

    def __init__(self, version: int = DEVICE_VERSION, compatible: int = DEVICE_COMPATIBLE,
                 max_cmd: int = DEVICE_MAX_CMD) -> None:
        self.version = version
        self.compatible = compatible
        self.max_cmd = max_cmd
        self.state = DeviceState.START
        self.mode: int | None = None  # the mode the host asked for in HELLO_RESP
        self._reader = PacketReader(HOST_TO_DEVICE, "host")
        self._request: ReadData | None = None
        self._exec: ExecuteResp | None = None

    # -- receiving --------------------------------------------------------------------------
    def receive_data(self, data: Buffer) -> None:
        """Feed bytes from the host (any split)."""
        self._reader.feed(data)

    @breaks_for_good("Sahara", DeviceState.BROKEN)
    def next_event(self) -> DeviceEvent | NeedData:
        """The next event or NEED_DATA; a host out of turn is ZflashError(PROTOCOL)."""
        if self.state is DeviceState.FINISHED or not len(self._reader):
            return NEED_DATA
        if self.state is DeviceState.RECEIVING:
            assert self._request is not None
            data = self._reader.raw(self._request.length)
            if data is None:
                return NEED_DATA
            request, self._request = self._request, None
            self.state = DeviceState.ACTING
            return ImageData(request.image_id, request.offset, data)
        packet = self._reader.packet()
        if packet is None:
            return NEED_DATA
        return self._on_packet(packet)

    def _on_packet(self, packet: Packet) -> DeviceEvent:
        if isinstance(packet, (Reset, ResetStateMachine)):
            self.state = DeviceState.ACTING
            return packet
        if not isinstance(packet, _EXPECTED.get(self.state, ())):
            raise ZflashError(Code.PROTOCOL, f"Sahara: {type(packet).__name__} while the "
                                             f"device was {self.state.value}")
        if isinstance(packet, HelloResp):
            if packet.mode not in (Mode.IMAGE_TX_PENDING, Mode.MEMORY_DEBUG, Mode.COMMAND):
                raise ZflashError(Code.PROTOCOL, f"Sahara: HELLO_RESP mode {packet.mode}")
            self.mode = packet.mode
        elif isinstance(packet, ExecuteData):
            if self._exec is None or packet.cmd != self._exec.cmd:
                raise ZflashError(Code.PROTOCOL, f"Sahara: EXECUTE_DATA for {packet.cmd}, not "
                                                 "the command announced")
        self.state = DeviceState.ACTING
        return packet  # type: ignore[return-value]

    def take_unparsed(self) -> bytes:
        """Bytes that followed Sahara's end (the host's first Firehose XML, on a stream)."""
        return self._reader.take()

    # -- answering --------------------------------------------------------------------------
    def hello(self, mode: int = Mode.IMAGE_TX_PENDING) -> bytes:
        """HELLO: on connect, after SWITCH_MODE and after a reset."""
        if self.state not in (DeviceState.START, DeviceState.ACTING):
            raise _misuse(f"HELLO while {self.state.value}")
        self.state = DeviceState.WAIT_HELLO_RESP
        return encode(Hello(self.version, self.compatible, self.max_cmd, mode))

    def read_data(self, image_id: int, offset: int, length: int,
                  wide: bool | None = None) -> bytes:
        """Ask for image bytes; ``wide`` (default: version >= 2.8's READ_DATA_64 only when a
        field does not fit 32 bits) picks READ_DATA_64."""
        self._acting("READ_DATA")
        if length <= 0:
            raise _misuse("READ_DATA of no bytes")
        if wide is None:
            wide = max(image_id, offset, length) > 0xFFFFFFFF
        self._request = ReadData(image_id, offset, length, wide)
        self.state = DeviceState.RECEIVING
        return encode(self._request)

    def end_of_image(self, image_id: int, status: int = STATUS_SUCCESS) -> bytes:
        """The image is complete (status 0: DONE is expected) or refused (a NAK status)."""
        self._acting("END_OF_IMAGE")
        self.state = DeviceState.WAIT_DONE if status == STATUS_SUCCESS else DeviceState.REFUSED
        return encode(EndOfImage(image_id, status))

    def done_resp(self, complete: bool = True) -> bytes:
        """Answer DONE; ``complete`` False is MSM8916's pending DONE_RESP (a quirk option)."""
        self._acting("DONE_RESP")
        self.state = DeviceState.FINISHED
        return encode(DoneResp(complete))

    def reset_resp(self) -> bytes:
        """Answer RESET; hello() is then due."""
        self._acting("RESET_RESP")
        self.state = DeviceState.START
        return encode(ResetResp())

    def cmd_ready(self) -> bytes:
        """Command mode: ready for EXECUTE (after HELLO_RESP(3) or a finished command)."""
        self._acting("CMD_READY")
        self.state = DeviceState.WAIT_EXECUTE
        return encode(CmdReady())

    def execute_resp(self, cmd: int, length: int) -> bytes:
        """Accept client command ``cmd``: its reply will be ``length`` bytes."""
        self._acting("EXECUTE_RESP")
        if not 0 <= length <= MAX_EXEC_DATA:
            raise _misuse(f"execute reply of {length} bytes")
        self._exec = ExecuteResp(cmd, length)
        self.state = DeviceState.WAIT_EXEC_DATA
        return encode(self._exec)

    def execute_data(self, data: bytes) -> bytes:
        """The reply bytes announced by execute_resp; command mode continues."""
        self._acting("execute data")
        if self._exec is None or len(data) != self._exec.length:
            raise _misuse("execute data of another length than announced")
        self._exec = None
        self.state = DeviceState.WAIT_EXECUTE
        return bytes(data)

    def refuse(self, status: int = STATUS_EXEC_CMD_UNSUPPORTED) -> bytes:
        """Refuse the EXECUTE just received (END_OF_IMAGE with ``status``); stay in command
        mode. The status a real device uses is not confirmed (D42)."""
        self._acting("a refusal")
        self.state = DeviceState.WAIT_EXECUTE
        return encode(EndOfImage(0, status))

    def _acting(self, what: str) -> None:
        if self.state is not DeviceState.ACTING:
            raise _misuse(f"{what} while {self.state.value}")

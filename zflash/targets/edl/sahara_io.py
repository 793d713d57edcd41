"""The I/O driver of the Sahara host engine: read the device's ids, upload the programmer.

Over USB every Sahara packet is one bulk transfer (a real PBL rejects a packet split over
two). On the COM variant (a byte stream, REFERENCE-EDL 1) the QDLoader driver may swallow the
device's HELLO, so when none arrives within HELLO_WAIT the host speaks first with an
unsolicited HELLO_RESP, as qdl does. Over USB the HELLO waits in the device's IN endpoint,
so no HELLO within HELLO_WAIT_USB means no boot ROM is talking: ``silent`` says so, and the
target probes for a programmer an earlier session left running (D212). A leading ``<?xml``
means a programmer already runs: Sahara is skipped and the ids stay unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from zflash.errors import Code, ZflashError
from zflash.protocol.sahara import (NEED_DATA, CmdReady, DoneResp, EndOfImage, ExecCmd,
                                    ExecReply, ExecuteResp, FirehoseRunning, Hello, HostEngine,
                                    HostState, Mode, ReadData, decode_chip_id_v3, decode_hw_id,
                                    decode_pk_hash, decode_serial, end_of_image_error)
from zflash.transport.base import Transport

HELLO_WAIT = 0.3  # seconds to wait for HELLO on a stream before speaking first
HELLO_WAIT_USB = 1.0  # seconds of USB silence that mean no boot ROM talks (qdl's Sahara read)
READ_SIZE = 1 << 16


@dataclass(frozen=True)
class SaharaIds:
    """What command mode told (None: the device refused, or Sahara was skipped)."""

    version: int | None
    serial: str | None
    hw_id: str | None  # 16 hex digits
    oem_key_hash: str | None  # hex


class SaharaSession:
    """Sahara from the first HELLO to the running programmer, on one transport."""

    def __init__(self, transport: Transport, timeout: float) -> None:
        self.transport, self.timeout = transport, timeout
        self.engine = HostEngine()
        self.firehose_running = False
        self.silent = False  # USB: no HELLO came (a programmer may still run, D212)
        self.sent = 0

    def _write(self, data: bytes | memoryview) -> None:
        self.transport.write(data)
        self.sent += len(data)

    def _event(self, timeout: float | None = None) -> object:
        while True:
            event = self.engine.next_event()
            if event is not NEED_DATA:
                return event
            self.engine.receive_data(self.transport.read(READ_SIZE, timeout or self.timeout))

    def _expect(self, kind: type | tuple[type, ...], what: str) -> object:
        event = self._event()
        if isinstance(event, EndOfImage) and kind is not EndOfImage:
            raise end_of_image_error(event)
        if not isinstance(event, kind):
            raise ZflashError(Code.PROTOCOL, f"Sahara: expected {what}, got "
                                             f"{type(event).__name__}")
        return event

    # -- command mode -------------------------------------------------------------------------
    def read_ids(self) -> SaharaIds:
        """HELLO -> command mode -> serial, HW id (or chip id v3), key hash -> back to HELLO."""
        stream = self.transport.is_stream
        try:
            first = self._event(HELLO_WAIT if stream else HELLO_WAIT_USB)
        except ZflashError as exc:
            if exc.code != Code.TIMEOUT:
                raise
            if not stream:
                self.silent = True
                return SaharaIds(None, None, None, None)
            first = None  # the COM driver swallowed the HELLO: speak first
        if isinstance(first, FirehoseRunning):
            self.firehose_running = True
            return SaharaIds(None, None, None, None)
        if first is not None and not isinstance(first, Hello):
            raise ZflashError(Code.PROTOCOL, f"Sahara: expected HELLO, got "
                                             f"{type(first).__name__}")
        self._write(self.engine.send_hello_resp(Mode.COMMAND))
        if isinstance(self._expect((CmdReady, FirehoseRunning) if first is None else CmdReady,
                                   "CMD_READY"), FirehoseRunning):
            self.firehose_running = True  # spoke first, and a programmer NAKed those bytes
            return SaharaIds(None, None, None, None)
        serial = self._execute(ExecCmd.SERIAL_NUM_READ)
        hw = self._execute(ExecCmd.MSM_HW_ID_READ)
        hw_id = decode_hw_id(hw).hex if hw is not None else None
        if hw_id is None:
            chip = self._execute(ExecCmd.READ_CHIP_ID_V3)
            if chip is not None:
                hw_id = decode_chip_id_v3(chip).hw_id.hex
        key = self._execute(ExecCmd.OEM_PK_HASH_READ)
        self._write(self.engine.send_switch_mode(Mode.IMAGE_TX_PENDING))
        hello = self._expect(Hello, "HELLO after SWITCH_MODE")
        assert isinstance(hello, Hello)
        return SaharaIds(hello.version,
                         f"{decode_serial(serial):08x}" if serial is not None else None,
                         hw_id, decode_pk_hash(key).hex() if key is not None else None)

    def _execute(self, cmd: int) -> bytes | None:
        """One client command's reply; None when the device refuses it."""
        self._write(self.engine.send_execute(cmd))
        event = self._event()
        if isinstance(event, EndOfImage):
            return None  # refused (v3 parts do not answer MSM_HW_ID_READ)
        if not isinstance(event, ExecuteResp):
            raise ZflashError(Code.PROTOCOL, f"Sahara: expected EXECUTE_RESP, got "
                                             f"{type(event).__name__}")
        self._write(self.engine.send_execute_data())
        reply = self._event()
        assert isinstance(reply, ExecReply)
        return bytes(reply.data)

    # -- upload -------------------------------------------------------------------------------
    def upload(self, image: bytes) -> bytes:
        """Serve the programmer until it runs; returns the first Firehose bytes received.

        A refused image is PROGRAMMER_REJECTED (9046) for an authentication status. A pending
        DONE_RESP (MSM8916) is accepted: the programmer's first XML then ends Sahara.
        """
        if self.firehose_running:  # its first bytes, if it spoke before the host did
            finished = self.engine.state is HostState.FINISHED
            return self.engine.take_unparsed() if finished else b""
        self._write(self.engine.send_hello_resp(Mode.IMAGE_TX_PENDING))
        while True:
            event = self._event()
            if isinstance(event, ReadData):
                self._write(self.engine.send_image_data(image))
            elif isinstance(event, EndOfImage):
                if self.engine.state is HostState.FAILED:
                    raise end_of_image_error(event)
                self._write(self.engine.send_done())
            elif isinstance(event, DoneResp):
                if event.complete:
                    break
            elif isinstance(event, FirehoseRunning):
                break
            else:
                raise ZflashError(Code.PROTOCOL, f"Sahara: {type(event).__name__} during the "
                                                 "programmer upload")
        return self.engine.take_unparsed()

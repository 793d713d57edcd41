"""Sahara engines: host wired to device in memory, every flow, and hostile input."""

from __future__ import annotations

import random
import struct

import pytest

from zflash.errors import Code, ZflashError
from zflash.protocol import sahara as sh
from zflash.protocol.sahara import NEED_DATA, ExecCmd, Mode

PROGRAMMER = random.Random(13).randbytes(10_000)
HWID = sh.HwId(0x000A50E1, 0x0051, 0x4985)
PKHASH = bytes(range(1, 33))


def events(engine) -> list:
    out = []
    while (event := engine.next_event()) is not NEED_DATA:
        out.append(event)
    return out


class Pbl:
    """A minimal device logic: serves the programmer in 0x34 + 4 KiB pieces, answers ids."""

    def __init__(self, wide: bool = False, version: int = 2, pending: bool = False) -> None:
        self.engine = sh.DeviceEngine(version=version)
        self.wide, self.pending = wide, pending
        self.image = bytearray()
        self.hellos = 0

    def start(self) -> bytes:
        self.hellos += 1
        return self.engine.hello()

    def _next_read(self) -> bytes:
        offset = len(self.image)
        if offset >= len(PROGRAMMER):
            return self.engine.end_of_image(sh.PROGRAMMER_IMAGE_ID)
        length = 0x34 if offset == 0 else min(4096, len(PROGRAMMER) - offset)
        return self.engine.read_data(sh.PROGRAMMER_IMAGE_ID, offset, length, wide=self.wide)

    def handle(self, data: bytes) -> list[bytes]:
        self.engine.receive_data(data)
        out = []
        for event in events(self.engine):
            if isinstance(event, sh.HelloResp):
                out.append(self.engine.cmd_ready() if event.mode == Mode.COMMAND
                           else self._next_read())
            elif isinstance(event, sh.ImageData):
                assert event.offset == len(self.image)
                self.image += event.data
                out.append(self._next_read())
            elif isinstance(event, sh.Done):
                out.append(self.engine.done_resp(complete=not self.pending))
            elif isinstance(event, sh.Execute):
                reply = {ExecCmd.SERIAL_NUM_READ: sh.encode_serial(0x5A1EE025),
                         ExecCmd.MSM_HW_ID_READ: sh.encode_hw_id(HWID),
                         ExecCmd.OEM_PK_HASH_READ: sh.encode_pk_hash(PKHASH),
                         ExecCmd.READ_CHIP_ID_V3: sh.encode_chip_id_v3(
                             sh.ChipIdV3(0x1234, HWID), alternative_oem=True),
                         ExecCmd.GET_SOFTWARE_VERSION_SBL: sh.encode_sbl_version(7)}
                if event.cmd in reply:
                    self._reply = reply[event.cmd]
                    out.append(self.engine.execute_resp(event.cmd, len(self._reply)))
                else:
                    out.append(self.engine.refuse())
            elif isinstance(event, sh.ExecuteData):
                out.append(self.engine.execute_data(self._reply))
            elif isinstance(event, sh.SwitchMode):
                out.append(self.start())
            elif isinstance(event, sh.Reset):
                out.append(self.engine.reset_resp())
        return out


def run_host(host: sh.HostEngine, pbl: Pbl, first: bytes, act, split: int = 0) -> list:
    """Pump bytes both ways until quiet; ``act(event)`` returns the host's answer or None.

    ``split`` > 0 feeds the host that many bytes at a time (the COM variant's byte stream).
    """
    seen: list = []
    to_host = [first]
    while to_host:
        data = to_host.pop(0)
        pieces = [data[i:i + split] for i in range(0, len(data), split)] if split else [data]
        for piece in pieces:
            host.receive_data(piece)
            for event in events(host):
                seen.append(event)
                answer = act(event)
                if answer is not None:
                    to_host.extend(pbl.handle(bytes(answer)))
    return seen


def uploader(host: sh.HostEngine):
    def act(event):
        if isinstance(event, sh.Hello):
            return host.send_hello_resp(Mode.IMAGE_TX_PENDING)
        if isinstance(event, sh.ReadData):
            return host.send_image_data(PROGRAMMER)
        if isinstance(event, sh.EndOfImage):
            assert event.status == 0
            return host.send_done()
        return None
    return act


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("split", [0, 1, 5])
def test_programmer_upload(wide: bool, split: int) -> None:
    host, pbl = sh.HostEngine(), Pbl(wide=wide)
    seen = run_host(host, pbl, pbl.start(), uploader(host), split)
    assert bytes(pbl.image) == PROGRAMMER
    assert host.state is sh.HostState.FINISHED and host.bytes_served == len(PROGRAMMER)
    reads = [e for e in seen if isinstance(e, sh.ReadData)]
    assert reads[0].length == 0x34 and all(r.wide is wide for r in reads)
    assert seen[-1] == sh.DoneResp(True)
    assert host.hello == sh.Hello(2, 1, 1024, 0)


def test_pending_done_resp_then_firehose_xml() -> None:
    """MSM8916 says 'pending' after its only image; XML that follows means Firehose runs."""
    host, pbl = sh.HostEngine(), Pbl(pending=True)
    seen = run_host(host, pbl, pbl.start(), uploader(host))
    assert seen[-1] == sh.DoneResp(False) and host.state is sh.HostState.IMAGE
    host.receive_data(b"<?xml version")
    assert events(host) == [sh.FirehoseRunning()]
    host.receive_data(b'="1.0" ?><data/>')
    assert host.take_unparsed() == b'<?xml version="1.0" ?><data/>'


def test_firehose_already_running_instead_of_hello() -> None:
    host = sh.HostEngine()
    host.receive_data(b"<?x")
    assert host.next_event() is NEED_DATA
    host.receive_data(b"ml")
    assert host.next_event() == sh.FirehoseRunning()


def test_firehose_answering_a_hello_resp_sent_first() -> None:
    """The host spoke first (the COM driver may swallow HELLO); XML in answer means a
    programmer runs (D212). Once a Sahara packet came, XML is a protocol error again."""
    host = sh.HostEngine()
    host.send_hello_resp(sh.Mode.COMMAND)
    host.receive_data(b"<?xml version")
    assert host.next_event() == sh.FirehoseRunning()
    host = sh.HostEngine()
    host.receive_data(sh.encode(sh.Hello(2, 1, 1024, 0)))
    assert isinstance(host.next_event(), sh.Hello)
    host.send_hello_resp(sh.Mode.COMMAND)
    host.receive_data(b"<?xml version")
    with pytest.raises(ZflashError, match="unknown command id"):
        host.next_event()


def test_command_mode_reads_every_id_and_switches_back() -> None:
    host, pbl = sh.HostEngine(), Pbl()
    todo = [ExecCmd.SERIAL_NUM_READ, ExecCmd.MSM_HW_ID_READ, ExecCmd.OEM_PK_HASH_READ,
            ExecCmd.READ_CHIP_ID_V3, ExecCmd.GET_SOFTWARE_VERSION_SBL, ExecCmd.GET_TRAINING_DATA]
    replies: dict[int, bytes] = {}
    refused: list[int] = []
    hellos: list[sh.Hello] = []

    def act(event):
        if isinstance(event, sh.Hello):
            hellos.append(event)
            return host.send_hello_resp(Mode.COMMAND) if len(hellos) == 1 else None
        if isinstance(event, sh.ExecuteResp):
            return host.send_execute_data()
        if isinstance(event, sh.ExecReply):
            replies[event.cmd] = event.data
        if isinstance(event, sh.EndOfImage):
            refused.append(event.status)
        if isinstance(event, (sh.CmdReady, sh.ExecReply, sh.EndOfImage)):
            return host.send_execute(todo.pop(0)) if todo else host.send_switch_mode()
        return None

    run_host(host, pbl, pbl.start(), act)
    assert sh.decode_serial(replies[ExecCmd.SERIAL_NUM_READ]) == 0x5A1EE025
    assert sh.decode_hw_id(replies[ExecCmd.MSM_HW_ID_READ]) == HWID
    assert sh.decode_hw_id(replies[ExecCmd.MSM_HW_ID_READ]).hex == "000a50e100514985"
    assert sh.decode_pk_hash(replies[ExecCmd.OEM_PK_HASH_READ]) == PKHASH
    assert sh.decode_chip_id_v3(replies[ExecCmd.READ_CHIP_ID_V3]) == sh.ChipIdV3(0x1234, HWID)
    assert sh.decode_sbl_version(replies[ExecCmd.GET_SOFTWARE_VERSION_SBL]) == 7
    assert refused == [0x1F]  # GET_TRAINING_DATA is not served by this PBL
    assert len(hellos) == 2 and host.state is sh.HostState.HELLO  # SWITCH_MODE -> new HELLO


def test_unsolicited_hello_resp_for_the_com_variant() -> None:
    """The QDLoader driver may swallow HELLO: the host speaks first, the device goes on."""
    host, pbl = sh.HostEngine(), Pbl()
    pbl.start()  # its HELLO is lost
    first = pbl.handle(host.send_hello_resp())
    seen = run_host(host, pbl, first[0], uploader(host))
    assert bytes(pbl.image) == PROGRAMMER and seen[-1] == sh.DoneResp(True)


def test_reset_after_a_refused_image() -> None:
    """END_OF_IMAGE with an error: the host resets, the device answers and says HELLO again."""
    host, device = sh.HostEngine(), sh.DeviceEngine()
    host.receive_data(device.hello())
    host.next_event()
    device.receive_data(host.send_hello_resp())
    device.next_event()
    host.receive_data(device.end_of_image(13, 0x25))
    assert events(host) == [sh.EndOfImage(13, 0x25)]
    device.receive_data(host.send_reset())
    assert events(device) == [sh.Reset()]
    host.receive_data(device.reset_resp())
    assert events(host) == [sh.ResetResp()] and host.state is sh.HostState.WAIT_HELLO
    host.receive_data(device.hello())
    assert isinstance(host.next_event(), sh.Hello)


@pytest.mark.parametrize("pk, want", [
    (PKHASH * 3, PKHASH),
    (PKHASH + bytes(32), PKHASH),
    (bytes(range(48)) * 2, bytes(range(48))),
    (bytes(range(1, 41)) + bytes(24), bytes(range(1, 41)) + bytes(8)),  # rounds up to 48
    (bytes(96), bytes(32)),
])
def test_pk_hash_rules(pk: bytes, want: bytes) -> None:
    assert sh.decode_pk_hash(pk) == want


def test_chip_id_v3_primary_oem_field() -> None:
    data = sh.encode_chip_id_v3(sh.ChipIdV3(9, HWID))
    assert sh.decode_chip_id_v3(data) == sh.ChipIdV3(9, HWID)


# --- hostile and malformed input -------------------------------------------------------------
def header(cmd: int, length: int) -> bytes:
    return struct.pack("<II", cmd, length)


def host_after_hello(mode: int = Mode.IMAGE_TX_PENDING) -> sh.HostEngine:
    host = sh.HostEngine()
    host.receive_data(sh.encode(sh.Hello(2, 1, 1024, 0)))
    assert isinstance(host.next_event(), sh.Hello)
    host.send_hello_resp(mode)
    return host


@pytest.mark.parametrize("data, words", [
    (header(0x01, 0xFFFFFFFF), "claims 4294967295"),  # a 4 GiB HELLO: refused on the header
    (header(0x03, 0x1000), "claims 4096"),
    (header(0x77, 0x30), "unknown command id 0x77"),
    (header(0x02, 0x30) + bytes(40), "HELLO_RESP cannot come from the device"),
    (sh.encode(sh.DoneResp(True)), "DoneResp while image"),
    (sh.encode(sh.Hello(2, 1, 1024, 9)), "unknown mode 9"),
    (header(0x06, 0x0C) + struct.pack("<I", 7), "DONE_RESP status 7"),
])
def test_host_refuses_hostile_packets(data: bytes, words: str) -> None:
    host = host_after_hello() if words != "unknown mode 9" else sh.HostEngine()
    host.receive_data(data[:8])
    with pytest.raises(ZflashError) as err:
        host.receive_data(data[8:])
        host.next_event()
    assert err.value.code == Code.PROTOCOL and words in err.value.detail
    assert host.state is sh.HostState.BROKEN
    with pytest.raises(ZflashError):
        host.next_event()


def test_host_refuses_read_past_image_end() -> None:
    host = host_after_hello()
    host.receive_data(sh.encode(sh.ReadData(13, len(PROGRAMMER) - 4, 8)))
    assert isinstance(host.next_event(), sh.ReadData)
    with pytest.raises(ZflashError) as err:
        host.send_image_data(PROGRAMMER)
    assert err.value.code == Code.PROTOCOL and "has 10000" in err.value.detail


def test_host_refuses_oversized_exec_reply() -> None:
    host = host_after_hello(Mode.COMMAND)
    host.receive_data(sh.encode(sh.CmdReady()))
    host.next_event()
    host.send_execute(ExecCmd.SERIAL_NUM_READ)
    host.receive_data(sh.encode(sh.ExecuteResp(ExecCmd.SERIAL_NUM_READ, 0xFFFFFFFF)))
    with pytest.raises(ZflashError) as err:
        host.next_event()
    assert err.value.code == Code.PROTOCOL and "limit 4096" in err.value.detail


def test_host_refuses_reply_to_a_command_not_asked() -> None:
    host = host_after_hello(Mode.COMMAND)
    host.receive_data(sh.encode(sh.CmdReady()))
    host.next_event()
    host.send_execute(ExecCmd.SERIAL_NUM_READ)
    host.receive_data(sh.encode(sh.ExecuteResp(ExecCmd.OEM_PK_HASH_READ, 4)))
    with pytest.raises(ZflashError, match="not asked"):
        host.next_event()


@pytest.mark.parametrize("status, code", [(0x25, Code.PROGRAMMER_REJECTED),
                                          (0x0D, Code.DEVICE_REFUSED)])
def test_refused_image_is_a_coded_error(status: int, code: Code) -> None:
    host = host_after_hello()
    host.receive_data(sh.encode(sh.EndOfImage(13, status)))
    event = host.next_event()
    assert isinstance(event, sh.EndOfImage) and host.state is sh.HostState.FAILED
    error = sh.end_of_image_error(event)
    assert error.code == code and sh.status_name(status) in error.detail
    with pytest.raises(ZflashError):
        host.send_done()


def test_host_refuses_incompatible_version() -> None:
    host = sh.HostEngine()
    host.receive_data(sh.encode(sh.Hello(5, 4, 1024, 0)))
    with pytest.raises(ZflashError) as err:
        host.next_event()
    assert err.value.code == Code.UNSUPPORTED_PROTOCOL


def test_short_exec_replies_are_refused() -> None:
    for decode, size in [(sh.decode_serial, 3), (sh.decode_hw_id, 7), (sh.decode_pk_hash, 31),
                         (sh.decode_chip_id_v3, 43)]:
        with pytest.raises(ZflashError) as err:
            decode(bytes(size))
        assert err.value.code == Code.PROTOCOL


def test_device_refuses_host_out_of_turn() -> None:
    device = sh.DeviceEngine()
    device.hello()
    device.receive_data(sh.encode(sh.Done()))
    with pytest.raises(ZflashError) as err:
        device.next_event()
    assert err.value.code == Code.PROTOCOL and device.state is sh.DeviceState.BROKEN


def test_device_refuses_hostile_length_and_direction() -> None:
    for data in (header(0x02, 0xFFFFFFF0), header(0x01, 0x30)):
        device = sh.DeviceEngine()
        device.hello()
        device.receive_data(data)
        with pytest.raises(ZflashError) as err:
            device.next_event()
        assert err.value.code == Code.PROTOCOL


def test_device_ignores_reserved_words_of_hello_resp() -> None:
    """edl fills the six reserved words with 1..6."""
    device = sh.DeviceEngine()
    device.hello()
    device.receive_data(struct.pack("<II4I6I", 0x02, 0x30, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6))
    assert device.next_event() == sh.HelloResp(2, 1, 0, 0)


def test_engine_misuse_is_internal() -> None:
    host = sh.HostEngine()
    with pytest.raises(ZflashError) as err:
        host.send_done()
    assert err.value.code == Code.INTERNAL
    device = sh.DeviceEngine()
    with pytest.raises(ZflashError):
        device.read_data(13, 0, 10)

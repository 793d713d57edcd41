"""Firehose engines: host wired to the emulated programmer in memory, and hostile input."""

from __future__ import annotations

import hashlib
import random
import zlib

import pytest

from zflash.errors import Code, ZflashError
from zflash.protocol import firehose as fh
from zflash.protocol.firehose import NEED_DATA

SS = 4096


class Link:
    """Host engine <-> Programmer; ``stream`` joins all device packets (the COM variant)."""

    def __init__(self, stream: bool = False, payload: int = 1 << 20, **options) -> None:
        self.storage = fh.MemoryStorage([64, 32], SS)
        self.device = fh.Programmer(self.storage, **options)
        self.host = fh.HostEngine(max_payload=payload)
        self.stream = stream
        self.events: list = []
        self.read = bytearray()
        self._deliver(self.device.startup())
        self.startup_logs = [e.text for e in self.events if isinstance(e, fh.Log)]

    def _deliver(self, packets) -> None:
        packets = list(packets)
        if self.stream:
            packets = [b"".join(packets)]
        for packet in packets:
            self.host.receive_data(packet)
            while (event := self.host.next_event()) is not NEED_DATA:
                self.events.append(event)
                if isinstance(event, fh.ReadData):
                    self.read += event.data

    def to_device(self, data: bytes) -> None:
        self.device.receive_data(data)
        self._deliver(self.device.data_to_send())

    def run(self, doc: bytes, data: bytes = b"") -> fh.Result:
        self.events, self.read = [], bytearray()
        self.to_device(doc)
        if self.host.state is fh.HostState.SENDING:
            step = self.host.payload_to_target
            for i in range(0, len(data), step):
                self.to_device(bytes(self.host.program_data(data[i:i + step])))
        return self.host.settle()

    def configure(self, **kw) -> fh.Result:
        result = self.run(self.host.configure(**kw))
        while self.host.reconfigure:
            result = self.run(self.host.configure(**kw))
        return result


@pytest.fixture(params=[False, True], ids=["usb", "stream"])
def link(request) -> Link:
    link = Link(stream=request.param)
    link.configure()
    return link


def test_startup_logs_list_functions() -> None:
    link = Link()
    assert any("Chip serial num" in line for line in link.startup_logs)
    assert "program" in link.startup_logs and link.startup_logs[-1].startswith("End of")


def test_configure_ack_path() -> None:
    link = Link()
    result = link.run(link.host.configure("ufs"))
    assert result.ack and link.host.configured and link.host.reconfigure is None
    assert link.host.payload_to_target == 1 << 20 and link.device.zlp_aware is True


def test_configure_nak_path_negotiates_down() -> None:
    """The device takes 64 KiB: NAK with its value, then configure again and ACK."""
    link = Link(max_payload=65536)
    first = link.run(link.host.configure("ufs"))
    assert not first.ack and link.host.reconfigure == 65536 and not link.host.configured
    second = link.run(link.host.configure("ufs"))
    assert second.ack and link.host.configured and link.host.payload_to_target == 65536
    assert link.device.payload == 65536


def test_configure_ack_with_larger_supported_reconfigures_up() -> None:
    link = Link(max_payload=1 << 20, payload=1 << 20)
    link.run(link.host.configure("ufs", payload=8192))
    assert link.host.reconfigure == 1 << 20
    assert link.run(link.host.configure("ufs")).ack and link.host.configured


@pytest.mark.parametrize("spelling", fh.ZLP_SPELLINGS)
def test_both_zlp_spellings_reach_the_device(spelling: str) -> None:
    link = Link()
    link.host = fh.HostEngine(zlp_spelling=spelling)
    doc = link.host.configure("ufs", zlp_aware=False)
    assert f'{spelling}="0"'.encode() in doc
    assert link.run(doc).ack and link.device.zlp_aware is False


def test_configure_wrong_memory_is_a_coded_nak() -> None:
    link = Link(memory_name="emmc")
    result = link.run(link.host.configure("ufs"))
    assert not result.ack and link.host.reconfigure is None
    error = result.error()
    assert error.code == Code.DEVICE_REFUSED
    assert "Not support configure MemoryName ufs" in error.detail
    assert "storage type" in error.detail


def test_configure_ack_without_supported_is_refused() -> None:
    host = fh.HostEngine()
    host.configure("ufs")
    host.receive_data(fh.encode_document("response", {
        "value": "ACK", "MaxPayloadSizeToTargetInBytes": 1048576}))
    host.next_event()
    with pytest.raises(ZflashError) as err:
        host.settle()
    assert err.value.code == Code.PROTOCOL and "Supported" in err.value.detail


def test_commands_before_configure_are_nakked() -> None:
    link = Link()
    result = link.run(link.host.read(0, 0, 1, SS))
    assert not result.ack and "configure" in result.error().detail


def test_program_then_read_back(link: Link) -> None:
    data = random.Random(1).randbytes(5 * SS - 100)
    padded = fh.pad_to_sector(data, SS)
    result = link.run(link.host.program(1, 3, 5, SS), padded)
    assert result.ack
    assert link.storage.luns[1][3 * SS:8 * SS] == padded
    assert link.run(link.host.read(1, 3, 5, SS)).ack and bytes(link.read) == padded
    responses = [e for e in link.events if isinstance(e, fh.Response)]
    assert [r.rawmode for r in responses] == [True, False]


def test_program_in_small_chunks_and_odd_splits() -> None:
    link = Link(payload=1000)
    link.configure()
    assert link.host.payload_to_target == 1000
    data = random.Random(2).randbytes(3 * SS)
    assert link.run(link.host.program(0, "NUM_DISK_SECTORS-3.", 3, SS), data).ack
    assert link.storage.luns[0][-3 * SS:] == data


def test_read_data_arrives_with_the_ack_on_a_stream() -> None:
    """On the COM variant the rawmode ACK and the first data bytes come in one read."""
    link = Link(stream=True)
    link.configure()
    link.storage.luns[0][:SS] = b"\n" + bytes(range(255)) * 16 + b"x" * 15
    assert link.run(link.host.read(0, 0, 1, SS)).ack
    assert bytes(link.read) == link.storage.luns[0][:SS]


def test_erase_range_and_whole_lun(link: Link) -> None:
    link.storage.luns[1][:] = b"\xaa" * len(link.storage.luns[1])
    assert link.run(link.host.erase(1, SS, 2, 3)).ack
    assert link.storage.luns[1][2 * SS:5 * SS] == bytes(3 * SS)
    assert link.storage.luns[1][:2 * SS] == b"\xaa" * 2 * SS
    assert link.run(link.host.erase(1, SS)).ack
    assert link.storage.luns[1] == bytes(32 * SS)


def test_patch_plain_and_crc32_and_num_disk_sectors(link: Link) -> None:
    lun = link.storage.luns[0]
    lun[2 * SS:2 * SS + 100] = b"entries" * 14 + b"xx"
    assert link.run(link.host.patch(0, SS, "NUM_DISK_SECTORS-1.", 32, 8,
                                    "NUM_DISK_SECTORS-1.")).ack
    assert int.from_bytes(lun[63 * SS + 32:63 * SS + 40], "little") == 63
    assert link.run(link.host.patch(0, SS, 1, 88, 4, "CRC32(2,100)")).ack
    assert int.from_bytes(lun[SS + 88:SS + 92], "little") == zlib.crc32(lun[2 * SS:2 * SS + 100])
    assert link.run(link.host.patch(0, SS, 1, 16, 4, 0)).ack
    assert link.run(link.host.patch(0, SS, 1, 16, 4, "CRC32(1,92)")).ack
    header = bytearray(lun[SS:SS + 92])
    stored = int.from_bytes(header[16:20], "little")
    header[16:20] = bytes(4)
    assert stored == zlib.crc32(header)
    assert link.run(link.host.patch(0, SS, 0, 0, 2, "0x1234")).ack and lun[:2] == b"\x34\x12"


@pytest.mark.parametrize("value, size, words", [
    ("CRC32(60,99999)", 4, "outside"),
    ("65536", 2, "does not fit"),
    ("NUM_DISK_SECTORS*2", 4, "not understood"),
    ("1", 3, "not 1, 2, 4 or 8"),
])
def test_bad_patches_are_nakked(link: Link, value: str, size: int, words: str) -> None:
    result = link.run(link.host.patch(0, SS, 1, 0, size, value))
    assert not result.ack and words in result.error().detail


def test_patch_of_a_host_file_is_nakked(link: Link) -> None:
    doc = link.host.command("patch", {"SECTOR_SIZE_IN_BYTES": SS, "byte_offset": 0,
                                      "filename": "gpt_main0.bin", "physical_partition_number": 0,
                                      "size_in_bytes": 4, "start_sector": 1, "value": 0})
    assert not link.run(doc).ack


def test_getsha256digest(link: Link) -> None:
    link.storage.luns[0][SS:4 * SS] = random.Random(3).randbytes(3 * SS)
    result = link.run(link.host.getsha256digest(0, 1, 3, SS))
    assert result.digest() == hashlib.sha256(link.storage.luns[0][SS:4 * SS]).digest()


def test_digest_from_attribute_spelling() -> None:
    result = fh.Result("getsha256digest", True, {"SHA256": "ab" * 32}, ())
    assert result.digest() == b"\xab" * 32
    assert fh.Result("x", True, {}, ("no digest here",)).digest() is None


def test_getstorageinfo(link: Link) -> None:
    info = fh.storage_info(link.run(link.host.getstorageinfo(1)).check())
    assert info["total_blocks"] == 32 and info["block_size"] == SS
    assert info["num_physical"] == 2 and info["SECTOR_SIZE_IN_BYTES"] == str(SS)


def test_nop_power_setbootable(link: Link) -> None:
    assert link.run(link.host.nop()).logs == ("nop received",)
    assert link.run(link.host.setbootablestoragedrive(1)).ack and link.device.bootable_lun == 1
    assert not link.run(link.host.setbootablestoragedrive(7)).ack
    assert link.run(link.host.power("reset", 10)).ack and link.device.power_request == "reset"


def test_sector_size_probe_gets_the_real_nak_text(link: Link) -> None:
    result = link.run(link.host.read(0, 1, 1, 512))
    assert not result.ack
    assert "'SECTOR_SIZE_IN_BYTES'=512 must be equal to disk sector size 4096" in result.logs[0]
    assert "sector size" in result.error().detail
    assert link.run(link.host.read(0, 1, 1, SS)).ack


def test_out_of_range_and_bad_lun(link: Link) -> None:
    assert not link.run(link.host.program(0, 63, 2, SS)).ack
    assert not link.run(link.host.read(5, 0, 1, SS)).ack
    assert link.host.state is fh.HostState.IDLE


def test_logs_after_the_response_are_kept_until_settle() -> None:
    """MSM8916 sends the NAK's reason after the NAK: the quiet period collects it."""
    link = Link(logs_after_response=True)
    link.configure()
    link.events = []
    link.to_device(link.host.read(0, 0, 1, 512))
    kinds = [type(e).__name__ for e in link.events]
    assert kinds == ["Response", "Log"] and link.host.state is fh.HostState.SETTLING
    result = link.host.settle()
    assert not result.ack and "must be equal" in result.logs[0]
    with pytest.raises(ZflashError) as err:
        result.check()
    assert err.value.code == Code.DEVICE_REFUSED and "must be equal" in err.value.detail


def test_unsolicited_logs_while_idle_are_events_not_errors() -> None:
    host = fh.HostEngine()
    host.receive_data(fh.encode_document("log", {"value": "hello"}))
    assert host.next_event() == fh.Log("hello")


# --- hostile and malformed input -------------------------------------------------------------
def host_waiting(tag: str = "nop") -> fh.HostEngine:
    host = fh.HostEngine()
    host.command(tag)
    return host


@pytest.mark.parametrize("data, words", [
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><data>&a;</data>', "DOCTYPE"),
    (b"<?xml version='1.0'?><data><log value='x'/>" + b" " * 20000, "runs past"),
    (b"garbage<?xml?>", "where an XML document was due"),
    (b"<?xml version='1.0'?><data><log value='x'></data>", "malformed XML"),
    (b"<?xml version='1.0'?><other/></data>", "malformed XML"),
    (b"<?xml version='1.0'?><data><response value='MAYBE'/></data>", "response value"),
])
def test_host_refuses_hostile_xml(data: bytes, words: str) -> None:
    host = host_waiting()
    host.receive_data(data)
    with pytest.raises(ZflashError) as err:
        host.next_event()
    assert err.value.code == Code.PROTOCOL and words in err.value.detail
    assert host.state is fh.HostState.BROKEN


def test_host_refuses_responses_out_of_turn() -> None:
    host = fh.HostEngine()
    host.receive_data(fh.encode_document("response", {"value": "ACK"}))
    with pytest.raises(ZflashError, match="response while idle"):
        host.next_event()
    host = host_waiting("nop")
    host.receive_data(fh.encode_document("response", {"value": "ACK", "rawmode": "true"}))
    with pytest.raises(ZflashError, match="rawmode response to nop"):
        host.next_event()
    host = fh.HostEngine()
    host.program(0, 0, 1, SS)
    host.receive_data(fh.encode_document("response", {"value": "ACK"}))
    with pytest.raises(ZflashError, match="without a data phase"):
        host.next_event()


def test_host_refuses_early_program_ack() -> None:
    host = fh.HostEngine()
    host.program(0, 0, 2, SS)
    host.receive_data(fh.encode_document("response", {"value": "ACK", "rawmode": "true"}))
    host.next_event()
    host.program_data(bytes(SS))
    host.receive_data(fh.encode_document("response", {"value": "ACK", "rawmode": "false"}))
    with pytest.raises(ZflashError, match="still unsent"):
        host.next_event()


def test_host_refuses_garbage_payload_sizes() -> None:
    host = fh.HostEngine()
    host.configure("ufs")
    host.receive_data(fh.encode_document("response", {
        "value": "NAK", "MaxPayloadSizeToTargetInBytes": "-5"}))
    host.next_event()
    with pytest.raises(ZflashError) as err:
        host.settle()
    assert err.value.code == Code.PROTOCOL


def test_host_caps_a_huge_offered_payload() -> None:
    host = fh.HostEngine()
    host.configure("ufs")
    host.receive_data(fh.encode_document("response", {
        "value": "ACK", "MaxPayloadSizeToTargetInBytes": 1 << 20,
        "MaxPayloadSizeToTargetInBytesSupported": 1 << 32}))
    host.next_event()
    host.settle()
    assert host.payload_to_target == 1 << 20 and host.configured


def test_engine_misuse_is_internal() -> None:
    host = fh.HostEngine()
    with pytest.raises(ZflashError) as err:
        host.program_data(b"x")
    assert err.value.code == Code.INTERNAL
    host.nop()
    with pytest.raises(ZflashError):
        host.nop()  # one command at a time


def test_device_nakks_malformed_and_entity_xml_and_goes_on() -> None:
    link = Link()
    link.configure()
    link.device.receive_data(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "e">]>'
                             b"<data><nop/></data>")
    out = list(link.device.data_to_send())
    assert b'value="NAK"' in out[-1] and b"DOCTYPE" in out[0]
    link.device.receive_data(b"<?xml version='1.0'?><data><nop/><nop/></data>")
    assert b'value="NAK"' in list(link.device.data_to_send())[-1]
    assert link.run(link.host.nop()).ack


def test_device_nakks_bytes_that_are_not_xml_and_goes_on() -> None:
    """A Sahara packet sent to a running programmer (a host that spoke first, D212) is
    answered with a NAK; a document right after it, even split at its start, still runs."""
    link = Link()
    link.configure()
    hello_resp = (2).to_bytes(4, "little") + (48).to_bytes(4, "little") + bytes(40)
    link.device.receive_data(hello_resp + b"<?x")
    out = list(link.device.data_to_send())
    assert b'value="NAK"' in out[-1] and b"48 bytes that are not an XML document" in out[0]
    link.device.receive_data(b'ml version="1.0" ?><data><nop /></data>')
    assert b'value="ACK"' in list(link.device.data_to_send())[-1]
    assert link.run(link.host.nop()).ack


def test_device_refuses_an_oversized_document() -> None:
    device = fh.DeviceEngine()
    device.receive_data(b"<?xml version='1.0'?><data>" + b" " * 5000)
    with pytest.raises(ZflashError) as err:
        device.next_event()
    assert err.value.code == Code.PROTOCOL


def test_splitter_cuts_a_stream_into_documents() -> None:
    splitter = fh.XmlSplitter(4096, "device")
    docs = [fh.encode_document("log", {"value": f"line {i}"}) for i in range(3)]
    stream = b"\r\n".join(docs) + b"\n"
    for i in range(0, len(stream), 7):
        splitter.feed(stream[i:i + 7])
    got = []
    while (doc := splitter.document()) is not None:
        got.append(doc)
    assert got == docs


@pytest.mark.parametrize("text, value", [
    ("NUM_DISK_SECTORS-5.", 59), ("NUM_DISK_SECTORS", 64), ("34", 34), ("34.", 34),
    ("0x22", 34), (" NUM_DISK_SECTORS - 33 ", 31),
])
def test_sector_expressions(text: str, value: int) -> None:
    assert fh.sector_value(text, 64) == value


@pytest.mark.parametrize("text", ["NUM_DISK_SECTORS-65.", "1e3", "__import__('os')", ""])
def test_sector_expressions_refused(text: str) -> None:
    with pytest.raises(ZflashError) as err:
        fh.sector_value(text, 64)
    assert err.value.code == Code.PROTOCOL


def test_log_is_cut_to_fit_max_xml() -> None:
    engine = fh.DeviceEngine(max_xml=4096)
    doc = engine.log("x" * 10000)
    assert len(doc) <= 4096 and fh.parse_document(doc)[0].tag == "log"

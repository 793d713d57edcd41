"""Fastboot engines in memory: host <-> device, lenient parsing, TCP framing, hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zflash.errors import Code, ZflashError
from zflash.protocol.fastboot import (Command, DataRequest, DeviceEngine, DeviceState,
                                      DownloadData, DownloadDone, Fail, HostEngine, HostState,
                                      Info, Malformed, Okay, TcpFraming, Text, UploadData)
from zflash.protocol.fastboot.tcp import encode_message, handshake, message_header
from zflash.protocol.fastboot.values import (format_size, parse_bool, parse_size, parse_slot,
                                             parse_var_line)
from zflash.protocol.fastboot.wire import encode_command, parse_response

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def code_of(func, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(ZflashError) as info:
        func(*args)
    return info.value.code


# --- a whole conversation in memory ----------------------------------------------------------

def test_getvar_round_trip() -> None:
    host, device = HostEngine(), DeviceEngine()
    events = device.receive(host.send_command("getvar:product"))
    assert events == [Command("getvar:product")]
    assert events[0].split() == ("getvar", "product")
    assert host.receive(device.okay("zx-demo")) == [Okay("zx-demo")]
    assert host.state is HostState.IDLE and device.state is DeviceState.COMMAND


def test_getvar_all_info_lines_then_okay() -> None:
    host, device = HostEngine(), DeviceEngine()
    device.receive(host.send_command("getvar:all"))
    got = host.receive(device.info("product: zx")) + host.receive(device.text("hello"))
    got += host.receive(device.okay())
    assert got == [Info("product: zx"), Text("hello"), Okay("")]


def test_download_counts_bytes_both_sides() -> None:
    host, device = HostEngine(), DeviceEngine()
    assert device.receive(host.send_download(10)) == [Command("download:0000000a")]
    assert host.receive(device.start_download(10)) == [DataRequest(10)]
    first = device.receive(host.send_data(b"01234"))
    assert [type(e) for e in first] == [DownloadData]
    second = device.receive(host.send_data(b"56789"))
    assert bytes(second[0].data) == b"56789" and second[1] == DownloadDone(10)
    assert host.state is HostState.WAITING
    assert host.receive(device.okay()) == [Okay("")]


def test_upload_round_trip() -> None:
    host, device = HostEngine(), DeviceEngine()
    device.receive(host.send_command("upload"))
    assert host.receive(device.start_upload(6)) == [DataRequest(6)]
    got = host.receive(device.upload_data(b"abc"), end=True)
    got += host.receive(device.upload_data(b"def"), end=True)
    assert b"".join(bytes(e.data) for e in got if isinstance(e, UploadData)) == b"abcdef"
    assert host.receive(device.okay()) == [Okay("")]


def test_device_fail_mid_download_drains_and_stays_in_step() -> None:
    host, device = HostEngine(), DeviceEngine()
    device.receive(host.send_download(8))
    host.receive(device.start_download(8))
    device.receive(host.send_data(b"1234"))
    fail = device.fail("out of space")
    assert host.receive(fail) == [Fail("out of space")]
    assert host.state is HostState.IDLE
    assert device.receive(b"5678") == []  # the rest is discarded
    assert device.receive(host.send_command("getvar:x")) == [Command("getvar:x")]


def test_oem_and_flashing_split_on_space() -> None:
    assert Command("oem device-info extra").split() == ("oem", "device-info extra")
    assert Command("flashing unlock").split() == ("flashing", "unlock")
    assert Command("set_active:a").split() == ("set_active", "a")
    assert Command("reboot-bootloader").split() == ("reboot-bootloader", "")


# --- strict with what is sent ----------------------------------------------------------------

def test_commands_are_printable_ascii_and_bounded() -> None:
    assert encode_command("x" * 4096)
    assert code_of(encode_command, "x" * 4097) == Code.USAGE
    assert code_of(encode_command, "getvar:\x00") == Code.USAGE
    assert code_of(encode_command, "flash:bööt") == Code.USAGE
    assert code_of(encode_command, "") == Code.USAGE


def test_download_command_is_eight_hex_digits() -> None:
    assert HostEngine().send_download(0x100000) == b"download:00100000"
    assert code_of(HostEngine().send_download, 0) == Code.USAGE
    assert code_of(HostEngine().send_download, 1 << 32) == Code.USAGE


def test_device_responses_fit_256_bytes() -> None:
    device = DeviceEngine()
    device.receive(b"getvar:x")
    assert len(device.info("é" + "x" * 1000)) == 256
    assert len(device.okay("y" * 1000)) == 256


# --- lenient with what devices send ----------------------------------------------------------

@pytest.mark.parametrize("packet, event", [
    (b"OKAY", Okay("")),
    (b"OKAY0x4000\x00\x00\x00", Okay("0x4000")),
    (b"OKAY yes \r\n", Okay(" yes")),
    (b"FAILunknown variable", Fail("unknown variable")),
    (b"INFO\xffodd", Info("?odd")),
    (b"DATA00001000", DataRequest(0x1000)),
    (b"DATA0x1000", DataRequest(0x1000)),
    (b"DATA 1000 ", DataRequest(0x1000)),
])
def test_lenient_response_parsing(packet: bytes, event: object) -> None:
    assert parse_response(packet) == event


@pytest.mark.parametrize("packet", [b"", b"OK", b"WHAT is this", b"okay", b"DATAzz",
                                    b"DATA123456789", b"OKAY" + b"x" * 253])
def test_bad_responses_are_protocol_errors(packet: bytes) -> None:
    assert code_of(parse_response, packet) == Code.PROTOCOL


@pytest.mark.parametrize("text, value", [("0x100000", 1 << 20), ("1048576", 1 << 20),
                                         (" 0X10 ", 16), ("268435456\x00", 1 << 28)])
def test_sizes_decimal_or_hex(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "0x", "-5", "12k", "0xZZ"])
def test_bad_sizes_are_protocol_errors(text: str) -> None:
    assert code_of(parse_size, text) == Code.PROTOCOL


def test_slots_bools_and_var_lines() -> None:
    assert parse_slot("_a") == parse_slot(" a ") == parse_slot("A") == "a"
    assert parse_slot("") is None
    assert parse_bool("YES") is True and parse_bool("0") is False and parse_bool("?") is None
    assert parse_var_line("partition-size:boot_a: 0x40000") == ("partition-size:boot_a",
                                                                "0x40000")
    assert parse_var_line("has-slot:boot:yes") == ("has-slot:boot", "yes")
    assert parse_var_line("version-bootloader: 1.2: beta") == ("version-bootloader",
                                                               "1.2: beta")
    assert parse_var_line("no separator") is None
    assert format_size(4096) == "0x1000"


# --- the host catches devices that break the protocol ----------------------------------------

def test_host_rejects_oversized_response_before_end_of_packet() -> None:
    host = HostEngine()
    host.send_command("getvar:x")
    host.receive(b"OKAY" + b"x" * 200, end=False)
    assert code_of(host.receive, b"x" * 100, False) == Code.PROTOCOL
    assert host.state is HostState.BROKEN
    assert code_of(host.receive, b"OKAY") == Code.PROTOCOL


def test_host_rejects_data_answer_to_getvar_and_wrong_size() -> None:
    host = HostEngine()
    host.send_command("getvar:x")
    assert code_of(host.receive, b"DATA00000010") == Code.PROTOCOL
    host = HostEngine()
    host.send_download(16)
    assert code_of(host.receive, b"DATA00000020") == Code.PROTOCOL


def test_host_rejects_okay_before_download_complete() -> None:
    host = HostEngine()
    host.send_download(16)
    host.receive(b"DATA00000010")
    host.send_data(b"x" * 8)
    assert code_of(host.receive, b"OKAY") == Code.PROTOCOL


def test_host_rejects_upload_overrun_and_unsolicited_bytes() -> None:
    host = HostEngine()
    host.send_command("upload")
    host.receive(b"DATA00000004")
    assert code_of(host.receive, b"12345") == Code.PROTOCOL
    assert code_of(HostEngine().receive, b"OKAY") == Code.PROTOCOL


def test_fail_mid_download_is_an_event() -> None:
    host = HostEngine()
    host.send_download(16)
    host.receive(b"DATA00000010")
    host.send_data(b"x" * 8)
    assert host.receive(b"FAILflash full") == [Fail("flash full")]
    assert host.state is HostState.IDLE


def test_zero_length_packets_are_ignored() -> None:
    host, device = HostEngine(), DeviceEngine()
    assert device.receive(b"") == []
    device.receive(host.send_command("getvar:x"))
    assert host.receive(b"") == []
    assert host.receive(b"OKAY1") == [Okay("1")]


# --- the device survives hosts that break it -------------------------------------------------

def test_device_malformed_commands_get_fail() -> None:
    device = DeviceEngine()
    device.receive(b"x" * 3000, end=False)
    assert device.receive(b"x" * 3000, end=True) == [Malformed("command longer than 4096 "
                                                               "bytes")]
    assert device.fail("no").startswith(b"FAIL")
    assert device.receive(b"getvar:\xff") == [Malformed("command is not ASCII")]
    device.fail("no")
    assert device.receive(b"getvar:\x01") == [Malformed("command holds control characters")]


def test_device_rejects_bytes_while_busy_and_download_overrun() -> None:
    device = DeviceEngine()
    device.receive(b"getvar:x")
    assert code_of(device.receive, b"more") == Code.PROTOCOL
    device = DeviceEngine()
    device.receive(b"download:00000002")
    device.start_download(2)
    assert code_of(device.receive, b"abc") == Code.PROTOCOL


def test_engines_refuse_caller_mistakes_with_internal() -> None:
    assert code_of(DeviceEngine().okay) == Code.INTERNAL
    assert code_of(HostEngine().send_data, b"x") == Code.INTERNAL
    host = HostEngine()
    host.send_command("getvar:x")
    assert code_of(host.send_command, "getvar:y") == Code.INTERNAL


# --- TCP framing -------------------------------------------------------------------------------

def test_tcp_handshake_and_messages_across_partial_reads() -> None:
    stream = handshake() + encode_message(b"OKAY") + message_header(5) + b"hello" + \
        encode_message(b"")
    for step in (1, 3, 7, len(stream)):
        framing, out = TcpFraming(), []
        for pos in range(0, len(stream), step):
            out += [(bytes(v), last) for v, last in framing.receive(stream[pos:pos + step])]
        assert framing.version == 1
        messages, current = [], b""
        for data, last in out:
            current += data
            if last:
                messages.append(current)
                current = b""
        assert messages == [b"OKAY", b"hello", b""]


def test_tcp_big_message_is_not_buffered() -> None:
    framing = TcpFraming()
    framing.receive(handshake())
    framing.receive(message_header(1 << 30))
    chunk = bytes(1 << 20)
    fragments = framing.receive(chunk)
    assert len(fragments) == 1 and fragments[0][1] is False
    assert fragments[0][0].obj is chunk  # a view of the caller's bytes, no copy
    assert framing.in_message


def test_tcp_handshake_versions() -> None:
    framing = TcpFraming()
    framing.receive(b"FB07")
    assert framing.version == 1  # the smaller of the two
    assert code_of(TcpFraming().receive, b"HTTP") == Code.PROTOCOL
    assert code_of(TcpFraming().receive, b"FB00") == Code.UNSUPPORTED_PROTOCOL
    bounded = TcpFraming(max_message=100)
    bounded.receive(b"FB01")
    assert code_of(bounded.receive, message_header(101)) == Code.PROTOCOL


# --- hostile bytes: only coded errors, never a traceback -------------------------------------

packets = st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=12)
Packets = list[tuple[bytes, bool]]


@FUZZ
@given(command=st.sampled_from(["getvar:all", "download:00000010", "upload", "flash:boot"]),
       received=packets)
def test_host_engine_random_device_bytes(command: str, received: Packets) -> None:
    host = HostEngine()
    host.send_command(command)
    try:
        for data, end in received:
            if host.state is HostState.IDLE:
                host.send_command(command)
            if host.state is HostState.SENDING:
                host.send_data(b"\0" * host.data_left)
            host.receive(data, end)
    except ZflashError as exc:
        assert exc.code in (Code.PROTOCOL, Code.INTERNAL)


@FUZZ
@given(received=packets)
def test_device_engine_random_host_bytes(received: Packets) -> None:
    device = DeviceEngine()
    try:
        for data, end in received:
            for event in device.receive(data, end):
                if isinstance(event, Command) and event.text.startswith("download:"):
                    device.start_download(7)
                elif isinstance(event, (Command, Malformed, DownloadDone)):
                    device.fail("no")
    except ZflashError as exc:
        assert exc.code == Code.PROTOCOL


@FUZZ
@given(data=st.lists(st.binary(max_size=64), max_size=10))
def test_tcp_framing_random_bytes(data: list[bytes]) -> None:
    framing = TcpFraming(max_message=1 << 20)
    try:
        for piece in data:
            framing.receive(piece)
    except ZflashError as exc:
        assert exc.code in (Code.PROTOCOL, Code.UNSUPPORTED_PROTOCOL)


@FUZZ
@given(text=st.text(max_size=40))
def test_value_parsers_random_text(text: str) -> None:
    parse_slot(text)
    parse_bool(text)
    parse_var_line(text)
    try:
        assert parse_size(text) >= 0
    except ZflashError as exc:
        assert exc.code == Code.PROTOCOL

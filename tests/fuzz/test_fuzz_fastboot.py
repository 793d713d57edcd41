"""Fuzz the fastboot host engine with hostile device responses, and the value parsers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import FUZZ, coded_or_ok
from zflash.errors import Code
from zflash.protocol.fastboot.host import HostEngine
from zflash.protocol.fastboot.values import parse_bool, parse_size, parse_slot, parse_var_line

PREFIXES = st.sampled_from([b"OKAY", b"FAIL", b"DATA", b"INFO", b"TEXT", b"okay", b"DAT", b""])
RESPONSES = st.tuples(PREFIXES, st.binary(max_size=300) | st.sampled_from(
    [b"00001000", b"0000100", b"ffffffff", b"0x100", b"-0000001", b"00000000"])).map(
        lambda t: t[0] + t[1])
COMMANDS = st.sampled_from(["getvar:all", "getvar:current-slot", "flash:boot_a", "upload",
                            "download", "reboot"])
DEVICE_CODES = {Code.PROTOCOL, Code.DEVICE_REFUSED}


@FUZZ
@given(COMMANDS, st.lists(st.tuples(RESPONSES, st.booleans()), max_size=8))
def test_host_engine_takes_any_responses(command: str, packets: list) -> None:
    engine = HostEngine()

    def run() -> None:
        if command == "download":
            engine.send_download(4096)
        else:
            engine.send_command(command)
        for packet, end in packets:
            engine.receive(packet, end)

    coded_or_ok(run, allowed=DEVICE_CODES)


@FUZZ
@given(st.text(max_size=80))
def test_value_parsers(text: str) -> None:
    coded_or_ok(lambda: parse_size(text), allowed={Code.PROTOCOL})
    coded_or_ok(lambda: (parse_slot(text), parse_bool(text), parse_var_line(text)),
                allowed={Code.PROTOCOL})

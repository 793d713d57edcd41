"""Hostile EDL devices through the real CLI (D150's rules, for Sahara + Firehose).

Each case runs ``python -m zflash info`` or ``flash`` as a subprocess (killed after
HARD_TIMEOUT) against ``hostile_device.HostileEdl`` on a pty: the real emulated EDL device,
honest until one point, then one lie or misbehaviour for good. Every case must end in a coded
error (``error 90xx`` on stderr, exit status ``code - 9000``, never 9001, no traceback) within
BOUND seconds, with bounded peak RSS and stdout. Set ZFLASH_HOSTILE_REPORT=FILE to append one
JSON line per case.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from conftest import SAMPLES, SIGNING_PUB
from hostile_device import (EDL_MODES, HARD_TIMEOUT, HostileEdl, Outcome, assert_coded_end,
                            run_cli)

GOOD = SAMPLES / "edl" / "zx-demo-edl-1.1.0.zpk"
PROGRAMMER = SAMPLES / "edl" / "prog_firehose_zx-demo-TEST-ONLY.elf"
PROTOCOL, LINK_LOST, TIMEOUT, UNSUPPORTED = 9026, 9024, 9025, 9027
READBACK, REFUSED, BAD_GPT = 9030, 9034, 9047


@dataclass(frozen=True)
class Case:
    mode: str
    command: str  # info | flash
    codes: tuple[int, ...] = ()  # acceptable codes; empty: any coded error but 9001
    may_succeed: bool = False  # a lie the host need not see through: only time/memory count
    xfail: str | None = None


CASES = [
    Case("hello-absurd-version", "info", (UNSUPPORTED,)),
    Case("hello-huge-max-cmd", "info", may_succeed=True),  # a limit zflash never nears
    Case("hello-huge-length", "info", (PROTOCOL,)),
    Case("read-past-end", "info", (PROTOCOL,)),
    Case("read-huge", "info", (PROTOCOL,)),
    Case("read64-huge", "info", (PROTOCOL,)),
    Case("exec-huge", "info", (PROTOCOL,)),
    Case("storageinfo-huge", "info", (PROTOCOL,)),
    Case("storageinfo-huge", "flash", (PROTOCOL,)),
    Case("garbage", "info", (PROTOCOL, TIMEOUT)),
    Case("log-flood", "info", (PROTOCOL, TIMEOUT)),
    Case("log-trickle", "info", (PROTOCOL, TIMEOUT)),
    Case("huge-xml", "info", (PROTOCOL,)),
    Case("configure-nak", "info", (REFUSED, PROTOCOL)),
    Case("configure-nak-shrinking", "info", (REFUSED, PROTOCOL)),
    Case("rawmode-no-final", "flash", (TIMEOUT, LINK_LOST)),
    Case("digest-wrong", "flash", (READBACK,)),
    Case("gpt-absurd-count", "flash", (BAD_GPT,)),
    Case("gpt-absurd-entry-size", "flash", (BAD_GPT,)),
    Case("gpt-absurd-count", "info", may_succeed=True),  # facts without partitions
]
assert {c.mode for c in CASES} == set(EDL_MODES)
assert len({(c.mode, c.command) for c in CASES}) == len(CASES)


def _args(case: Case, url: str) -> list[str]:
    if case.command == "info":
        return ["info", "-d", url, "--programmer", str(PROGRAMMER), "--json"]
    return ["flash", str(GOOD), "-d", url, "--trust", str(SIGNING_PUB), "--json"]


def _record(case: Case, outcome: Outcome) -> None:
    path = os.environ.get("ZFLASH_HOSTILE_REPORT")
    if path:
        with open(path, "a") as report:
            report.write(json.dumps({"case": f"edl-{case.mode}", "exit": outcome.returncode,
                                     "seconds": round(outcome.seconds, 2),
                                     "peak_rss_mib": round(outcome.peak_rss_mib, 1)}) + "\n")


def _params() -> list:
    return [pytest.param(c, id=f"edl-{c.command}-{c.mode}", marks=[
        pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_hostile_edl_device_ends_in_a_coded_error(case: Case, tmp_path) -> None:
    with HostileEdl(case.mode, tmp_path) as device:
        outcome = run_cli(_args(case, device.url), HARD_TIMEOUT)
    _record(case, outcome)
    assert_coded_end(outcome, case.codes, case.may_succeed)


def test_the_edl_fake_is_honest_until_told_otherwise(tmp_path) -> None:
    """Armed on nothing, the fake flashes like the emulator: a failing case is its mode."""
    with HostileEdl("honest", tmp_path) as device:
        outcome = run_cli(_args(Case("honest", "flash"), device.url), HARD_TIMEOUT)
        assert outcome.returncode == 0, outcome.stderr[-2000:]
        assert device.device.wait_sessions(1)
    assert {"configure", "program", "getsha256digest", "power"} <= set(device.seen)
    assert device.device.boots[-1] == {"booted_slot": "b", "fell_back": False}


# --- the bounds the cases above rely on (sans-IO) ------------------------------------------------

@pytest.mark.parametrize("entries, entry_size", [(0xFFFFFFFF, 128), (16, 1 << 16),
                                                 (4, 0xFFFFFFF8), (0, 128), (128, 100)])
def test_gpt_header_with_absurd_entry_array_is_refused_unread(entries, entry_size) -> None:
    """A header (valid CRC) claiming an absurd entry array is BAD_GPT before a single
    entry sector is read: a huge disk must not make the host read (or hold) a huge array."""
    import struct
    import zlib

    from zflash.disk.gpt import encode, new_gpt, read_gpt
    from zflash.errors import Code, ZflashError
    gpt = new_gpt(1 << 30, 4096, [("boot_a", 8), ("boot_b", 8)])
    head = bytearray(encode(gpt)[0][4096:8192])
    struct.pack_into("<II", head, 80, entries, entry_size)
    struct.pack_into("<I", head, 16, 0)
    struct.pack_into("<I", head, 16, zlib.crc32(bytes(head[:92])))
    asked: list[tuple[int, int]] = []

    def read(lba: int, count: int) -> bytes:
        asked.append((lba, count))
        return bytes(head) if lba == 1 else bytes(4096 * count)

    with pytest.raises(ZflashError) as err:
        read_gpt(read, 1 << 30, 4096)
    assert err.value.code == Code.BAD_GPT
    assert all(count == 1 for _, count in asked), asked  # headers only, never an array


def test_firehose_logs_per_command_are_bounded() -> None:
    from zflash.errors import Code, ZflashError
    from zflash.protocol.firehose import NEED_DATA, HostEngine
    from zflash.protocol.firehose.constants import MAX_LOGS
    engine = HostEngine()
    engine.command("nop")
    log = b'<?xml version="1.0" ?><data><log value="busy" /></data>'
    engine.receive_data(log * MAX_LOGS)
    while engine.next_event() is not NEED_DATA:
        pass
    engine.receive_data(log)
    with pytest.raises(ZflashError) as err:
        engine.next_event()
    assert err.value.code == Code.PROTOCOL and "<nop>" in err.value.detail


def test_program_final_timeout_scales_with_the_data_up_to_qdls() -> None:
    from zflash.targets.edl.firehose_io import program_final_timeout
    assert program_final_timeout(1 << 20) < 11
    assert 10 < program_final_timeout(512 << 20) < 120
    assert program_final_timeout(64 << 30) == 120

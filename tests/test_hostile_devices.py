"""Hostile devices through the real CLI: every case ends in a coded error, soon, in bounded
memory (issue 14). Each case runs ``python -m zflash info / flash / backup`` (or ``zflash
fastboot``) as a subprocess against a fake device from ``hostile_device``.

"Coded" means: an ``error 90xx`` line on stderr and exit status ``code - 9000``, never 9001
(internal error) and never a traceback. Set ZFLASH_HOSTILE_REPORT=FILE to append one JSON
line per case (exit status, seconds, peak RSS) for the issue's before/after table.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import GOOD
from hostile_device import (HARD_TIMEOUT, HostileFastboot, HostileZdl, Outcome,
                            assert_coded_end, emulated_facts, package_sha256, run_cli)
from zflash.protocol.zdl import BeginUpdate, CommitPartition, Identify, Read

TRUST = ["--trust", str(SIGNING_PUB)]

@dataclass(frozen=True)
class Case:
    name: str
    command: str  # info | flash | backup | fastboot ARGS...
    mode: str
    at: type | None = None  # ZDL: the request the device misbehaves on
    codes: tuple[int, ...] = ()  # acceptable codes; empty: any coded error but 9001
    xfail: str | None = None  # why it fails today (strict: a fix must remove the mark)
    may_succeed: bool = False  # a lie the host cannot see through: only time/memory count
    slow: bool = False  # ends in a coded error, but only after the session's ~15 s timeouts

    @property
    def fastboot(self) -> bool:
        return self.at is None


PROTOCOL, READBACK, TIMEOUT, LINK_LOST = 9026, 9030, 9025, 9024
LINK_FAILURE = (PROTOCOL, TIMEOUT, LINK_LOST)
FLOODS = ("garbage", "sync-flood", "keepalive-flood", "chunk-stall")


def _zdl(command: str, at: type, modes: dict[str, tuple[int, ...]],
         xfail: dict[str, str] | None = None) -> list[Case]:
    return [Case(f"zdl-{command}-{mode}", command, mode, at, codes,
                 (xfail or {}).get(mode)) for mode, codes in modes.items()]


#: a device that keeps talking (keep-alives, the link kept up) but never moves its answer on
#: is stuck (9025) at the answer deadline, not a lost link
STUCK_MODES = ("keepalive-flood", "chunk-stall")


def _floods(*modes: str) -> dict[str, tuple[int, ...]]:
    return {mode: (TIMEOUT,) if mode in STUCK_MODES else LINK_FAILURE for mode in modes}



CASES: list[Case] = [
    *_zdl("info", Identify, {
        **_floods(*FLOODS, "oversized-frame"),
        "error-9000": (PROTOCOL,), "error-9001": (PROTOCOL,), "error-9999": (PROTOCOL,),
        "absurd-size": (PROTOCOL,), "huge-string": (PROTOCOL,),
        "million-partitions": (PROTOCOL,)}),
    *_zdl("flash", BeginUpdate, {
        **_floods(*FLOODS), "error-9001": (PROTOCOL,), "error-9999": (PROTOCOL,),
        "running-slot": (PROTOCOL,)}),
    Case("zdl-flash-huge-have", "flash", "huge-have", BeginUpdate, may_succeed=True),
    *_zdl("flash", CommitPartition, {"commit-no-hash": (PROTOCOL, READBACK),
                                      "commit-wrong-hash": (READBACK,)},
          {}),
    *_zdl("backup", Read, {**_floods("garbage", "sync-flood", "keepalive-flood", "huge-data"),
                           "error-9000": (PROTOCOL,)}),
    # a READ whose chunked answer stalls: the RTO ends the READ incomplete, and a READ
    # that received nothing is a lost link (9024, ~2 s)
    Case("zdl-backup-chunk-stall", "backup", "chunk-stall", Read, (LINK_LOST,)),
    *[Case(f"fastboot-{cmd.split()[-2] if ' ' in cmd else cmd}-{mode}", cmd, mode)
      for cmd, mode in [
        ("info", "bad-handshake"), ("info", "oversized-response"), ("info", "huge-message"),
        ("info", "info-flood"), ("info", "text-flood"), ("info", "data-to-getvar"),
        ("info", "empty-messages"), ("info", "unknown-response"),
        ("fastboot --timeout 1 getvar product", "slow-info-flood"),
        ("fastboot --timeout 5 stage IMAGE", "data-huge-download"),
        ("fastboot --timeout 5 get-staged OUT", "data-huge-upload")]],
    # `info` lists partitions from `getvar all` when it can and goes on without the listing
    # when it cannot: refusing 10^6 lines (9026) inside it is a success of `info`
    Case("fastboot-info-million-vars", "info", "million-vars", may_succeed=True),
]

FASTBOOT_VARS = {"product": "zx-demo", "serialno": "HOSTILE", "slot-count": "2",
                 "current-slot": "a", "max-download-size": "0x1000000",
                 "version-baseband": "bb-1"}


def _args(case: Case, url: str, tmp_path) -> list[str]:
    if case.command == "info":
        return ["info", "-d", url, "--json"]
    if case.command == "flash":
        return ["flash", str(GOOD), "-d", url, *TRUST, "--json"]
    if case.command == "backup":
        return ["backup", "boot", "-d", url, "-o", str(tmp_path / "boot.img")]
    image = tmp_path / "image.bin"
    image.write_bytes(b"\x01" * 4096)
    words = [str(image) if w == "IMAGE" else str(tmp_path / "staged.bin") if w == "OUT"
             else w for w in case.command.split()]
    return ["fastboot", "-s", url, *words[1:]]


def _device(case: Case, tmp_path) -> HostileZdl | HostileFastboot:
    if case.fastboot:
        return HostileFastboot(case.mode, dict(FASTBOOT_VARS))
    return HostileZdl(case.mode, emulated_facts(tmp_path / "facts"), case.at,
                      package_sha256(GOOD))


def _record(case: Case, outcome: Outcome) -> None:
    path = os.environ.get("ZFLASH_HOSTILE_REPORT")
    if path:
        with open(path, "a") as report:
            report.write(json.dumps({"case": case.name, "exit": outcome.returncode,
                                     "seconds": round(outcome.seconds, 2),
                                     "peak_rss_mib": round(outcome.peak_rss_mib, 1)}) + "\n")


def _params() -> list:
    params = []
    for case in CASES:
        marks = []
        if case.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
        if case.slow:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_hostile_device_ends_in_a_coded_error(case: Case, tmp_path) -> None:
    with _device(case, tmp_path) as device:
        outcome = run_cli(_args(case, device.url, tmp_path), HARD_TIMEOUT)
    _record(case, outcome)
    assert_coded_end(outcome, case.codes, case.may_succeed)


def test_the_fixture_is_honest_until_told_otherwise(tmp_path) -> None:
    """The fake ZDL device answers a plain ``info`` like a real one when its misbehaviour
    is armed on a request ``info`` never sends: a failing case is the mode, not the fake."""
    with HostileZdl("garbage", emulated_facts(tmp_path / "facts"), Read) as device:
        outcome = run_cli(["info", "-d", device.url, "--json"], HARD_TIMEOUT)
    assert outcome.returncode == 0, outcome.stderr
    assert json.loads(outcome.stdout)["current_slot"] == "a"
    assert "Identify" in device.seen


# --- the fastboot engine's own bounds (sans-IO: what the CLI cases above rely on) ----------------

def _engine_after(command: str):
    from zflash.protocol.fastboot.host import HostEngine
    engine = HostEngine()
    engine.send_command(command)
    return engine


def test_fastboot_info_lines_per_command_are_bounded() -> None:
    from zflash.errors import Code, ZflashError
    from zflash.protocol.fastboot.host import MAX_INFO_LINES
    engine = _engine_after("getvar:all")
    for _ in range(MAX_INFO_LINES):
        engine.receive(b"INFOpartition-size:x:0x1000")
    with pytest.raises(ZflashError) as err:
        engine.receive(b"TEXTone more")
    assert err.value.code == Code.PROTOCOL and "getvar:all" in err.value.detail
    fresh = _engine_after("getvar:all")  # the count is per command
    fresh.receive(b"INFOx")
    assert fresh.receive(b"OKAY") and fresh.send_command("getvar:product")


def test_fastboot_empty_packets_in_a_row_are_bounded() -> None:
    from zflash.errors import Code, ZflashError
    from zflash.protocol.fastboot.host import MAX_EMPTY_PACKETS
    engine = _engine_after("getvar:product")
    for _ in range(MAX_EMPTY_PACKETS):
        assert engine.receive(b"") == []
    with pytest.raises(ZflashError) as err:
        engine.receive(b"")
    assert err.value.code == Code.PROTOCOL


def test_fastboot_max_packet_follows_the_upload() -> None:
    from zflash.protocol.fastboot.constants import MAX_DATA_SIZE, MAX_RESPONSE
    assert _engine_after("getvar:all").max_packet == MAX_RESPONSE
    engine = _engine_after("upload")
    assert engine.max_packet == MAX_DATA_SIZE  # its data may share a read with the DATA line
    engine.receive(b"DATA00100000")
    assert engine.max_packet == 0x100000
    engine.receive(b"\0" * 0x100000)
    assert engine.max_packet == MAX_RESPONSE

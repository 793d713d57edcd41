"""Slow versus dead on the ZDL link (issue 11, issue 14): keep-alives, progress deadlines, an
RTO that starts short and adapts, frames cut short by a damaged length, and --baud/--timeout.

The end-to-end tests run the real CLI against the emulator with its shaping and fault
options; the hostile-device tests drive a ``ZdlSession`` against a fake device on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import GOOD, NEWER, demo_profile
from zflash.emulator.runner import EmulatorRunner, LinkFaults
from zflash.errors import Code, ZflashError
from zflash.protocol.zdl import Data, DeviceEngine, Done, Identify, MsgType, Read
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, SWITCH_BAUDS
from zflash.protocol.zdl.frames import FrameDecoder, encode_frame, encode_frame_parts
from zflash.protocol.zdl.host import HostEngine
from zflash.targets.zdl.session import SessionOptions, ZdlSession
from zflash.transport.open import open_transport

TRUST = ["--trust", str(SIGNING_PUB)]
#: the dead-link bound of issue 11 (15 s after the last sign of life) plus the CLI's own
#: start-up and the flash up to the stall, generously: a bound that must hold, not a benchmark
DEAD_LINK_WALL = 40.0


def zflash(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "zflash", *args], capture_output=True,
                            text=True, timeout=timeout,
                            env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent"})
    return result, time.monotonic() - start


def events(result: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def emulator(tmp_path):
    runners: list[EmulatorRunner] = []

    def start(link: str, faults: LinkFaults) -> EmulatorRunner:
        runner = EmulatorRunner(tmp_path / f"dev{len(runners)}", demo_profile(), faults=faults)
        runner.start_tcp(0) if link == "tcp" else runner.start_pty()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop()


# ------------------------------------------------------------------ frames cut short
def test_decoder_gives_up_a_frame_whose_length_was_damaged_and_finds_the_next():
    good = encode_frame(MsgType.IDENTIFY, 0, b"{}")
    damaged = bytearray(encode_frame(MsgType.IDENTIFY, 0, b"{}"))
    damaged[8] = 0x40  # length 0x40 + ...: waits for bytes nobody sends
    decoder = FrameDecoder(max_data=1 << 20)
    assert decoder.feed(bytes(damaged) + good) == []
    assert decoder.partial
    assert decoder.abandon_partial()
    found = [item for item in decoder.feed(b"") if hasattr(item, "type")]
    assert [(f.type, f.seq) for f in found] == [(MsgType.IDENTIFY, 0)]
    assert decoder.abandoned == 1 and not decoder.partial


def test_device_naks_a_lone_request_whose_length_was_damaged_once_the_line_is_idle():
    device = DeviceEngine(max_data=65536)
    host = HostEngine(max_data=65536)
    for frame in host.hello():
        device.receive_data(frame)
    for frame in device.data_to_send():
        host.receive_data(frame)
    host.next_event()  # SessionStarted
    frame = bytearray(b"".join(host.send(Identify())))
    frame[9] = 0x01  # length + 65536: within the limit, so the device waits
    assert device.receive_data(bytes(frame)) == []
    assert device.data_to_send() == []          # nothing to say while the frame is open
    device.line_idle()
    sent = FrameDecoder().feed(b"".join(device.data_to_send()))
    assert [f.type for f in sent if hasattr(f, "type")] == [MsgType.NAK]


def test_keepalives_are_life_but_not_progress():
    host = HostEngine(max_data=65536)
    device = DeviceEngine(max_data=65536)
    for frame in host.hello():
        device.receive_data(frame)
    host.receive_data(b"".join(device.data_to_send()))
    host.next_event()
    device.receive_data(b"".join(host.send_block(0, 0, 0, b"x" * 100)))
    host.receive_data(b"".join(device.data_to_send()))
    host.next_event()
    moved = host.progress
    assert moved > 0
    for _ in range(5):
        host.receive_data(b"".join(device.keepalive()))
        host.next_event()
    assert host.progress == moved
    assert host.stats.frames_received >= 6


# ------------------------------------------------------------------ the emulator, end to end
@pytest.mark.parametrize("link,faults", [
    ("pty", LinkFaults(stall_after_bytes=150_000)),
    ("tcp", LinkFaults(stall_after_bytes=60_000, serial_baud=115200)),
], ids=["pty-fast", "tcp-115200"])
def test_a_dead_link_is_reported_within_the_bound(emulator, link, faults):
    runner = emulator(link, faults)
    result, wall = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    assert result.returncode == 24, result.stderr
    assert "no sign of life from the device for" in result.stderr
    assert wall < DEAD_LINK_WALL, (wall, result.stderr)


def test_a_slow_but_alive_link_never_retransmits(emulator):
    """40 kB/s behind TCP: one 256 KiB frame takes 6.5 s, a window of them minutes; the
    device's keep-alives show it is draining, so nothing is sent twice."""
    runner = emulator("tcp", LinkFaults(bytes_per_second=40_000))
    result, _ = zflash("flash", str(NEWER), "-d", runner.urls[0], *TRUST, "--json",
                       "--no-reboot")
    assert result.returncode == 0, result.stderr
    log = events(result)
    done = next(e for e in log if e["event"] == "done")
    assert done["sent_bytes"] > 100_000  # the data really went over the slow line
    assert done["retransmissions"] == 0
    assert not [e for e in log if e["event"] == "retry"]


def test_one_percent_corruption_over_tcp_does_not_end_at_the_last_commit(emulator):
    """Seed 3 damaged the length of a lone request; the device waited for bytes that never
    came and the host gave up (9024) at the last commit. Now the device gives the frame up
    when the line goes idle and NAKs it."""
    runner = emulator("tcp", LinkFaults(corrupt_fraction=0.01, seed=3))
    result, _ = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    assert result.returncode == 0, result.stderr
    assert runner.faulty is not None and runner.faulty.corrupted_chunks > 0


def test_five_percent_corruption_over_the_pty_completes(emulator):
    runner = emulator("pty", LinkFaults(corrupt_fraction=0.05, seed=11))
    result, _ = zflash("flash", str(NEWER), "-d", runner.urls[0], *TRUST, "--json",
                       "--max-data", "65536", "--window", "8", "--no-reboot")
    assert result.returncode == 0, result.stderr
    assert next(e for e in events(result) if e["event"] == "done")["retransmissions"] > 0


# ------------------------------------------------------------------ options
def test_an_unsupported_baud_is_refused_with_the_supported_ones(emulator):
    runner = emulator("pty", LinkFaults(serial_baud=115200))
    result, _ = zflash("info", "-d", runner.urls[0], "--baud", "12345")
    assert result.returncode == 2, result.stderr
    assert "error 9002" in result.stderr and "unsupported baud rate 12345" in result.stderr
    assert "921600" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ZflashError) as caught:
        SessionOptions(baud=12345)
    assert caught.value.code == Code.USAGE
    assert SessionOptions(baud=SWITCH_BAUDS[-1]).baud == SWITCH_BAUDS[-1]


def test_timeout_bounds_the_handshake():
    """A peer that accepts and never answers: --timeout 1 says so after its 1 s."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        result, _ = zflash("info", "-d", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert result.returncode == 25, result.stderr
    assert "did not answer the ZDL handshake within 1 s" in result.stderr


# ------------------------------------------------------------------ hostile devices
class FakeDevice:
    """A device on loopback that answers the handshake, then misbehaves with ``act``."""

    def __init__(self, act: Callable[[socket.socket, DeviceEngine, threading.Event], None]):
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(1)
        self.url = f"tcp://127.0.0.1:{self._server.getsockname()[1]}"
        self._act = act
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn, _ = self._server.accept()
        engine = DeviceEngine(max_data=4096)
        conn.settimeout(0.1)
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(1 << 16)
                except socket.timeout:
                    continue
                if not data:
                    return
                for event in engine.receive_data(data):
                    if isinstance(event, (Identify, Read)):
                        conn.sendall(b"".join(engine.data_to_send()))
                        self._act(conn, engine, self.stop)
                        return
                conn.sendall(b"".join(engine.data_to_send()))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
        self._server.close()


def keepalives_forever(conn: socket.socket, engine: DeviceEngine, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        conn.sendall(b"".join(engine.keepalive()))


def garbage_forever(conn: socket.socket, engine: DeviceEngine, stop: threading.Event) -> None:
    junk = b"\xa5\x5a\x21" + bytes(range(256)) * 4
    while not stop.wait(0.02):
        conn.sendall(junk)


def first_piece_only(conn: socket.socket, engine: DeviceEngine, stop: threading.Event) -> None:
    piece = CHUNK_HEADER.pack(10_000, 0) + b"{" * 4000
    conn.sendall(encode_frame_parts(MsgType.FACTS, 0, (piece,), FLAG_CHUNK))
    keepalives_forever(conn, engine, stop)


@pytest.mark.parametrize("act,code", [(keepalives_forever, Code.TIMEOUT),
                                      (garbage_forever, Code.LINK_LOST),
                                      (first_piece_only, Code.TIMEOUT)],
                         ids=["keepalives", "garbage", "chunk-never-ends"])
def test_a_hostile_device_cannot_hold_a_request_forever(act, code):
    device = FakeDevice(act)
    transport = open_transport(device.url, timeout=2)
    try:
        session = ZdlSession(transport, SessionOptions(max_data=4096, life_limit=2.0,
                                                       progress_limit=2.0))
        session.connect()
        with pytest.raises(ZflashError) as caught:
            session.identify()
        assert caught.value.code == code, caught.value
    finally:
        transport.close()
        device.close()


def trickled_read_answer(conn: socket.socket, engine: DeviceEngine,
                         stop: threading.Event) -> None:
    """One 4 KiB DATA frame at 1.3 kB/s (3 s, three times the host's life limit), then DONE."""
    data = bytes(range(256)) * 16
    frame = b"".join(engine.respond(Data(0, data)))
    for start in range(0, len(frame), 64):
        if stop.wait(0.02):
            return
        conn.sendall(frame[start:start + 64])
    conn.sendall(b"".join(engine.respond(Done(len(data), hashlib.sha256(data).hexdigest()))))
    stop.wait(5)


def test_a_frame_still_arriving_is_a_sign_of_life():
    """A DATA frame that takes longer than the life limit to arrive is a slow line, not a dead
    one: the bytes of a frame whose header checked out keep the link alive."""
    device = FakeDevice(trickled_read_answer)
    transport = open_transport(device.url, timeout=2)
    try:
        session = ZdlSession(transport, SessionOptions(max_data=4096, life_limit=1.0,
                                                       progress_limit=10.0))
        session.connect()
        got = bytearray()
        session.read("system", "a", 0, 4096, got.extend)
        assert bytes(got) == bytes(range(256)) * 16
        assert session.stats["retransmissions"] == 0
    finally:
        transport.close()
        device.close()


class _Line:
    """Just enough of a serial Transport for ZdlSession's clocks (no I/O happens)."""

    has_baudrate = True
    is_stream = True

    def __init__(self, baudrate: int) -> None:
        self.baudrate = baudrate


def test_the_progress_allowance_covers_one_frame_at_the_nominal_rate():
    """At 9600 baud a 256 KiB frame takes 273 s and only its complete arrival is progress:
    the allowance grows to three frames at the line's floor rate, never below the option."""
    from zflash.protocol.zdl.events import Session
    slow = ZdlSession(_Line(9600), SessionOptions(progress_limit=120.0))  # type: ignore[arg-type]
    slow.session = Session(1, 256 << 10, 32, ("none",))
    assert slow.progress_limit == pytest.approx(3 * ((256 << 10) + 16) / 960)
    fast = ZdlSession(_Line(4_000_000), SessionOptions(progress_limit=120.0))  # type: ignore[arg-type]
    fast.session = Session(1, 256 << 10, 32, ("none",))
    assert fast.progress_limit == 120.0

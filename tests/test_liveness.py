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
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from conftest import SIGNING_PUB
from emulator_helpers import GOOD, NEWER, demo_profile
from test_flash_e2e import emulator  # noqa: F401 (fixture: link, faults=... -> runner)
from zflash.emulator.device import EmulatedDevice
from zflash.emulator.runner import LinkFaults
from zflash.emulator.storage import Storage
from zflash.errors import Code, ZflashError
from zflash.facts import DeviceFacts
from zflash.protocol.zdl import (BlockHashes, CommitPartition, Data, DeviceEngine, Done, Erase,
                                 Facts, Hashes, Identify, MsgType, Read, Reboot, SetActive,
                                 WriteBlock)
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, SWITCH_BAUDS
from zflash.protocol.zdl.frames import FrameDecoder, encode_frame, encode_frame_parts
from zflash.protocol.zdl.host import HostEngine
from zflash.targets.zdl.session import MIN_WORK_RATE, SessionOptions, ZdlSession
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
    runner = emulator(link, faults=faults)
    result, wall = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    assert result.returncode == 24, result.stderr
    assert "no sign of life from the device for" in result.stderr
    assert wall < DEAD_LINK_WALL, (wall, result.stderr)


def test_a_slow_but_alive_link_never_retransmits(emulator):
    """40 kB/s behind TCP: one 256 KiB frame takes 6.5 s, a window of them minutes; the
    device's keep-alives show it is draining, so nothing is sent twice."""
    runner = emulator("tcp", faults=LinkFaults(bytes_per_second=40_000))
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
    runner = emulator("tcp", faults=LinkFaults(corrupt_fraction=0.01, seed=3))
    result, _ = zflash("flash", str(GOOD), "-d", runner.urls[0], *TRUST, "--json")
    assert result.returncode == 0, result.stderr
    assert runner.faulty is not None and runner.faulty.corrupted_chunks > 0


def test_five_percent_corruption_over_the_pty_completes(emulator):
    runner = emulator("pty", faults=LinkFaults(corrupt_fraction=0.05, seed=11))
    result, _ = zflash("flash", str(NEWER), "-d", runner.urls[0], *TRUST, "--json",
                       "--max-data", "65536", "--window", "8", "--no-reboot")
    assert result.returncode == 0, result.stderr
    assert next(e for e in events(result) if e["event"] == "done")["retransmissions"] > 0


# ------------------------------------------------------------------ options
def test_an_unsupported_baud_is_refused_with_the_supported_ones(emulator):
    runner = emulator("pty", faults=LinkFaults(serial_baud=115200))
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

    def __init__(self, act: Callable[[socket.socket, DeviceEngine, threading.Event], None],
                 on: tuple[type, ...] = (Identify, Read)):
        self._on = on
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
                    if isinstance(event, self._on):
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


# ------------------------------------------------------------------ the answer deadline
def busy_then(seconds: float | None, answer: Callable[[object], object] | None = None):
    """A device that works on the request for ``seconds`` (keep-alives every 0.1 s, as the
    emulator does every 0.5 s), then answers; ``None``: it works forever."""
    def act(conn: socket.socket, engine: DeviceEngine, stop: threading.Event) -> None:
        end = None if seconds is None else time.monotonic() + seconds
        while (end is None or time.monotonic() < end) and not stop.wait(0.1):
            conn.sendall(b"".join(engine.keepalive()))
        if end is not None and answer is not None:
            conn.sendall(b"".join(engine.respond(answer(engine))))
            stop.wait(5)
    return act


#: 40 MB of flash to hash: a work allowance of 2 s at the 20 MB/s floor
BIG_HASH = BlockHashes("system", "a", 0, 610, 65536)


def _hashes(engine: object) -> Hashes:
    return Hashes(tuple(bytes(32) for _ in range(BIG_HASH.count)))


def _facts(engine: object) -> Facts:
    return Facts(emulated_facts_for_test())


def emulated_facts_for_test() -> DeviceFacts:
    """The facts a fresh emulated demo device reports (real partition sizes)."""
    with tempfile.TemporaryDirectory() as root:
        return EmulatedDevice(Storage.create(Path(root) / "dev", demo_profile())).facts()


@pytest.mark.parametrize("request_,busy,answer,ok", [
    (Identify(), 1.0, _facts, False),      # no flash work: the 0.5 s base alone
    (BIG_HASH, 1.0, _hashes, True),        # 1 s of work within its 2.5 s allowance
    (BIG_HASH, None, None, False),         # keep-alives forever never extend it
], ids=["identify-busy-1s", "hash-40MB-busy-1s", "hash-40MB-busy-forever"])
def test_a_request_gets_its_work_allowance_and_keepalives_never_extend_it(request_, busy,
                                                                          answer, ok):
    device = FakeDevice(busy_then(busy, answer), on=(type(request_),))
    transport = open_transport(device.url, timeout=2)
    try:
        session = ZdlSession(transport, SessionOptions(max_data=4096, answer_limit=0.5))
        session.connect()
        if ok:
            got = session.request(request_, (Hashes, Facts))
            assert isinstance(got, Hashes) and len(got.digests) == BIG_HASH.count
            assert session.stats["retransmissions"] == 0
        else:
            with pytest.raises(ZflashError) as caught:
                session.request(request_, (Hashes, Facts))
            assert caught.value.code == Code.TIMEOUT, caught.value
            assert "waiting for its answer" in caught.value.detail
    finally:
        transport.close()
        device.close()


class _Wire(_Line):
    """A serial Transport stand-in that keeps what the session writes (no real I/O)."""

    def __init__(self, baudrate: int) -> None:
        super().__init__(baudrate)
        self.written = bytearray()

    def write(self, data) -> None:
        self.written += bytes(data)


def _session_with_device(**options) -> tuple[ZdlSession, DeviceEngine, _Wire]:
    wire = _Wire(115200)
    session = ZdlSession(wire, SessionOptions(max_data=4096, **options))  # type: ignore[arg-type]
    device = DeviceEngine(max_data=4096)
    session._send(session.engine.hello())
    device.receive_data(bytes(wire.written))
    wire.written.clear()
    session.engine.receive_data(b"".join(device.data_to_send()))
    list(session._drain_events())
    session.session = session.engine.session
    return session, device, wire


def test_a_long_operation_may_outlast_the_drain_bound_by_its_size():
    """COMMIT of an 8 GiB image (16 GiB to zero, hash, move at 20 MB/s): far past 120 s."""
    session, device, wire = _session_with_device(progress_limit=120.0)
    session.start_request(CommitPartition(0), work=16 << 30)
    device.receive_data(bytes(wire.written))
    session.engine.receive_data(b"".join(device.keepalive()))
    list(session._drain_events())
    assert session._stuck_limit == pytest.approx(5.0 + (16 << 30) / MIN_WORK_RATE)
    assert session._stuck_limit > 800


def test_the_answer_deadline_applies_only_once_nothing_is_on_its_way():
    """Drain bound while the request's frames are unacknowledged or a device frame is still
    arriving; the short answer deadline once the device acknowledged all of it."""
    session, device, wire = _session_with_device(progress_limit=120.0, connect_timeout=7.0)
    session.start_request(Identify())
    assert not session.engine.answer_due
    assert session._stuck_limit == session.progress_limit  # our request is still on its way
    device.receive_data(bytes(wire.written))
    session.engine.receive_data(b"".join(device.keepalive()))  # an ACK: the request arrived
    list(session._drain_events())
    assert session.engine.answer_due
    assert session._stuck_limit == pytest.approx(7.0)  # --timeout, no flash work for IDENTIFY
    answer = b"".join(device.respond(Facts(emulated_facts_for_test())))
    session.engine.receive_data(answer[:40])  # the header of FACTS checked, the rest to come
    list(session._drain_events())
    assert session.engine.receiving
    assert session._stuck_limit == session.progress_limit  # a slow line may take its time
    session.engine.receive_data(answer[40:])
    assert any(isinstance(e, Facts) for e in session._drain_events())
    assert not session.engine.answer_due


def test_the_answer_base_follows_timeout_with_a_floor():
    from zflash.targets.zdl.session import ANSWER_FLOOR
    assert ZdlSession(_Line(115200), SessionOptions()).answer_base == 5.0  # type: ignore[arg-type]
    assert ZdlSession(_Line(115200), SessionOptions(  # type: ignore[arg-type]
        connect_timeout=30.0)).answer_base == 30.0
    assert ZdlSession(_Line(115200), SessionOptions(  # type: ignore[arg-type]
        connect_timeout=0.5)).answer_base == ANSWER_FLOOR  # two lost answers still re-asked


def test_device_work_comes_from_the_request_or_the_facts():
    session = ZdlSession(_Line(115200), SessionOptions())  # type: ignore[arg-type]
    assert session.device_work(Identify()) == 0
    assert session.device_work(BIG_HASH) == 610 * 65536
    assert session.device_work(Read("boot", "a", 0, 12345)) == 12345
    assert session.device_work(Erase("boot", "a")) is None  # no facts yet: drain bound only
    session.facts = facts = emulated_facts_for_test()
    boot = facts.partition("boot")
    assert boot is not None and session.device_work(Erase("boot", "a")) == boot.size
    # one slot's images and the unslotted partitions, never userdata (no update reads it)
    update = sum(p.size for p in facts.partitions if p.name != "userdata")
    assert 0 < update < sum(p.size for p in facts.partitions)
    assert session.device_work(SetActive("b")) == update
    assert session.device_work(Reboot({})) == update


def acks_some_blocks_then_only_keepalives(conn: socket.socket, engine: DeviceEngine,
                                          stop: threading.Event) -> None:
    """Honest for the first 40 blocks (so the host measures the stream), then it keeps the
    link alive with keep-alives (repeated ACKs) and swallows every further block."""
    conn.settimeout(0.05)
    blocks = 1
    while not stop.is_set():
        try:
            data = conn.recv(1 << 16)
        except socket.timeout:
            data = b""
        if blocks < 40 and data:
            blocks += sum(isinstance(e, WriteBlock) for e in engine.receive_data(data))
            conn.sendall(b"".join(engine.data_to_send()))
        elif blocks >= 40:
            conn.sendall(b"".join(engine.keepalive()))


def test_a_block_stream_that_stops_moving_ends_at_the_stream_deadline():
    """Keep-alives during the block stream do not hold it: once its rate is known, the next
    ACK is due within the stream base plus three times what is in flight at that rate."""
    device = FakeDevice(acks_some_blocks_then_only_keepalives, on=(WriteBlock,))
    transport = open_transport(device.url, timeout=2)
    try:
        session = ZdlSession(transport, SessionOptions(max_data=4096, window=8,
                                                       stream_limit=1.0))
        session.connect()
        acked: list[int] = []
        blocks = ((0, n, 0, bytes([n % 256]) * 4096) for n in range(10_000))
        with pytest.raises(ZflashError) as caught:
            session.write_blocks(blocks, acked.append)
        assert caught.value.code == Code.TIMEOUT, caught.value
        assert "an ACK of the blocks in flight" in caught.value.detail
        assert 0 < sum(acked) < 10_000 * 4096  # it moved, then it stopped
    finally:
        transport.close()
        device.close()


def test_the_stream_deadline_grows_with_what_is_in_flight():
    session, device, wire = _session_with_device(progress_limit=120.0, stream_limit=2.0)
    assert session._stuck_limit == 120.0  # no stream rate known: the drain bound
    session._stream_rate = 1e6
    for n in range(4):
        session._send(session.engine.send_block(0, n, 0, b"x" * 4096))
    in_flight = session.engine.in_flight_bytes
    assert session._stuck_limit == pytest.approx(2.0 + 3 * in_flight / 1e6)
    session._stream_rate = 100.0  # a crawling stream: the drain bound caps it
    assert session._stuck_limit == 120.0

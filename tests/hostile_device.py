"""Hostile devices for tests: a scriptable fake ZDL device and a fake fastboot device on
loopback TCP, each speaking just enough of its protocol to reach the step it then abuses.

The ZDL fake drives the real sans-IO ``DeviceEngine`` (handshake, sequencing, ACKs), so it
keeps up as the protocol grows; a misbehaviour replaces the answer to one request (``at``)
with raw bytes: a flood, a stalled chunked answer, absurd facts, a lying UPDATE_READY. The
fastboot fake answers the FB01 handshake and then misbehaves on the first command it
chooses. Both run in a thread of the test process, so the zflash process under test is the
only one whose time and memory are measured (``run_cli``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from zflash.facts import DeviceFacts
from zflash.protocol.zdl import (BeginUpdate, BlockHashes, CommitPartition, DeviceEngine, Error,
                                 Facts, Hashes, Identify, KeepBlocks, Kept, Message, Ok, Read,
                                 Reboot, UpdateReady, WriteBlock)
from zflash.protocol.zdl.constants import CHUNK_HEADER, FLAG_CHUNK, SYNC, MsgType
from zflash.protocol.zdl.frames import encode_frame, encode_frame_parts

FLOOD_PIECE = 64 << 10
SESSION_ID = "0badc0de"  # the journal id every UPDATE_READY of the fake carries


# ------------------------------------------------------------------------------ running the CLI
@dataclass
class Outcome:
    """How one zflash process ended: exit status (None when killed), time, peak RSS."""

    returncode: int | None
    seconds: float
    peak_rss_mib: float
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


#: The bounds every hostile case is held to (D150): a hard kill, an end, memory, output.
HARD_TIMEOUT = 40.0
BOUND = 30.0
MAX_RSS_MIB = 300.0
MAX_OUTPUT = 1 << 20


def assert_coded_end(outcome: Outcome, codes: tuple[int, ...] = (),
                     may_succeed: bool = False) -> None:
    """The property every hostile case checks: the process ended by itself within BOUND, in
    bounded memory and output, without a traceback, with an ``error 90xx`` line (never 9001)
    whose code is its exit status (one of ``codes`` when given); or, where the lie cannot be
    seen through (``may_succeed``), exit 0."""
    assert not outcome.timed_out, f"killed after {HARD_TIMEOUT:g} s: {outcome.stderr[-600:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-2000:]
    assert outcome.seconds < BOUND, f"{outcome.seconds:.1f} s: {outcome.stderr[-600:]}"
    assert outcome.peak_rss_mib < MAX_RSS_MIB, f"{outcome.peak_rss_mib:.0f} MiB"
    assert len(outcome.stdout) < MAX_OUTPUT and len(outcome.stderr) < MAX_OUTPUT
    if may_succeed and outcome.returncode == 0:
        return
    found = re.findall(r"error (90\d\d)", outcome.stderr)
    assert found, (outcome.returncode, outcome.stderr[-1000:])
    code = int(found[0])
    assert code != 9001, outcome.stderr[-1000:]
    assert outcome.returncode == code - 9000, (outcome.returncode, code)
    if codes:
        assert code in codes, outcome.stderr[-1000:]


def _hwm_mib(pid: int) -> float | None:
    """VmHWM (peak RSS of the process's current image) from /proc, None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_cli(args: list[str], timeout: float, env: dict[str, str] | None = None) -> Outcome:
    """``python -m zflash ARGS`` with a hard timeout, its time and its peak RSS.

    The peak is the last VmHWM read from /proc while it ran (every 20 ms; a high-water
    mark, so only growth in its last 20 ms could be missed). ``wait4``'s ru_maxrss is the
    fallback: on Linux it also counts the test process, whose copy the child was before
    its exec (and RUSAGE_CHILDREN would be the largest child the test run ever had).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "zflash", *args], stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, "ZFLASH_TRUST_DIR": "/nonexistent",
                                     **(env or {})})
        killed = False
        peak: float | None = None
        while True:
            hwm = _hwm_mib(proc.pid)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = hwm if hwm is not None else peak
            if time.monotonic() - start > timeout and not killed:
                proc.kill()
                killed = True
            time.sleep(0.02)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        rss = peak if peak is not None else usage.ru_maxrss / 1024
        return Outcome(None if killed else proc.returncode, seconds, rss,
                       out.read().decode(errors="replace"), err.read().decode(errors="replace"))


# ------------------------------------------------------------------------------ TCP plumbing
class _Server:
    """One listening loopback socket; each accepted connection is served by ``serve``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self.stop_event = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(None)  # sends block until the host reads (or is gone): a flood
            try:                   # never ends by itself; reads go through select
                self.serve(conn)
            except OSError:
                pass  # the host hung up: that is how every hostile case should end
            finally:
                conn.close()

    def __enter__(self) -> "_Server":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _recv(self, conn: socket.socket, wait: float = 0.1) -> bytes | None:
        """Some bytes, b"" when none came within ``wait``, None when the host hung up."""
        readable, _, _ = select.select([conn], [], [], wait)
        if not readable:
            return b""
        return conn.recv(1 << 20) or None

    def flood(self, conn: socket.socket, piece: Callable[[], bytes], pause: float = 0.0) -> None:
        """Send ``piece()`` until the host hangs up or the test ends, reading (and dropping)
        what it says so that it never blocks on a full socket."""
        while not self.stop_event.is_set():
            conn.sendall(piece())
            while (data := self._recv(conn, 0)) is not None and data:
                pass
            if data is None:
                return
            if pause:
                time.sleep(pause)


# ------------------------------------------------------------------------------ ZDL
class _Raw(Message):
    """An answer of a given type whose payload is whatever the test says (absurd JSON)."""

    def __init__(self, msg_type: MsgType, payload: bytes) -> None:
        self.TYPE = msg_type  # type: ignore[misc]
        self._payload = payload

    def parts(self) -> tuple[bytes, ...]:
        return (self._payload,)


ZDL_MODES = ("garbage", "sync-flood", "keepalive-flood", "chunk-stall", "oversized-frame",
             "error-9000", "error-9001", "error-9999", "huge-have", "running-slot",
             "absurd-size", "huge-string", "million-partitions", "huge-data",
             "commit-no-hash", "commit-wrong-hash")


@dataclass
class HostileZdl(_Server):
    """A fake ZDL device: honest (real facts, a plain UPDATE_READY, every block ACKed) until
    the request of type ``at`` arrives, which it answers the way ``mode`` says.
    ``commit_sha256`` (partition index -> hex digest) lets an honest commit report the
    digest the package expects, as a device that verified its flash would."""

    mode: str
    facts: DeviceFacts
    at: type = Identify
    commit_sha256: dict[int, str] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ZDL_MODES:
            raise ValueError(self.mode)
        _Server.__init__(self)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        engine = DeviceEngine(max_data=256 << 10, window=32, codecs=("none", "zlib"))
        fired = False
        while not self.stop_event.is_set():
            data = self._recv(conn)
            if data is None:
                return
            for event in engine.receive_data(data):
                self.seen.append(type(event).__name__)
                if isinstance(event, WriteBlock):
                    continue  # the engine ACKs it
                if isinstance(event, self.at) and not fired:
                    fired = True
                    conn.sendall(b"".join(engine.data_to_send()))
                    lie = self.lie(event)
                    if lie is None:
                        self.misbehave(conn, engine, event)
                        return
                    conn.sendall(b"".join(engine.respond(lie)))
                    continue  # one lie, then honest again: the host must act on the lie
                answer = self.honest_answer(event)
                if answer is not None:
                    conn.sendall(b"".join(engine.respond(answer)))
            conn.sendall(b"".join(engine.data_to_send()))

    def honest_answer(self, event: object) -> Message | None:
        if isinstance(event, Identify):
            return Facts(self.facts)
        if isinstance(event, BeginUpdate):
            return UpdateReady(SESSION_ID, self.other_slot, {})
        if isinstance(event, BlockHashes):  # nothing matches: every block is to be sent
            return Hashes(tuple(b"\xee" * 32 for _ in range(event.count)))
        if isinstance(event, KeepBlocks):
            return Kept(event.partition, ())
        if isinstance(event, CommitPartition) and event.partition in self.commit_sha256:
            return Ok({"sha256": self.commit_sha256[event.partition]})
        if isinstance(event, Reboot):
            return Ok({"boot": {"booted_slot": self.other_slot}})
        if isinstance(event, Message):
            return Ok() if not isinstance(event, Read) else Error(9034, "no reads here")
        return None  # session events

    @property
    def other_slot(self) -> str:
        return "b" if self.facts.current_slot == "a" else "a"

    # -- misbehaviours ----------------------------------------------------------------------
    def lie(self, event: Message) -> Message | None:
        """The answer of a mode that answers (wrongly) and then goes on honestly, or None."""
        mode = self.mode
        if mode.startswith("error-"):
            return Error(int(mode[6:]), "hostile device")
        if mode == "huge-have":
            return UpdateReady(SESSION_ID, self.other_slot,
                               {i: ((0, 0xFFFFFFFF),) for i in range(len(self.facts.partitions))})
        if mode == "running-slot":
            return UpdateReady(SESSION_ID, self.facts.current_slot, {})
        if mode == "commit-no-hash":
            return Ok()
        if mode == "commit-wrong-hash":
            return Ok({"sha256": "00" * 32})
        if mode == "absurd-size":
            return _Raw(MsgType.FACTS, self.facts_json(flash_size=2**64 - 1, cache_free=2**70))
        return None

    def misbehave(self, conn: socket.socket, engine: DeviceEngine, event: Message) -> None:
        seq = _pending_seq(engine)
        mode = self.mode
        if mode == "garbage":
            rng = random.Random(14)
            self.flood(conn, lambda: rng.randbytes(FLOOD_PIECE))
        elif mode == "sync-flood":
            self.flood(conn, lambda: SYNC * (FLOOD_PIECE // 2))
        elif mode == "keepalive-flood":
            self.flood(conn, lambda: b"".join(engine.keepalive()) or encode_frame(MsgType.ACK, 0),
                       pause=0.1)
        elif mode == "chunk-stall":
            piece = CHUNK_HEADER.pack(4096, 0) + b"{" * 1024
            conn.sendall(encode_frame_parts(_answer_type(event), seq, (piece,), FLAG_CHUNK))
            self.stall(conn, engine)
        elif mode == "oversized-frame":
            # a header announcing 64 MiB, then the bytes, sent as long as the host reads
            header = struct.pack("<BBII", _answer_type(event), 0, seq, 64 << 20)
            conn.sendall(SYNC + header)
            self.flood(conn, lambda: b"\0" * FLOOD_PIECE)
        elif mode in ("huge-string", "million-partitions"):
            self.send_huge_facts(conn, engine, seq)
        elif mode == "huge-data":
            header = struct.pack("<BBII", MsgType.DATA, 0, seq, (256 << 10) + 8 + 16 + 1)
            conn.sendall(SYNC + header)
            self.flood(conn, lambda: b"\xff" * FLOOD_PIECE)

    def facts_json(self, **changes: Any) -> bytes:
        obj = json.loads(json.dumps(self.facts.to_dict()))
        obj.update(changes)
        return json.dumps(obj).encode()

    def send_huge_facts(self, conn: socket.socket, engine: DeviceEngine, seq: int) -> None:
        """An 80 MiB serial string, or 10^6 partitions, as a chunked FACTS: the total is
        announced in the first piece; later pieces go out only while the host still reads."""
        if self.mode == "huge-string":
            total = (80 << 20) - 4096
            prefix = b'{"serial": "'
        else:
            total = 1_000_000 * len(b'{"name": "p000000", "size": 4096, "slotted": true}, ')
            prefix = b'{"partitions": ['
        step = 256 << 10
        offset = 0
        while offset < total and not self.stop_event.is_set():
            size = min(step, total - offset)
            body = (prefix + b"x" * (size - len(prefix))) if offset == 0 else b"x" * size
            conn.sendall(encode_frame_parts(MsgType.FACTS, seq,
                                            (CHUNK_HEADER.pack(total, offset), body), FLAG_CHUNK))
            offset += size
        self.stall(conn, engine)

    def stall(self, conn: socket.socket, engine: DeviceEngine) -> None:
        """Keep the link up and the engine honest (ACKs, re-sent answers), answer nothing."""
        while not self.stop_event.is_set():
            data = self._recv(conn)
            if data is None:
                return
            engine.receive_data(data)
            conn.sendall(b"".join(engine.data_to_send()))


def _pending_seq(engine: DeviceEngine) -> int:
    """The sequence number the answer being forged must carry (the engine's pending one)."""
    pending = engine._pending  # noqa: SLF001 - a forged answer needs what respond() would use
    assert pending is not None
    return pending.seq


def _answer_type(event: Message) -> MsgType:
    return {Identify: MsgType.FACTS, BeginUpdate: MsgType.UPDATE_READY,
            Read: MsgType.DONE}.get(type(event), MsgType.OK)


# ------------------------------------------------------------------------------ fastboot
FASTBOOT_MODES = ("bad-handshake", "oversized-response", "huge-message", "info-flood",
                  "text-flood", "slow-info-flood", "data-huge-download", "data-huge-upload",
                  "data-to-getvar", "million-vars", "empty-messages", "unknown-response")


@dataclass
class HostileFastboot(_Server):
    """A fake fastboot-over-TCP device: FB01, then ``mode`` on the command it applies to
    (every command for most modes; ``getvar:all`` for ``million-vars``; ``download:`` and
    ``upload`` for the DATA modes). Other commands get a plain ``OKAY``."""

    mode: str
    vars: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in FASTBOOT_MODES:
            raise ValueError(self.mode)
        _Server.__init__(self)

    @property
    def url(self) -> str:
        return f"fastboot+tcp://127.0.0.1:{self.port}"

    def serve(self, conn: socket.socket) -> None:
        if self.mode == "bad-handshake":
            self.flood(conn, lambda: b"HTTP/1.1 200 OK\r\n" * 64)
            return
        conn.sendall(b"FB01")
        buf = b""
        while not self.stop_event.is_set():
            data = self._recv(conn)
            if data is None:
                return
            buf += data
            if buf.startswith(b"FB"):
                buf = buf[4:]
            while len(buf) >= 8:
                (length,) = struct.unpack(">Q", buf[:8])
                if len(buf) < 8 + length:
                    break
                command, buf = buf[8:8 + length].decode(errors="replace"), buf[8 + length:]
                self.commands.append(command)
                self.answer(conn, command)

    def send(self, conn: socket.socket, payload: bytes) -> None:
        conn.sendall(struct.pack(">Q", len(payload)) + payload)

    def answer(self, conn: socket.socket, command: str) -> None:
        mode = self.mode
        if mode == "oversized-response":
            self.send(conn, b"OKAY" + b"x" * (1 << 20))
        elif mode == "huge-message":
            conn.sendall(struct.pack(">Q", 1 << 62) + b"INFO")
            self.flood(conn, lambda: b"x" * FLOOD_PIECE)
        elif mode in ("info-flood", "text-flood"):
            line = (b"INFO" if mode == "info-flood" else b"TEXT") + b"still working"
            message = struct.pack(">Q", len(line)) + line
            self.flood(conn, lambda: message * 512)
        elif mode == "slow-info-flood":
            self.flood(conn, lambda: struct.pack(">Q", 8) + b"INFOwait", pause=0.5)
        elif mode == "data-huge-download" and command.startswith("download:"):
            self.send(conn, b"DATAffffffff")
        elif mode == "data-huge-upload" and command == "upload":
            self.send(conn, b"DATAffffffff")
            conn.sendall(struct.pack(">Q", 0xFFFFFFFF))
            self.flood(conn, lambda: b"\0" * FLOOD_PIECE)
        elif mode == "data-to-getvar":
            self.send(conn, b"DATA00001000")
        elif mode == "million-vars" and command == "getvar:all":
            lines = b"".join(_message(b"INFOpartition-size:p%07d:0x1000000" % i)
                             for i in range(1000))
            sent = 0
            while sent < 1000 and not self.stop_event.is_set():
                conn.sendall(lines)
                sent += 1
            self.send(conn, b"OKAY")
        elif mode == "empty-messages":
            self.flood(conn, lambda: struct.pack(">Q", 0) * 4096)
        elif mode == "unknown-response":
            self.send(conn, b"WHAT" + b"\x1b[2J" * 8)
        else:
            name = command.partition(":")[2]
            value = self.vars.get(name)
            self.send(conn, b"OKAY" + value.encode() if value is not None else b"FAILunknown")


def _message(payload: bytes) -> bytes:
    return struct.pack(">Q", len(payload)) + payload


def package_sha256(package: Path) -> dict[int, str]:
    """Partition index -> the SHA-256 its image must have once written (from the manifest)."""
    from zflash.package.reader import Package
    with Package(package) as pkg:
        return {i: p.sha256 for i, p in enumerate(pkg.manifest.partitions)}


def emulated_facts(root: Path) -> DeviceFacts:
    """The facts of a fresh emulated demo device (what a package for it expects)."""
    from emulator_helpers import demo_profile
    from zflash.emulator.device import EmulatedDevice
    from zflash.emulator.storage import Storage
    return EmulatedDevice(Storage.create(root, demo_profile())).facts()


# ------------------------------------------------------------------------------ EDL
#: what the fake EDL device does, and when (the host command it waits for; None: Sahara)
EDL_MODES = {
    "hello-absurd-version": "Sahara HELLO claiming version and compatible 0xFFFFFFFF",
    "hello-huge-max-cmd": "Sahara HELLO claiming a 4 GiB command packet limit",
    "hello-huge-length": "Sahara HELLO whose length word says 4 GiB",
    "read-past-end": "READ_DATA for bytes far past the end of the programmer",
    "read-huge": "READ_DATA for 4 GiB from offset 0",
    "read64-huge": "READ_DATA_64 for 2^63 bytes from offset 0",
    "exec-huge": "EXECUTE_RESP announcing 4 GiB of command-mode reply",
    "storageinfo-huge": "getstorageinfo claiming 2^62 blocks per LUN",
    "garbage": "random bytes, for good, instead of the answer to <configure>",
    "log-flood": "endless <log> lines instead of the answer to <configure>",
    "log-trickle": "a <log> line every 50 ms, for good, instead of the answer to <configure>",
    "huge-xml": "an XML response of many MiB, never closed, to <configure>",
    "configure-nak": "every <configure> NAKed with the payload the host asked for",
    "configure-nak-shrinking": "every <configure> NAKed, each time asking for a smaller payload",
    "rawmode-no-final": "the first <program>: rawmode ACK, data taken, never the final ACK",
    "digest-wrong": "every getsha256digest answered with a wrong digest",
    "gpt-absurd-count": "GPT headers (valid CRC) claiming 2^32-1 partition entries",
    "gpt-absurd-entry-size": "GPT headers (valid CRC) claiming 64 KiB entries",
}
_SAHARA_HELLO, _SAHARA_READ_DATA, _SAHARA_EXECUTE_RESP, _SAHARA_READ_DATA_64 = 1, 3, 0x0E, 0x12


class HostileEdl:
    """A fake Qualcomm EDL device on a pty (the QDLoader COM variant, which is how the EDL
    back-end opens a URL other than USB): the real emulated device (Sahara ``DeviceEngine``,
    the Firehose ``Programmer`` over real LUN files), honest until the mode's point, then
    one lie or misbehaviour for good (``EDL_MODES``)."""

    def __init__(self, mode: str, root: Path) -> None:
        from zflash.emulator.edl_server import EdlDevice, EdlOptions
        from zflash.emulator.link import PtyLink
        if mode not in EDL_MODES and mode != "honest":
            raise ValueError(mode)
        self.mode = mode
        self.device = EdlDevice(root / "edl", options=EdlOptions(com_variant=True))
        if mode.startswith("gpt-"):
            original = self.device.open_storage
            self.device.open_storage = lambda: _LyingGpt(original(), mode)  # type: ignore
        self.pty = PtyLink(str(root / "ttyEDL"), write_timeout=5.0)
        self.url = f"edl+serial://{root / 'ttyEDL'}"
        self.stop_event = threading.Event()
        self.seen: list[str] = []  # Firehose command tags the host sent
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "HostileEdl":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self._thread.join(timeout=10)
        self.pty.close()

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            conn = self.pty.accept(0.1)
            if conn is None:
                continue
            try:
                self.device.serve(_EdlLiar(conn, self))
            except Exception:  # noqa: BLE001 - the host hung up or refused: the point
                pass
            finally:
                conn.close()


class _EdlLiar:
    """The device side of one session: passes the honest device's bytes on, except where
    the mode says otherwise; from then on it may flood or go silent for good."""

    def __init__(self, inner: Any, fake: HostileEdl) -> None:
        self.inner, self.fake, self.mode = inner, fake, fake.mode
        self.last: str | None = None  # the host's latest Firehose command tag
        self.silent = False
        self.read_requests = 0
        self.naks = 0

    @property
    def alive(self) -> bool:
        return bool(self.inner.alive)

    def close(self) -> None:
        self.inner.close()

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = self.inner.read(max_bytes, timeout)
        for match in re.finditer(rb"<data>\s*<([A-Za-z0-9_]+)", data):
            self.last = match.group(1).decode()
            self.fake.seen.append(self.last)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if self.silent:
            return
        mode = self.mode
        if mode.startswith(("hello-", "read", "exec-")) and len(data) >= 8:
            data = self._sahara(data)
        elif mode == "storageinfo-huge" and b'"total_blocks":' in data:
            data = re.sub(rb'"total_blocks":\d+', b'"total_blocks":%d' % (1 << 62), data)
        elif self.last == "configure" and b"<response" in data and mode in (
                "garbage", "log-flood", "log-trickle", "huge-xml"):
            self._flood()
            return
        elif mode.startswith("configure-nak") and self.last == "configure" \
                and b"<response" in data:
            data = self._nak(data)
        elif mode == "rawmode-no-final" and self.last == "program" and \
                b'rawmode="false"' in data:
            self.silent = True  # take the data, never answer again
            return
        elif mode == "digest-wrong" and b"Digest " in data:
            data = re.sub(rb"Digest ([0-9a-f]{64})",
                          lambda m: b"Digest " + hashlib.sha256(m.group(1)).hexdigest().encode(),
                          data)
        self.inner.write(data)

    def _sahara(self, data: bytes) -> bytes:
        cmd, length = struct.unpack_from("<II", data)
        if cmd == _SAHARA_HELLO and self.mode.startswith("hello-"):
            packet = bytearray(data)
            if self.mode == "hello-absurd-version":
                struct.pack_into("<II", packet, 8, 0xFFFFFFFF, 0xFFFFFFFF)
            elif self.mode == "hello-huge-max-cmd":
                struct.pack_into("<I", packet, 16, 0xFFFFFFFF)
            else:
                struct.pack_into("<I", packet, 4, 0xFFFFFFFF)
            return bytes(packet)
        if cmd == _SAHARA_READ_DATA and self.mode.startswith("read"):
            self.read_requests += 1
            if self.read_requests == 2:  # after the honest header read: a lie
                image_id = struct.unpack_from("<I", data, 8)[0]
                if self.mode == "read64-huge":
                    return struct.pack("<IIQQQ", _SAHARA_READ_DATA_64, 0x20, image_id, 0,
                                       1 << 63)
                offset, size = (0x7FFFFF00, 0x100) if self.mode == "read-past-end" \
                    else (0, 0xFFFFFFFF)
                return struct.pack("<IIIII", cmd, length, image_id, offset, size)
        if cmd == _SAHARA_EXECUTE_RESP and self.mode == "exec-huge":
            packet = bytearray(data)
            struct.pack_into("<I", packet, 12, 0xFFFFFFFF)  # after the client command id
            return bytes(packet)
        return data

    def _nak(self, data: bytes) -> bytes:
        self.naks += 1
        data = data.replace(b'value="ACK"', b'value="NAK"')
        if self.mode == "configure-nak-shrinking":
            payload = max(4096, (1 << 20) >> self.naks)
            data = re.sub(rb'MaxPayloadSizeToTargetInBytes="\d+"',
                          f'MaxPayloadSizeToTargetInBytes="{payload}"'.encode(), data)
        return data

    def _flood(self) -> None:
        """Until the host hangs up (or stops reading: the pty's write timeout)."""
        rng = random.Random(13)
        if self.mode == "huge-xml":
            self.inner.write(b'<?xml version="1.0" encoding="UTF-8" ?><data><response '
                             b'value="ACK" MemoryName="ufs" Comment="')
        while not self.fake.stop_event.is_set():
            if self.mode == "garbage":
                piece = rng.randbytes(FLOOD_PIECE)
            elif self.mode == "huge-xml":
                piece = b"A" * FLOOD_PIECE
            else:
                piece = b'<?xml version="1.0" encoding="UTF-8" ?><data><log value="' \
                        b'INFO: still working" /></data>'
                if self.mode == "log-trickle":
                    time.sleep(0.05)
                else:
                    piece *= 256
            self.inner.write(piece)


class _LyingGpt:
    """LUN files whose GPT header sectors (LBA 1 and the last LBA of each LUN) read as a
    header with valid CRC but absurd entry counts or sizes."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner, self.mode = inner, mode

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, lun: int, start: int, count: int) -> bytes:
        data = bytearray(self.inner.read(lun, start, count))
        size = self.inner.sector_size
        last = self.inner.num_sectors(lun) - 1
        for lba in (1, last):
            if start <= lba < start + count:
                at = (lba - start) * size
                data[at:at + size] = self._header(bytes(data[at:at + size]))
        return bytes(data)

    def _header(self, sector: bytes) -> bytes:
        import zlib
        header = bytearray(sector)
        if header[:8] != b"EFI PART":
            return sector
        if self.mode == "gpt-absurd-count":
            struct.pack_into("<I", header, 80, 0xFFFFFFFF)
        else:
            struct.pack_into("<II", header, 80, 16, 1 << 16)
        header[16:20] = bytes(4)
        struct.pack_into("<I", header, 16, zlib.crc32(bytes(header[:92])))
        return bytes(header)

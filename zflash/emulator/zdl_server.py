"""Serve an EmulatedDevice over ZDL on any device-side link (pty, TCP, emulated USB).

The loop is the device's firmware main loop: read what arrived, feed the sans-IO
``DeviceEngine``, turn each request into a call on ``EmulatedDevice`` and each answer or
refusal into a response. The engine handles framing, sequence numbers, ACK/NAK and cached
answers; the device handles the rules. A host that goes away ends one session; the update
in progress stays journaled for the next one.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from zflash.emulator.device import DeviceRefusal, EmulatedDevice, PowerLoss
from zflash.emulator.link import DeviceConnection, HostDisconnected
from zflash.errors import Code, ZflashError
from zflash.package.format import KIND_RAW, KIND_ZLIB, KIND_ZSTD
from zflash.protocol.zdl.constants import FEATURE_BEGIN_BY_DIGEST
from zflash.protocol.zdl import (CODEC_NONE, CODEC_ZLIB, CODEC_ZSTD, BeginUpdate, BlockHashes, CommitPartition, Data,
                                 DeviceEngine, Done, Erase, Error, Facts, Hashes, Identify,
                                 KeepBlocks, Kept, Ok, Read, Reboot, SetActive, SwitchBaud,
                                 UpdateReady, WriteBlock)

READ_SIZE = 1 << 20
POLL = 0.2
PING_WAIT = 1.0
#: seconds between keep-alives while busy or receiving (zdl.md 5.2: at least every 0.5 s)
KEEPALIVE = 0.4
#: a candidate frame with no new byte for this long is given up and rescanned (zdl.md 2.3)
IDLE_IN_FRAME = 0.5
#: wire codec -> the package block kind the device decodes it as
_KIND_OF_CODEC = {CODEC_NONE: KIND_RAW, CODEC_ZLIB: KIND_ZLIB, CODEC_ZSTD: KIND_ZSTD}


@dataclass
class ServerOptions:
    max_data: int = 1 << 20
    window: int = 64
    bauds: tuple[int, ...] = ()
    #: block codecs the device offers; None = every one this process can decode
    codecs: tuple[str, ...] | None = None
    #: offer BEGIN_UPDATE by digest in FACTS (False: a device that predates it)
    begin_by_digest: bool = True


class ZdlServer:
    """One device, many host sessions one after another."""

    def __init__(self, device: EmulatedDevice, options: ServerOptions | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.options = options or ServerOptions()
        self._log = log or (lambda message: None)

    def serve(self, conn: DeviceConnection, stop: threading.Event | None = None,
              set_baud: Callable[[int], None] | None = None) -> None:
        """Run one host session until the host leaves, the link drops or ``stop`` is set.

        ``set_baud(rate)`` changes the line rate after an agreed switch; ``set_baud(0)`` goes
        back to the rate the session started at.
        """
        stop = stop or threading.Event()
        gate = _SessionGate(self.device, conn)
        engine = DeviceEngine(max_data=self.options.max_data, window=self.options.window,
                              bauds=self.options.bauds, codecs=self.options.codecs,
                              admit=gate.admit)
        beat = _Heartbeat(conn, engine)
        ping_deadline: float | None = None
        try:
            while not stop.is_set():
                try:
                    data = conn.read(READ_SIZE, timeout=POLL)
                except HostDisconnected:
                    break
                except ZflashError as exc:
                    if exc.code != Code.TIMEOUT:
                        raise
                    if ping_deadline is not None and time.monotonic() > ping_deadline:
                        ping_deadline = None
                        if engine.ping_timeout() and set_baud:
                            set_baud(0)
                    events = engine.line_idle() if beat.quiet_for() >= IDLE_IN_FRAME else []
                    for event in events:
                        beat.write(self._handle(engine, event, beat))
                    beat.write(engine.data_to_send())
                    continue
                beat.received()
                for event in engine.receive_data(data):
                    if isinstance(event, SwitchBaud):
                        beat.write(engine.data_to_send())
                        if set_baud:
                            set_baud(event.baud)
                        ping_deadline = time.monotonic() + PING_WAIT
                    else:
                        beat.write(self._handle(engine, event, beat))
                beat.write(engine.data_to_send())
                beat.tick()
        except HostDisconnected:
            pass
        except PowerLoss:
            self._log("power lost")
            conn.close()
            raise
        finally:
            gate.leave()

    def _handle(self, engine: DeviceEngine, request: object, beat: "_Heartbeat") -> list[bytes]:
        """One request -> the frames that answer it (or refuse it). While the device works
        (hashing, KEEP, commit) its ``on_alive`` sends keep-alives through ``beat``."""
        self.device.on_alive = beat.tick
        try:
            if isinstance(request, WriteBlock):
                try:
                    self.device.write_block(request.partition, request.block, request.data,
                                            kind=_KIND_OF_CODEC[request.codec])
                except ZflashError as exc:
                    return engine.reject_block(request, exc.code, exc.detail[:1000])
                return []
            return self._answer(engine, request)
        except PowerLoss:
            raise
        except ZflashError as exc:
            return engine.respond(Error(exc.code, (exc.detail or exc.info.meaning)[:1024]))
        finally:
            self.device.on_alive = _nobody

    def _answer(self, engine: DeviceEngine, request: object) -> list[bytes]:
        device = self.device
        if isinstance(request, Identify):
            facts = device.facts()
            if self.options.begin_by_digest:
                facts = replace(facts, features=(*facts.features, FEATURE_BEGIN_BY_DIGEST))
            return engine.respond(Facts(facts))
        if isinstance(request, BeginUpdate):
            by_digest = request.digest if self.options.begin_by_digest else None
            try:
                if by_digest is None:
                    ready = device.begin_update(bytes(request.head))
                elif (held := device.begin_update_by_digest(by_digest.hex())) is None:
                    # no head with that digest here: nothing opened, the host sends it whole
                    return engine.respond(UpdateReady(by_digest.hex(), None, need_head=True))
                else:
                    ready = held
            except DeviceRefusal as refusal:
                self._log(f"refused update: {refusal.detail}")
                return engine.respond(Error(refusal.code, refusal.detail[:1024]))
            have = {p["index"]: tuple((f, c) for f, c in p["have"]) for p in ready["partitions"]}
            return engine.respond(UpdateReady(ready["session"], ready["slot"], have))
        if isinstance(request, KeepBlocks):
            kept = device.keep_blocks(request.partition, [list(r) for r in request.ranges])
            return engine.respond(Kept(request.partition, tuple((f, c) for f, c in kept)))
        if isinstance(request, CommitPartition):
            digest = device.commit_partition(request.partition)
            return engine.respond(Ok({"sha256": digest}))
        if isinstance(request, SetActive):
            device.set_active(request.slot)
            return engine.respond(Ok({"slot": request.slot}))
        if isinstance(request, Reboot):
            result = device.reboot(bool(request.options.get("force_boot_failure", False)))
            return engine.respond(Ok({"boot": _boot_summary(result)}))
        if isinstance(request, BlockHashes):
            digests = device.block_hashes(request.partition, request.slot, request.first,
                                          request.count, request.block_size)
            return engine.respond(Hashes(tuple(digests)))
        if isinstance(request, Read):
            return self._read(engine, request)
        if isinstance(request, Erase):
            device.erase(request.partition, request.slot, allow_userdata=True)
            return engine.respond(Ok({}))
        return engine.respond(Error(Code.PROTOCOL, f"unsupported request {type(request).__name__}"))

    def _read(self, engine: DeviceEngine, request: Read) -> list[bytes]:
        frames: list[bytes] = []
        digest = hashlib.sha256()
        offset = request.offset
        piece = engine_max_data(engine)
        for chunk in self.device.read(request.partition, request.slot, request.offset,
                                      request.length):
            for start in range(0, len(chunk), piece):
                part = chunk[start:start + piece]
                frames += engine.respond(Data(offset, part))
                digest.update(part)
                offset += len(part)
        frames += engine.respond(Done(request.length, digest.hexdigest()))
        return frames


def _nobody() -> None:
    """``on_alive`` between requests: no host to tell."""


class _Heartbeat:
    """The device's sign of life on one connection (zdl.md 5.2): a keep-alive ACK at least
    every ``KEEPALIVE`` s while the device works on a request or is still receiving a frame,
    so a host on a slow line can tell a device that is busy (or draining its window) from a
    dead one, and never retransmits what is still on its way."""

    def __init__(self, conn: DeviceConnection, engine: DeviceEngine) -> None:
        self._conn, self._engine = conn, engine
        self._last_rx = self._last_tx = time.monotonic()

    def received(self) -> None:
        self._last_rx = time.monotonic()

    def quiet_for(self) -> float:
        return time.monotonic() - self._last_rx

    def write(self, frames: list[bytes]) -> None:
        if frames:
            self._conn.write(b"".join(frames))
            self._last_tx = time.monotonic()

    def tick(self) -> None:
        """Send a keep-alive if nothing went to the host for ``KEEPALIVE`` s."""
        if self._engine.session is not None and \
                time.monotonic() - self._last_tx >= KEEPALIVE:
            self.write(self._engine.keepalive())


class _SessionGate:
    """The device lock, taken when a host's HELLO is accepted and held until it leaves.

    A program that merely holds the port open (a terminal, an idle ser2net) is no session
    and locks nobody out; a HELLO while another host is in a session (ZDL on another link,
    or fastboot) is refused at once with ERROR 9034 "device busy", not left waiting.
    """

    def __init__(self, device: EmulatedDevice, conn: DeviceConnection) -> None:
        self._device = device
        self._conn = conn
        self._where = getattr(conn, "description", "a link")
        self._held = False

    def admit(self) -> tuple[int, str] | None:
        if self._held or self._device.try_enter(f"ZDL over {self._where}",
                                                 alive=lambda: self._conn.alive):
            self._held = True
            return None
        return (Code.DEVICE_REFUSED, self._device.busy_reason())

    def leave(self) -> None:
        if self._held:
            self._held = False
            try:
                self._device.host_left()
            finally:
                self._device.leave()


def engine_max_data(engine: DeviceEngine) -> int:
    session = getattr(engine, "session", None)
    return session.max_data if session is not None else 4096


def _boot_summary(result: dict[str, object]) -> dict[str, object]:
    """The OK info of a REBOOT: booted slot, fallback, attempts (flattened for JSON)."""
    attempts = result.get("attempts") or []
    return {"booted_slot": result.get("booted_slot"), "fell_back": result.get("fell_back"),
            "attempts": len(attempts),  # type: ignore[arg-type]
            "failed_attempts": sum(1 for a in attempts if not a["ok"]),  # type: ignore[union-attr]
            "rollback_indexes": result.get("rollback_indexes")}

"""A Firehose programmer: the device-side state machine that runs commands against Storage.

The emulator plugs in file-backed storage and moves the bytes; tests use MemoryStorage.
Pattern: ``receive_data(bytes)``, then send every packet ``data_to_send()`` yields (reads are
produced chunk by chunk, so memory does not grow with the read size). Commands are executed
inside ``data_to_send``, one after another, so a read's data always reflects the storage at
its turn. ``power_request`` and ``bootable_lun`` tell the emulator what the host asked for.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from zflash.errors import ZflashError
from zflash.protocol.firehose.constants import DEFAULT_PAYLOAD, DEVICE_MAX_XML, MAX_CRC_BYTES
from zflash.protocol.firehose.device import DeviceEngine
from zflash.protocol.firehose.events import NEED_DATA, Command, Malformed, ProgramData, ProgramDone
from zflash.protocol.firehose.expressions import patch_value, sector_value
from zflash.protocol.firehose.storage import Storage
from zflash.protocol.firehose.xmlwire import Buffer

SUPPORTED = ("configure", "program", "read", "erase", "patch", "getsha256digest",
             "getstorageinfo", "nop", "power", "setbootablestoragedrive")
_NEEDS_STORAGE = frozenset(SUPPORTED) - {"configure", "nop", "power"}


class _Nak(Exception):
    """A command refused: ``reason`` goes out as a log before (or after) the NAK."""

    def __init__(self, reason: str, **attrs: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attrs = attrs


@dataclass(frozen=True)
class WriteStep:
    """A point where storage is about to change or just changed, for ``on_step``.

    ``kind``: "program" (``data`` is about to be written at ``first``), "programmed" (a
    whole ``<program>`` of ``sectors`` from ``first`` is on storage, its ACK not yet sent),
    "patch" (``data`` is the patched sector(s) about to be written), "power" (``value`` is
    the requested power action, not yet acknowledged). The emulator cuts its power here.
    """

    kind: str
    lun: int = 0
    first: int = 0
    sectors: int = 0
    data: Buffer = b""
    value: str = ""


@dataclass
class _ReadJob:
    lun: int
    start: int
    count: int


class Programmer:
    """The emulated programmer. Options model real programmers' differences:

    ``memory_name`` the storage it drives (configure with another is NAKed), ``max_payload``
    the largest program chunk it takes (a larger request is NAKed with this value),
    ``logs_after_response`` MSM8916's habit of sending logs after the response.
    """

    def __init__(self, storage: Storage, *, memory_name: str = "ufs",
                 max_payload: int = DEFAULT_PAYLOAD, max_payload_from_target: int | None = None,
                 max_xml: int = DEVICE_MAX_XML, logs_after_response: bool = False,
                 serial: int = 0x5A1EE025) -> None:
        self.storage = storage
        self.memory_name = memory_name
        self.max_payload = max_payload
        self.max_from_target = max_payload_from_target or max_payload
        self.logs_after_response = logs_after_response
        self.serial = serial
        self.engine = DeviceEngine(max_xml)
        self.configured = False
        self.zlp_aware: bool | None = None
        self.payload = max_payload
        self.bootable_lun: int | None = None
        self.power_request: str | None = None
        self.commands: list[str] = []  # tags in arrival order, for tests and the emulator
        #: called at every WriteStep; may raise (the emulator's power loss) to stop here
        self.on_step: Callable[[WriteStep], None] = lambda step: None
        self._out: deque[bytes | _ReadJob] = deque()
        self._program: tuple[int, int, int] | None = None  # lun, next sector, sectors left
        self._program_first = 0
        self._partial = bytearray()

    # -- I/O-free driver API ----------------------------------------------------------------
    def startup(self) -> list[bytes]:
        """The start-up logs a programmer sends once it runs (build date, serial, functions)."""
        lines = ["Binary build date: zflash emulated programmer",
                 f"Chip serial num: {self.serial} (0x{self.serial:x})",
                 f"Supported Functions ({len(SUPPORTED)}):", *SUPPORTED,
                 f"End of supported functions {len(SUPPORTED)}"]
        return [self.engine.log(line) for line in lines]

    def receive_data(self, data: Buffer) -> None:
        self.engine.receive_data(data)

    def data_to_send(self) -> Iterator[bytes]:
        """Run what arrived and yield the packets to send, each one transfer."""
        while True:
            if not self._out:
                event = self.engine.next_event()
                if event is NEED_DATA:
                    return
                self._on_event(event)
                continue
            item = self._out.popleft()
            if isinstance(item, _ReadJob):
                yield from self._read_chunks(item)
            else:
                yield item

    # -- events -----------------------------------------------------------------------------
    def _on_event(self, event: object) -> None:
        if isinstance(event, Malformed):
            self._answer([f"XML parse failure: {event.reason}"], self.engine.nak())
        elif isinstance(event, ProgramData):
            self._program_bytes(event.data)
        elif isinstance(event, ProgramDone):
            self._program_done()
        elif isinstance(event, Command):
            self.commands.append(event.tag)
            try:
                self._command(event)
            except _Nak as nak:
                self._answer([nak.reason], self.engine.nak(**nak.attrs))

    def _answer(self, logs: list[str], response: bytes) -> None:
        packets = [self.engine.log(text) for text in logs]
        if self.logs_after_response:
            self._out.append(response)
            self._out.extend(packets)
        else:
            self._out.extend(packets)
            self._out.append(response)

    def _command(self, cmd: Command) -> None:
        handler = getattr(self, f"_do_{cmd.tag}", None)
        if handler is None:
            raise _Nak(f"Unknown or unsupported command <{cmd.tag}>")
        if cmd.tag in _NEEDS_STORAGE and not self.configured:
            raise _Nak("Storage is not initialized: send <configure> first")
        handler(cmd)

    # -- attribute helpers ------------------------------------------------------------------
    def _int(self, cmd: Command, name: str, default: int | None = None) -> int:
        text = cmd.get(name)
        if text is None:
            if default is None:
                raise _Nak(f"Attribute '{name}' is missing")
            return default
        try:
            return sector_value(text, 0)
        except ZflashError:
            raise _Nak(f"Attribute '{name}'={text[:40]!r} is not a number") from None

    def _lun(self, cmd: Command) -> int:
        lun = self._int(cmd, "physical_partition_number", 0)
        if lun >= self.storage.lun_count:
            raise _Nak(f"physical_partition_number {lun} does not exist "
                       f"({self.storage.lun_count} LUNs)")
        return lun

    def _sector_size(self, cmd: Command) -> None:
        size = self._int(cmd, "SECTOR_SIZE_IN_BYTES", self.storage.sector_size)
        if size != self.storage.sector_size:
            raise _Nak(f"Attribute 'SECTOR_SIZE_IN_BYTES'={size} must be equal to disk sector "
                       f"size {self.storage.sector_size}")

    def _start(self, cmd: Command, lun: int, name: str = "start_sector") -> int:
        text = cmd.get(name)
        if text is None:
            raise _Nak(f"Attribute '{name}' is missing")
        try:
            return sector_value(text, self.storage.num_sectors(lun))
        except ZflashError:
            raise _Nak(f"Attribute '{name}'={text[:40]!r} is not understood") from None

    def _range(self, cmd: Command) -> tuple[int, int, int]:
        self._sector_size(cmd)
        lun = self._lun(cmd)
        start = self._start(cmd, lun)
        count = self._int(cmd, "num_partition_sectors")
        total = self.storage.num_sectors(lun)
        if count <= 0 or start + count > total:
            raise _Nak(f"Sectors {start}..{start + count} are outside LUN {lun} "
                       f"({total} sectors)")
        return lun, start, count

    # -- commands ---------------------------------------------------------------------------
    def _do_configure(self, cmd: Command) -> None:
        memory = cmd.get("MemoryName") or self.memory_name
        if memory.lower() != self.memory_name.lower():
            raise _Nak(f"Not support configure MemoryName {memory}",
                       **self._configure_attrs(self.max_payload))
        asked = self._int(cmd, "MaxPayloadSizeToTargetInBytes", self.max_payload)
        zlp = cmd.get("ZlpAwareHost")  # case-insensitive: ZLPAwareHost matches too
        self.zlp_aware = None if zlp is None else zlp.strip() not in ("0", "false")
        if asked > self.max_payload or asked <= 0:
            raise _Nak(f"MaxPayloadSizeToTargetInBytes {asked} is more than "
                       f"{self.max_payload}", **self._configure_attrs(self.max_payload))
        self.payload = asked
        self.configured = True
        self._answer([], self.engine.ack(**self._configure_attrs(asked)))

    def _configure_attrs(self, payload: int) -> dict[str, object]:
        return {"MemoryName": self.memory_name, "MinVersionSupported": 1, "Version": 1,
                "MaxPayloadSizeFromTargetInBytes": self.max_from_target,
                "MaxPayloadSizeToTargetInBytes": payload,
                "MaxPayloadSizeToTargetInBytesSupported": self.max_payload,
                "MaxXMLSizeInBytes": self.engine.max_xml, "TargetName": "zflash-emulated"}

    def _do_program(self, cmd: Command) -> None:
        lun, start, count = self._range(cmd)
        self._program = (lun, start, count)
        self._program_first = start
        self._partial = bytearray()
        self._out.append(self.engine.start_program(count * self.storage.sector_size))

    def _program_bytes(self, data: bytes) -> None:
        assert self._program is not None
        lun, start, left = self._program
        size = self.storage.sector_size
        self._partial += data
        whole = len(self._partial) // size
        if whole:
            with memoryview(self._partial) as view, view[:whole * size] as chunk:
                self.on_step(WriteStep("program", lun, start, whole, chunk))
                self.storage.write(lun, start, chunk)
            del self._partial[:whole * size]
            self._program = (lun, start + whole, left - whole)

    def _program_done(self) -> None:
        if self._program is not None:
            lun, end, _ = self._program
            first = self._program_first
            self.on_step(WriteStep("programmed", lun, first, end - first))
        self._program = None
        self._answer([], self.engine.ack(rawmode="false"))

    def _do_read(self, cmd: Command) -> None:
        lun, start, count = self._range(cmd)
        self._out.append(self.engine.start_read(count * self.storage.sector_size))
        self._out.append(_ReadJob(lun, start, count))

    def _read_chunks(self, job: _ReadJob) -> Iterator[bytes]:
        per = max(1, self.max_from_target // self.storage.sector_size)
        start, left = job.start, job.count
        while left:
            count = min(per, left)
            yield self.engine.read_data(self.storage.read(job.lun, start, count))
            start, left = start + count, left - count
        self._answer([], self.engine.ack(rawmode="false"))

    def _do_erase(self, cmd: Command) -> None:
        if cmd.get("num_partition_sectors") is None and cmd.get("start_sector") is None:
            self._sector_size(cmd)
            lun = self._lun(cmd)
            start, count = 0, self.storage.num_sectors(lun)
        else:
            lun, start, count = self._range(cmd)
        self.storage.erase(lun, start, count)
        self._answer([f"Erased {count} sectors of LUN {lun} from {start}"], self.engine.ack())

    def _do_patch(self, cmd: Command) -> None:
        self._sector_size(cmd)
        if (cmd.get("filename") or "DISK") != "DISK":
            raise _Nak(f"patch of file {cmd.get('filename')!r}: only DISK is patched here")
        lun = self._lun(cmd)
        sector = self._start(cmd, lun)
        offset = self._int(cmd, "byte_offset")
        size = self._int(cmd, "size_in_bytes")
        if size not in (1, 2, 4, 8):
            raise _Nak(f"patch size_in_bytes {size} is not 1, 2, 4 or 8")
        text = cmd.get("value")
        if text is None:
            raise _Nak("Attribute 'value' is missing")
        total = self.storage.num_sectors(lun)
        try:
            value = patch_value(text, total, lambda s, n: self._crc(lun, s, n))
        except ZflashError as err:
            raise _Nak(err.detail) from None
        if value >= 1 << (8 * size):
            raise _Nak(f"patch value {value} does not fit {size} bytes")
        ss = self.storage.sector_size
        first = sector + offset // ss
        span = (offset % ss + size + ss - 1) // ss
        if first + span > total:
            raise _Nak(f"patch at sector {first} is outside LUN {lun}")
        block = bytearray(self.storage.read(lun, first, span))
        block[offset % ss:offset % ss + size] = value.to_bytes(size, "little")
        self.on_step(WriteStep("patch", lun, first, span, block))
        self.storage.write(lun, first, block)
        self._answer([f"Patched sector {sector} offset {offset} with 0x{value:x}"],
                     self.engine.ack())

    def _crc(self, lun: int, start: int, length: int) -> int:
        ss = self.storage.sector_size
        count = (length + ss - 1) // ss
        if not 0 < length <= MAX_CRC_BYTES or start + count > self.storage.num_sectors(lun):
            raise _Nak(f"CRC32({start},{length}) is outside LUN {lun} or too long")
        return zlib.crc32(self.storage.read(lun, start, count)[:length])

    def _do_getsha256digest(self, cmd: Command) -> None:
        lun, start, count = self._range(cmd)
        digest = hashlib.sha256()
        per = max(1, (4 << 20) // self.storage.sector_size)
        for first in range(start, start + count, per):
            digest.update(self.storage.read(lun, first, min(per, start + count - first)))
        self._answer([f"Digest {digest.hexdigest()}"], self.engine.ack())

    def _do_getstorageinfo(self, cmd: Command) -> None:
        lun = self._lun(cmd)
        ss = self.storage.sector_size
        info = {"storage_info": {
            "total_blocks": self.storage.num_sectors(lun), "block_size": ss,
            "page_size": ss, "num_physical": self.storage.lun_count, "mfr_id": 0,
            "serial_num": self.serial, "fw_version": "1", "mem_type": self.memory_name.upper(),
            "prod_name": "zflash-emulated"}}
        self._answer([f"SECTOR_SIZE_IN_BYTES={ss}",
                      f"num_physical_partitions={self.storage.lun_count}",
                      json.dumps(info, separators=(",", ":"))], self.engine.ack())

    def _do_nop(self, cmd: Command) -> None:
        self._answer(["nop received"], self.engine.ack())

    def _do_power(self, cmd: Command) -> None:
        value = (cmd.get("value") or "reset").lower()
        if value not in ("reset", "off", "edl"):
            raise _Nak(f"power value {value!r} is not reset, off or edl")
        self.on_step(WriteStep("power", value=value))
        self.power_request = value
        self._answer([f"Power {value} requested"], self.engine.ack())

    def _do_setbootablestoragedrive(self, cmd: Command) -> None:
        value = self._int(cmd, "value")
        if value >= self.storage.lun_count:
            raise _Nak(f"Bootable drive {value} does not exist")
        self.bootable_lun = value
        self._answer([f"Set bootable drive to {value}"], self.engine.ack())
